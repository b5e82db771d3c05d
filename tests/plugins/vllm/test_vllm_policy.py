"""The ``vllm`` policy around the engine call, against a fake ``vllm`` module (a test fake injected into
``sys.modules``): request building, stop handling, result mapping, long prompts, async mode, closing.

No test here runs vLLM itself (it needs a GPU); see docs/plugins/engines.md for what ran where.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import types
from typing import Any

import pydantic
import pytest
import rstar_vllm
from fakes.tokenizers import BOS, decode
from fakes.vllm_policy import CODE, STEP, FakeCompletion, FakeVLLM
from rstar_vllm.policy import EngineDiedError, VLLMOptions, VLLMPolicy

from rstar.backends import keep_stop, plan_prompts
from rstar.errors import ConfigError, MissingExtraError, RstarError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.types import GenerationRequest, Sample


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    return fake


def make(**options: Any) -> VLLMPolicy:
    return VLLMPolicy(VLLMOptions(model=options.pop("model", "some/model"), **options))


def run(policy: VLLMPolicy, *requests: GenerationRequest) -> list[Any]:
    return asyncio.run(policy.generate(list(requests)))


# --- registration and options ----------------------------------------------------------------------


def test_registered_as_vllm_and_options_reject_unknown_keys():
    registry = Registry.from_plugin_manager(make_plugin_manager([("vllm", rstar_vllm)], entry_points=False))
    assert "vllm" in registry.names("policy")
    with pytest.raises(RstarError, match="best_of"):
        registry.build("policy", {"name": "vllm", "model": "m", "best_of": 4})
    with pytest.raises(pydantic.ValidationError):
        VLLMOptions(model="m", gpu_memory_utilization=1.5)


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingExtraError, match=r"'vllm' extra.*\[vllm\]"):
        make()


def test_engine_arguments_prefix_caching_on_and_engine_kwargs_override(fake_vllm: FakeVLLM):
    make(
        tokenizer="tok",
        max_model_len=2048,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        engine_kwargs={"enforce_eager": True, "seed": 7},
    )
    kwargs = fake_vllm.engines[0].kwargs
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["model"] == "some/model" and kwargs["tokenizer"] == "tok"
    assert kwargs["max_model_len"] == 2048 and kwargs["tensor_parallel_size"] == 2
    assert kwargs["gpu_memory_utilization"] == 0.5
    assert kwargs["enforce_eager"] is True and kwargs["seed"] == 7


def cpu_platform(monkeypatch: pytest.MonkeyPatch, is_cpu: bool) -> None:
    """Make the fake vllm report its platform (``vllm.platforms.current_platform.is_cpu()``)."""
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: is_cpu)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)


def test_on_a_small_cpu_the_engine_runs_on_every_core(fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch):
    """vLLM's CPU default keeps a core for its scheduler: on <= 4 cores the engines bind them all; on larger ones,
    on a GPU, or when the user set the variable or the option, rstar leaves or passes their choice."""
    from rstar_vllm.policy import bind_cpu_threads

    variable = "VLLM_CPU_OMP_THREADS_BIND"
    monkeypatch.delenv(variable, raising=False)
    cpu_platform(monkeypatch, True)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    make()
    assert fake_vllm.engines and os.environ[variable] == "0,1"
    monkeypatch.setenv(variable, "auto")  # the user's wins
    bind_cpu_threads(None)
    bind_cpu_threads("0")
    assert os.environ[variable] == "auto"
    monkeypatch.delenv(variable)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    bind_cpu_threads(None)
    assert variable not in os.environ
    bind_cpu_threads("0-7")
    assert os.environ[variable] == "0-7"
    monkeypatch.delenv(variable)
    cpu_platform(monkeypatch, False)
    bind_cpu_threads("0-7")
    assert variable not in os.environ


def test_on_cpu_chunked_prefill_is_off_and_the_kv_cache_fixed(fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch):
    """vLLM's CPU worker dies on a seeded request whose prompt is prefilled in chunks ("CPU Generator does not use
    offset"), and reads gpu_memory_utilization as a share of RAM: on CPU the policy turns chunked prefill off and
    fixes the KV cache, unless engine_kwargs say otherwise. On a GPU it sets neither."""
    from rstar_vllm.policy import CPU_POLICY_DEFAULTS

    cpu_platform(monkeypatch, True)
    make()
    make(engine_kwargs={"enable_chunked_prefill": True, "kv_cache_memory_bytes": 2**32})
    cpu_platform(monkeypatch, False)
    make()
    default, custom, gpu = (e.kwargs for e in fake_vllm.engines)
    assert default["enable_chunked_prefill"] is False and default["kv_cache_memory_bytes"] == 2 * 2**30
    assert CPU_POLICY_DEFAULTS.items() <= default.items()
    assert custom["enable_chunked_prefill"] is True and custom["kv_cache_memory_bytes"] == 2**32
    assert "enable_chunked_prefill" not in gpu and "kv_cache_memory_bytes" not in gpu


def test_stats_report_the_share_of_prompt_tokens_found_in_the_prefix_cache(fake_vllm: FakeVLLM):
    """stats() sums the prompt tokens of the outputs and the ones vLLM found cached (``num_cached_tokens``), per
    policy: vLLM's process-wide metrics cannot tell a policy's engine from a reward model's. Outputs without the
    counts, no stats."""
    policy = make()
    run(policy, GenerationRequest("q"))
    assert policy.stats() == {}
    engine = fake_vllm.engines[0]
    answer = engine.generate

    def counted(prompts: list[Any], params: list[Any], use_tqdm: bool = True) -> list[Any]:
        outputs = answer(prompts, params, use_tqdm)
        for out in outputs:
            out.num_cached_tokens = len(out.prompt_token_ids) - 2
        return outputs

    engine.generate = counted
    run(policy, GenerationRequest("abcdefg"), GenerationRequest("abc"))  # 8 and 4 prompt tokens (BOS included)
    assert policy.stats() == {"prefix_cache_hit_rate": round((6 + 2) / (8 + 4), 4)}


# --- requests and results ----------------------------------------------------------------------------


def test_sampling_params_are_built_from_each_request(fake_vllm: FakeVLLM):
    policy = make()
    run(
        policy,
        GenerationRequest("a", n=3, max_tokens=20, temperature=0.7, top_p=0.9, stop=(STEP, CODE), seed=11),
        GenerationRequest("b", n=1, max_tokens=5),
    )
    assert len(fake_vllm.calls) == 1  # one batch, one engine call
    prompts, params = fake_vllm.calls[0]
    assert prompts == ["a", "b"]
    assert params[0].kwargs == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 20,
        "seed": 11,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "stop": [STEP, CODE],
    }
    assert "stop" not in params[1].kwargs and params[1].kwargs["seed"] is None
    assert "best_of" not in params[0].kwargs


def test_n_samples_come_back_in_index_order_with_token_counts(fake_vllm: FakeVLLM):
    [result] = run(make(), GenerationRequest("q", n=3, stop=(STEP,)))
    assert [s.text for s in result.samples] == [f"s0 {STEP}", f"s1 {STEP}", f"s2 {STEP}"]
    assert [s.num_tokens for s in result.samples] == [2, 3, 4]
    assert all(s.finish_reason == "stop" and s.stop == STEP for s in result.samples)
    assert result.prompt_tokens == 2  # BOS + "q"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (FakeCompletion(0, f"x = 1 {CODE}", [1, 2], "stop", CODE), Sample(f"x = 1 {CODE}", "stop", CODE, 2)),
        # an engine that dropped the stop string: it is put back, once
        (FakeCompletion(0, "x = 1 ", [1, 2], "stop", CODE), Sample(f"x = 1 {CODE}", "stop", CODE, 2)),
        # text running past the stop string (within its last token): cut after it
        (FakeCompletion(0, f"x {CODE}\n", [1, 2], "stop", CODE), Sample(f"x {CODE}", "stop", CODE, 2)),
        (FakeCompletion(0, "done", [1, 2, 3], "stop", 42), Sample("done", "eos", None, 3)),  # a stop token id
        (FakeCompletion(0, "done", [1, 2, 3], "stop", None), Sample("done", "eos", None, 3)),  # EOS
        (FakeCompletion(0, "cut of", [1] * 5, "length", None), Sample("cut of", "length", None, 5)),
    ],
)
def test_stop_handling(fake_vllm: FakeVLLM, completion: FakeCompletion, expected: Sample):
    fake_vllm.respond = lambda prompt, params: [completion]
    [result] = run(make(), GenerationRequest("q", stop=(STEP, CODE)))
    assert result.samples == (expected,)


def test_wrong_sample_count_is_an_error(fake_vllm: FakeVLLM):
    fake_vllm.respond = lambda prompt, params: [FakeCompletion(0, "x", [1], "length")]
    with pytest.raises(RstarError, match="1 samples for n=2"):
        run(make(), GenerationRequest("q", n=2))


def test_empty_batch_makes_no_call(fake_vllm: FakeVLLM):
    assert run(make()) == []
    assert fake_vllm.calls == []


# --- long prompts ---------------------------------------------------------------------------------------


def test_long_prompt_is_cut_from_the_left_keeping_its_end_and_bos(fake_vllm: FakeVLLM, caplog):
    fake_vllm.max_model_len = 64
    policy = make()
    long = "".join(chr(ord("a") + i % 26) for i in range(100))
    with caplog.at_level(logging.WARNING):
        results = run(policy, GenerationRequest(long, max_tokens=8), GenerationRequest("short", max_tokens=8))
    prompts, params = fake_vllm.calls[0]
    ids = prompts[0]["prompt_token_ids"]
    assert len(ids) == 64 - 8 and ids[0] == BOS
    assert decode(ids) == long[-55:]
    assert params[0].kwargs["max_tokens"] == 8
    assert prompts[1] == "short"
    assert results[0].prompt_tokens == 56
    assert "cut 1 of 2 prompts" in caplog.text


def test_long_prompt_skipped_without_failing_the_others(fake_vllm: FakeVLLM, caplog):
    fake_vllm.max_model_len = 64
    policy = make(long_prompts="skip")
    with caplog.at_level(logging.WARNING):
        results = run(
            policy,
            GenerationRequest("x" * 200, n=2, max_tokens=8),
            GenerationRequest("fits", n=1, max_tokens=8, stop=(STEP,)),
        )
    prompts, _ = fake_vllm.calls[0]
    assert prompts == ["fits"]  # the long prompt never reached the engine
    assert results[0].samples == (Sample("", "length"), Sample("", "length"))
    assert results[0].prompt_tokens == 201
    assert results[1].samples[0].text == f"s0 {STEP}"
    assert "skipped 1 of 2 prompts" in caplog.text


def test_all_prompts_skipped_makes_no_engine_call(fake_vllm: FakeVLLM):
    fake_vllm.max_model_len = 32
    [result] = run(make(long_prompts="skip"), GenerationRequest("y" * 100, max_tokens=4))
    assert fake_vllm.calls == []
    assert result.samples == (Sample("", "length"),)


def test_max_tokens_capped_to_the_room_left(fake_vllm: FakeVLLM):
    fake_vllm.max_model_len = 64
    run(make(), GenerationRequest("z" * 20, max_tokens=60))  # 21 prompt tokens; room for half the context
    prompts, params = fake_vllm.calls[0]
    assert prompts == ["z" * 20] and params[0].kwargs["max_tokens"] == 64 - 21


def test_plan_prompts_without_a_known_length_passes_everything():
    [plan] = plan_prompts([GenerationRequest("p" * 10_000)], None, None, "skip")
    assert plan.prompt == "p" * 10_000


def test_keep_stop_ends_with_the_stop_string_exactly_once():
    assert keep_stop("a<s>", "<s>") == "a<s>"
    assert keep_stop("a", "<s>") == "a<s>"
    assert keep_stop("a<s>b", "<s>") == "a<s>"


# --- async engine ----------------------------------------------------------------------------------------


def test_async_engine_streams_each_request_and_batches_itself(fake_vllm: FakeVLLM):
    policy = make(async_engine=True, max_model_len=1024, seed=3)
    assert policy.batches_itself is True
    assert make().batches_itself is False
    engine = fake_vllm.engines[0]
    assert engine.kwargs["enable_prefix_caching"] is True and engine.kwargs["max_model_len"] == 1024
    results = run(
        policy,
        GenerationRequest("a", n=2, stop=(STEP,), seed=5),
        GenerationRequest("b", n=1, stop=(STEP,)),
    )
    assert [[s.text for s in r.samples] for r in results] == [[f"s0 {STEP}", f"s1 {STEP}"], [f"s0 {STEP}"]]
    assert len(fake_vllm.calls) == 2  # one stream per request
    assert fake_vllm.calls[0][1][0].kwargs["seed"] == 5
    assert len(set(engine.request_ids)) == 2
    with pytest.raises(RstarError, match="async_engine"):
        policy.generate_sync([GenerationRequest("a")])


# --- closing ---------------------------------------------------------------------------------------------


def test_close_shuts_the_engine_down(fake_vllm: FakeVLLM):
    offline, streaming = make(), make(async_engine=True)
    offline.close()
    streaming.close()
    assert fake_vllm.engines[0].shut and fake_vllm.engines[1].shut
    offline.close()  # twice is harmless
    with pytest.raises(RstarError, match="closed"):
        run(offline, GenerationRequest("q"))


# --- when the engine fails ------------------------------------------------------------------------------


def test_a_model_path_that_does_not_exist_is_an_error_before_any_engine_starts(fake_vllm: FakeVLLM, tmp_path):
    missing = str(tmp_path / "no" / "model")
    with pytest.raises(ConfigError, match=rf"^policy\.model: model path '{missing}' does not exist$"):
        make(model=missing)
    assert fake_vllm.engines == []


def test_a_hub_id_the_engine_cannot_fetch_is_one_message(fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch):
    """A model that is no folder here goes to vLLM as a Hub id; transformers' OSError (no network, no such
    repository) becomes one message naming the option."""
    module = sys.modules["vllm"]

    class Offline(module.LLM):  # type: ignore[name-defined]
        def __init__(self, **kwargs: Any) -> None:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your network.")

    monkeypatch.setattr(module, "LLM", Offline)
    hub = r"^policy\.model: 'org/model' is no folder here, and fetching it from the Hugging Face Hub failed: We "
    with pytest.raises(RstarError, match=hub):
        make(model="org/model")


class FakeEngineDeadError(Exception):
    """Test fake of vLLM's ``EngineDeadError`` (``vllm.v1.engine.exceptions``)."""


