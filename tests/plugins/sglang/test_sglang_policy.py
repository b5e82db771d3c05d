"""The ``sglang`` policy around the engine call, against a fake ``sglang`` module (a test fake injected into
``sys.modules``): request building, stop handling, result mapping, long prompts, async mode, closing.

No test here runs SGLang itself (it needs a GPU); see docs/plugins/engines.md for what ran where.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pydantic
import pytest
import rstar_sglang
from fakes.sglang_policy import CODE, EOS, STEP, FakeSGLang
from fakes.tokenizers import BOS, decode
from rstar_sglang.policy import SGLangOptions, SGLangPolicy

from rstar.errors import MissingExtraError, RstarError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.types import GenerationRequest, Sample


@pytest.fixture
def fake_sglang(monkeypatch: pytest.MonkeyPatch) -> FakeSGLang:
    fake = FakeSGLang()
    monkeypatch.setitem(sys.modules, "sglang", fake.module())
    return fake


def make(**options: Any) -> SGLangPolicy:
    return SGLangPolicy(SGLangOptions(model=options.pop("model", "some/model"), **options))


def run(policy: SGLangPolicy, *requests: GenerationRequest) -> list[Any]:
    return asyncio.run(policy.generate(list(requests)))


# --- registration and options ----------------------------------------------------------------------


def test_registered_as_sglang_and_options_reject_unknown_keys():
    registry = Registry.from_plugin_manager(make_plugin_manager([("sglang", rstar_sglang)], entry_points=False))
    assert "sglang" in registry.names("policy")
    with pytest.raises(RstarError, match="tensor_parallel_size"):
        registry.build("policy", {"name": "sglang", "model": "m", "tensor_parallel_size": 2})
    with pytest.raises(pydantic.ValidationError):
        SGLangOptions(model="m", mem_fraction_static=1.0)


def test_missing_sglang_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "sglang", None)
    with pytest.raises(MissingExtraError, match=r"'sglang' extra.*\[sglang\]"):
        make()


def test_engine_arguments(fake_sglang: FakeSGLang):
    make(
        tokenizer="tok",
        context_length=2048,
        tp_size=2,
        mem_fraction_static=0.4,
        seed=9,
        engine_kwargs={"disable_cuda_graph": True, "tp_size": 4},
    )
    assert fake_sglang.engines[0].kwargs == {
        "model_path": "some/model",
        "tokenizer_path": "tok",
        "dtype": "auto",
        "random_seed": 9,
        "tp_size": 4,
        "trust_remote_code": False,
        "context_length": 2048,
        "mem_fraction_static": 0.4,
        "disable_cuda_graph": True,
    }
    make()
    assert "mem_fraction_static" not in fake_sglang.engines[1].kwargs  # SGLang's own choice by default


# --- requests and results ----------------------------------------------------------------------------


def test_each_sample_is_one_prompt_with_its_own_seed(fake_sglang: FakeSGLang):
    results = run(
        make(),
        GenerationRequest("a", n=3, max_tokens=20, temperature=0.7, top_p=0.9, stop=(STEP, CODE), seed=11),
        GenerationRequest("b", n=1, max_tokens=5),
    )
    [call] = fake_sglang.calls
    assert call["mode"] == "sync" and call["prompt"] == ["a", "a", "a", "b"] and call["input_ids"] is None
    assert call["params"][0] == {
        "max_new_tokens": 20,
        "temperature": 0.7,
        "top_p": 0.9,
        "no_stop_trim": True,
        "skip_special_tokens": False,
        "stop": [STEP, CODE],
        "sampling_seed": 11 * 1000003,
    }
    assert [p.get("sampling_seed") for p in call["params"]] == [11000033, 11000034, 11000035, None]
    assert "stop" not in call["params"][3] and "n" not in call["params"][0]
    assert [s.text for s in results[0].samples] == [f"seed={11000033 + i} {STEP}" for i in range(3)]
    assert results[0].samples[0] == Sample(f"seed=11000033 {STEP}", "stop", STEP, 3)
    assert results[0].prompt_tokens == 2
    assert results[1].samples == (Sample("seed=None", "eos", None, 3),)


def test_seeds_can_be_left_out(fake_sglang: FakeSGLang):
    run(make(send_seeds=False), GenerationRequest("a", n=2, seed=1))
    assert all("sampling_seed" not in p for p in fake_sglang.calls[0]["params"])


def out(text: str, finish: Any, tokens: int = 4) -> dict[str, Any]:
    return {"text": text, "meta_info": {"finish_reason": finish, "prompt_tokens": 5, "completion_tokens": tokens}}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (out(f"x {CODE}", {"type": "stop", "matched": CODE}), Sample(f"x {CODE}", "stop", CODE, 4)),
        (out("x ", {"type": "stop", "matched": CODE}), Sample(f"x {CODE}", "stop", CODE, 4)),  # dropped: put back
        (out(f"x {CODE}\n\n", {"type": "stop", "matched": CODE}), Sample(f"x {CODE}", "stop", CODE, 4)),
        (out("done", {"type": "stop", "matched": EOS}), Sample("done", "eos", None, 4)),  # EOS / stop token id
        (out("cut", {"type": "length", "length": 4}), Sample("cut", "length", None, 4)),
        (out("", {"type": "abort", "message": "too long"}, 0), Sample("", "length", None, 0)),
    ],
)
def test_stop_handling(fake_sglang: FakeSGLang, output: dict[str, Any], expected: Sample):
    fake_sglang.respond = lambda prompt, params: output
    [result] = run(make(), GenerationRequest("q", stop=(STEP, CODE)))
    assert result.samples == (expected,)
    assert result.prompt_tokens == 5


# --- long prompts ---------------------------------------------------------------------------------------


def test_long_prompt_is_cut_from_the_left_and_sent_as_token_ids(fake_sglang: FakeSGLang, caplog):
    fake_sglang.context_len = 64
    long = "".join(chr(ord("a") + i % 26) for i in range(100))
    with caplog.at_level(logging.WARNING):
        results = run(make(), GenerationRequest("short", max_tokens=8), GenerationRequest(long, n=2, max_tokens=8))
    texts, ids = fake_sglang.calls
    assert texts["prompt"] == ["short"]
    assert ids["prompt"] is None and len(ids["input_ids"]) == 2
    kept = ids["input_ids"][0]
    assert len(kept) == 56 and kept[0] == BOS and decode(kept) == long[-55:]
    assert ids["params"][0]["max_new_tokens"] == 8
    assert [len(r.samples) for r in results] == [1, 2]
    assert "cut 1 of 2 prompts" in caplog.text


def test_long_prompt_skipped_without_failing_the_others(fake_sglang: FakeSGLang, caplog):
    fake_sglang.context_len = 64
    with caplog.at_level(logging.WARNING):
        results = run(
            make(long_prompts="skip"),
            GenerationRequest("x" * 200, n=2, max_tokens=8),
            GenerationRequest("fits", max_tokens=8, stop=(STEP,)),
        )
    [call] = fake_sglang.calls
    assert call["prompt"] == ["fits"]
    assert results[0].samples == (Sample("", "length"), Sample("", "length"))
    assert results[1].samples[0].stop == STEP
    assert "skipped 1 of 2 prompts" in caplog.text


# --- async mode ------------------------------------------------------------------------------------------


def test_async_mode_awaits_each_request_and_batches_itself(fake_sglang: FakeSGLang):
    policy = make(async_engine=True, context_length=64)
    assert policy.batches_itself is True and make().batches_itself is False
    long = "w" * 100
    results = run(
        policy,
        GenerationRequest("a", n=2, stop=(STEP,), seed=4, max_tokens=8),
        GenerationRequest(long, max_tokens=8),
    )
    assert [c["mode"] for c in fake_sglang.calls] == ["async", "async"]
    assert fake_sglang.calls[0]["prompt"] == ["a", "a"]
    assert fake_sglang.calls[1]["input_ids"][0][-1] == ord("w")
    assert [s.text for s in results[0].samples] == [f"seed=4000012 {STEP}", f"seed=4000013 {STEP}"]
    assert len(results[1].samples) == 1
    with pytest.raises(RstarError, match="async_engine"):
        policy.generate_sync([GenerationRequest("a")])


# --- closing ---------------------------------------------------------------------------------------------


def test_close_shuts_the_engine_down(fake_sglang: FakeSGLang):
    policy = make()
    policy.close()
    assert fake_sglang.engines[0].shut
    policy.close()
    with pytest.raises(RstarError, match="closed"):
        run(policy, GenerationRequest("q"))


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
def test_gpu_real_sglang_keeps_stop_strings_and_handles_long_prompts():
    """Real SGLang on a small model (``$RSTAR_GPU_TEST_MODEL``, default SmolLM2-135M-Instruct from the Hub)."""
    import os

    if "sglang" in sys.modules and not hasattr(sys.modules["sglang"], "__file__"):
        pytest.skip("a fake sglang module is installed")
    pytest.importorskip("sglang")
    model = os.environ.get(GPU_MODEL_ENV, "HuggingFaceTB/SmolLM2-135M-Instruct")
    policy = make(model=model, context_length=512, mem_fraction_static=0.3, long_prompts="skip")
    try:
        requests = [
            GenerationRequest("Count: 1, 2, 3,", n=4, max_tokens=32, temperature=1.0, stop=(",", "\n"), seed=i)
            for i in range(8)
        ]
        results = run(policy, *requests)
        assert [len(r.samples) for r in results] == [4] * 8
        for result in results:
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