@pytest.fixture
def dead_error(monkeypatch: pytest.MonkeyPatch) -> type[Exception]:
    exceptions = types.ModuleType("vllm.v1.engine.exceptions")
    exceptions.EngineDeadError = FakeEngineDeadError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.exceptions", exceptions)
    return FakeEngineDeadError


class FakeEngineClient:
    """Test fake of vLLM 0.32's offline engine-core client, as far as `EngineGuard` reads it: ``resources`` (the
    dead mark, the engine processes) and the output queue a waiting call blocks on. ``die()`` is what vLLM's monitor
    thread does when the engine process is killed: it marks the engine dead and leaves the queue empty."""

    def __init__(self) -> None:
        self.process = types.SimpleNamespace(name="EngineCore", exitcode=None)
        self.resources = types.SimpleNamespace(
            engine_dead=False, engine_manager=types.SimpleNamespace(processes=[self.process])
        )
        self.outputs_queue: queue.Queue[Any] = queue.Queue()

    def get_output(self) -> Any:
        output = self.outputs_queue.get(timeout=10)  # vLLM waits without a timeout
        if isinstance(output, Exception):
            raise output
        return output

    def die(self, exitcode: int = -9) -> None:
        self.process.exitcode = exitcode
        self.resources.engine_dead = True

    def shutdown(self) -> None:
        pass


def with_engine_client(module: types.ModuleType, monkeypatch: pytest.MonkeyPatch, call: str) -> list[FakeEngineClient]:
    """Give each fake ``LLM`` a `FakeEngineClient`; its ``call`` (generate or classify) waits on the client's output
    queue, as vLLM's do. Returns the clients, in the order the engines are built."""
    clients: list[FakeEngineClient] = []

    class Waiting(module.LLM):  # type: ignore[name-defined]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.llm_engine.engine_core = client = FakeEngineClient()
            clients.append(client)

        def wait(self, *args: Any, **kwargs: Any) -> Any:
            return self.llm_engine.engine_core.get_output()

    setattr(Waiting, call, Waiting.wait)
    monkeypatch.setattr(module, "LLM", Waiting)
    return clients


def watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rstar-vllm-") and t.name.endswith("-watch")]


@pytest.fixture
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rstar_vllm.policy.WATCH_INTERVAL_S", 0.01)


def test_an_engine_process_killed_mid_call_ends_the_call_with_one_message(
    fake_vllm: FakeVLLM, dead_error: type[Exception], monkeypatch: pytest.MonkeyPatch, fast_watch: None
):
    """vLLM 0.32 marks its engine dead when the process is killed but leaves a running generate waiting forever;
    the policy's watcher wakes it with vLLM's EngineDeadError, which becomes an RstarError: what died, how, and
    that re-running the command resumes."""
    clients = with_engine_client(sys.modules["vllm"], monkeypatch, "generate")
    policy = make(model="org/model")
    [client] = clients
    threading.Timer(0.1, client.die).start()
    with pytest.raises(EngineDiedError) as raised:
        run(policy, GenerationRequest("q"))
    message = str(raised.value)
    assert isinstance(raised.value, RstarError)
    assert message.startswith("the vLLM engine of the policy (model 'org/model') died: its process EngineCore was ")
    assert "killed by SIGKILL" in message and "re-run the same command to resume" in message
    assert isinstance(raised.value.__cause__, dead_error)
    policy.close()


def test_the_engine_dead_error_of_vllm_becomes_one_message(fake_vllm: FakeVLLM, dead_error: type[Exception]):
    """An engine that reports its own death (its worker crashed, it ran out of memory) raises EngineDeadError from
    the call; the exit code of the engine process is named when it is known."""

    def dies(prompt: Any, params: Any) -> list[FakeCompletion]:
        raise dead_error("EngineCore encountered an issue. See stack trace (above) for the root cause.")

    fake_vllm.respond = dies
    with pytest.raises(EngineDiedError, match=r"^the vLLM engine of the policy \(model 'some/model'\) died\. "):
        run(make(), GenerationRequest("q"))


def test_other_engine_errors_pass_through_unchanged(fake_vllm: FakeVLLM, dead_error: type[Exception]):
    def fails(prompt: Any, params: Any) -> list[FakeCompletion]:
        raise ValueError("a bug in a sampling parameter")

    fake_vllm.respond = fails
    with pytest.raises(ValueError, match="sampling parameter"):
        run(make(), GenerationRequest("q"))


def test_the_async_engine_dying_is_one_message(fake_vllm: FakeVLLM, dead_error: type[Exception]):
    def dies(prompt: Any, params: Any) -> list[FakeCompletion]:
        raise dead_error()

    fake_vllm.respond = dies
    with pytest.raises(EngineDiedError, match="the vLLM engine of the policy"):
        run(make(async_engine=True), GenerationRequest("q"))


def test_closing_stops_the_watcher_and_a_closed_engine_is_not_reported_dead(
    fake_vllm: FakeVLLM, dead_error: type[Exception], monkeypatch: pytest.MonkeyPatch, fast_watch: None
):
    """Shutting an engine down marks it dead in vLLM too; after close() that mark means nothing."""
    clients = with_engine_client(sys.modules["vllm"], monkeypatch, "generate")
    policy = make()
    [client] = clients
    assert len(watchers()) == 1
    policy.close()
    client.die(0)
    for thread in watchers():
        thread.join(timeout=1)
    assert watchers() == [] and client.outputs_queue.empty()


def test_the_reward_model_reports_its_engine_dying_the_same_way(
    dead_error: type[Exception], monkeypatch: pytest.MonkeyPatch, fast_watch: None, tmp_path
):
    from fakes.vllm_reward import FakeVLLM as FakeRewardVLLM
    from rstar_vllm.reward import VLLMRewardModel, VLLMRewardOptions

    from rstar.types import RewardRequest

    monkeypatch.setitem(sys.modules, "vllm", FakeRewardVLLM().module())
    with pytest.raises(ConfigError, match=r"^reward_model\.model: model path '/no/such/ppm' does not exist$"):
        VLLMRewardModel(VLLMRewardOptions(model="/no/such/ppm", transform="identity"))
    clients = with_engine_client(sys.modules["vllm"], monkeypatch, "classify")
    model = VLLMRewardModel(VLLMRewardOptions(model="org/ppm", transform="identity"))
    [client] = clients
    threading.Timer(0.1, client.die, kwargs={"exitcode": 1}).start()
    with pytest.raises(EngineDiedError, match=r"^the vLLM engine of the reward model \(model 'org/ppm'\) died: its "):
        model.score_sync([RewardRequest("q", "s")])
    model.close()


def test_the_reward_model_reports_its_prefix_cache_hit_rate(monkeypatch: pytest.MonkeyPatch):
    from fakes.vllm_reward import FakeVLLM as FakeRewardVLLM
    from rstar_vllm.reward import VLLMRewardModel, VLLMRewardOptions

    from rstar.types import RewardRequest

    fake = FakeRewardVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    model = VLLMRewardModel(VLLMRewardOptions(model="org/ppm", transform="identity"))
    engine = fake.engines[0]
    answer = engine.classify

    def counted(prompts: list[Any], **kwargs: Any) -> list[Any]:
        outputs = answer(prompts, **kwargs)
        for out in outputs:
            out.num_cached_tokens = 3
        return outputs

    engine.classify = counted
    model.score_sync([RewardRequest("ab", "c"), RewardRequest("ab", "cde")])  # 4 and 6 tokens (BOS included)
    assert model.stats() == {"prefix_cache_hit_rate": 0.6}


# --- the real engine (GPU) -------------------------------------------------------------------------------

GPU_MODEL_ENV = "RSTAR_GPU_TEST_MODEL"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_gpu_real_vllm_keeps_stop_strings_and_handles_long_prompts():
    """Real vLLM on a small model (``$RSTAR_GPU_TEST_MODEL``, default SmolLM2-135M-Instruct from the Hub)."""
    import os

    if "vllm" in sys.modules and not hasattr(sys.modules["vllm"], "__file__"):
        pytest.skip("a fake vllm module is installed")
    pytest.importorskip("vllm")
    model = os.environ.get(GPU_MODEL_ENV, "HuggingFaceTB/SmolLM2-135M-Instruct")
    policy = make(model=model, max_model_len=512, gpu_memory_utilization=0.3, long_prompts="skip")
    try:
        requests = [
            GenerationRequest("Count: 1, 2, 3,", n=4, max_tokens=32, temperature=1.0, stop=(",", "\n"), seed=i)
            for i in range(8)
        ]
        first, second = run(policy, *requests), run(policy, *requests)
        assert [len(r.samples) for r in first] == [4] * 8
        assert [[s.text for s in r.samples] for r in first] == [[s.text for s in r.samples] for r in second]
        for result in first:
            assert result.prompt_tokens > 0
            for s in result.samples:
                assert s.finish_reason != "stop" or (s.stop in (",", "\n") and s.text.endswith(s.stop))
                assert 0 < s.num_tokens <= 32
        long, short = run(
            policy, GenerationRequest("word " * 2000, max_tokens=16), GenerationRequest("Hi", max_tokens=4)
        )
        assert long.samples == (Sample("", "length"),) and short.samples[0].num_tokens > 0
    finally:
        policy.close()
