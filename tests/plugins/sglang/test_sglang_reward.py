"""The ``sglang`` reward model around the engine call, against a fake ``sglang`` module (a test fake injected
into ``sys.modules``): engine arguments, left truncation by tokens, result mapping, transforms, missing extra,
closing.

No test here runs SGLang itself (it needs a GPU); see docs/plugins/engines.md for what ran where.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import rstar_sglang
from fakes.sglang_reward import FakeSGLang, FakeSpaceTokenizer
from fakes.tokenizers import FakeCharTokenizer
from rstar_sglang.reward import SGLangRewardModel, SGLangRewardOptions, embedding_score

from rstar.errors import MissingExtraError, RstarError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.reward import CONFIG_KEY, ScoreTransform
from rstar.types import RewardRequest


@pytest.fixture
def fake_sglang(monkeypatch: pytest.MonkeyPatch) -> FakeSGLang:
    fake = FakeSGLang()
    monkeypatch.setitem(sys.modules, "sglang", fake.module())
    return fake


def make(**options: Any) -> SGLangRewardModel:
    options.setdefault("transform", "identity")  # 'auto' would look the (made-up) model up on the Hub
    return SGLangRewardModel(SGLangRewardOptions(model=options.pop("model", "some/model"), **options))


def score(model: SGLangRewardModel, *pairs: tuple[str, str]) -> list[float]:
    return asyncio.run(model.score([RewardRequest(p, s) for p, s in pairs]))


# --- registration, options, engine ---------------------------------------------------------------------


def test_registered_as_sglang_and_options_reject_unknown_keys():
    registry = Registry.from_plugin_manager(make_plugin_manager([("sglang", rstar_sglang)], entry_points=False))
    assert "sglang" in registry.names("reward_model")
    with pytest.raises(RstarError, match="max_length"):
        registry.build("reward_model", {"name": "sglang", "model": "m", "max_length": 4})
    with pytest.raises(pydantic.ValidationError):
        SGLangRewardOptions(model="m", mem_fraction_static=1.0)
    assert SGLangRewardOptions(model="m").mem_fraction_static == 0.3


def test_missing_sglang_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "sglang", None)
    with pytest.raises(MissingExtraError, match=r"'sglang' extra.*\[sglang\]"):
        make()


def test_engine_arguments_serve_the_checkpoint_as_an_embedding_model(fake_sglang: FakeSGLang):
    make()
    make(
        tokenizer="tok",
        context_length=2048,
        tp_size=2,
        mem_fraction_static=0.2,
        dtype="bfloat16",
        engine_kwargs={"disable_radix_cache": True, "mem_fraction_static": 0.25},
    )
    default, custom = (e.kwargs for e in fake_sglang.engines)
    assert default == {
        "model_path": "some/model",
        "is_embedding": True,
        "dtype": "auto",
        "tp_size": 1,
        "mem_fraction_static": 0.3,
        "trust_remote_code": False,
    }
    assert custom["tokenizer_path"] == "tok" and custom["context_length"] == 2048 and custom["tp_size"] == 2
    assert custom["dtype"] == "bfloat16" and custom["disable_radix_cache"] is True
    assert custom["mem_fraction_static"] == 0.25  # engine_kwargs win


# --- requests and results ----------------------------------------------------------------------------------


def test_one_encode_call_per_batch_with_raw_scores(fake_sglang: FakeSGLang):
    scores = score(make(), ("Q: 1+1?\n", "x = 2<end_of_step>"), ("ab", "c"))
    assert fake_sglang.calls == [["Q: 1+1?\nx = 2<end_of_step>", "abc"]]
    assert scores == [27 - 10 + 0.5, 4 - 10]


def test_transforms_from_options_and_from_the_checkpoint(fake_sglang: FakeSGLang, tmp_path: Path):
    assert score(make(transform="tanh", scale=4.0), ("", "abcdef")) == [pytest.approx(math.tanh((7 - 10) / 4.0))]
    (tmp_path / "config.json").write_text(json.dumps({CONFIG_KEY: {"transform": "tanh", "scale": 2.0}}))
    auto = make(model=str(tmp_path), transform="auto")
    assert auto.transform == ScoreTransform("tanh", 2.0)
    assert score(auto, ("", "abc")) == [pytest.approx(math.tanh(-3.0))]


def test_long_text_is_cut_from_the_left_keeping_its_end(fake_sglang: FakeSGLang, caplog):
    fake_sglang.context_len = 32
    model = make()
    assert model.limit == 31  # SGLang wants fewer tokens than its context length
    long = "".join(chr(ord("a") + i % 26) for i in range(100)) + "<end_of_step>"
    with caplog.at_level(logging.WARNING):
        scores = score(model, ("", long), ("", "short"))
    [(cut, short)] = fake_sglang.calls
    assert cut == long[-30:] and cut.endswith("<end_of_step>")  # BOS + 30 characters = 31 tokens
    assert short == "short"
    assert scores == [31 - 10 + 0.5, 6 - 10]
    assert "cut 1 of 2 texts" in caplog.text


def test_a_cut_text_that_retokenizes_longer_is_cut_again(monkeypatch: pytest.MonkeyPatch):
    fake = FakeSGLang(context_len=21, tokenizer=FakeSpaceTokenizer())
    monkeypatch.setitem(sys.modules, "sglang", fake.module())
    model = make()
    text = "0123456789" * 5
    fitted = model.fit(text)
    # the first cut (BOS + 19 tokens) decodes to 20 characters with the space: 21 tokens, so one more goes
    assert fitted == " " + text[-18:]
    assert len(FakeSpaceTokenizer().encode(fitted)) == 20
    assert model.fit("fits") == "fits"


def test_outputs_with_other_shapes(fake_sglang: FakeSGLang):
    assert embedding_score({"embedding": 0.75}) == 0.75
    assert embedding_score({"embedding": [-2.0], "meta_info": {}}) == -2.0
    with pytest.raises(RstarError, match="one label"):
        embedding_score({"text": "no embedding"})
    fake_sglang.labels = 3
    with pytest.raises(RstarError, match="3 values per text"):
        score(make(), ("", "abc"))


def test_tokenizer_falls_back_to_transformers(monkeypatch: pytest.MonkeyPatch):
    fake = FakeSGLang(tokenizer=None)
    monkeypatch.setitem(sys.modules, "sglang", fake.module())
    loaded: list[tuple[str, bool]] = []

    def fake_load(source: str, trust_remote_code: bool) -> FakeCharTokenizer:
        loaded.append((source, trust_remote_code))
        return FakeCharTokenizer()

    monkeypatch.setattr("rstar_sglang.reward.load_hf_tokenizer", fake_load)
    model = make(tokenizer="my/tok")
    assert loaded == [("my/tok", False)] and isinstance(model.tokenizer, FakeCharTokenizer)


def test_empty_batch_makes_no_call_and_close_shuts_down(fake_sglang: FakeSGLang):
    model = make()
    assert score(model) == []
    assert fake_sglang.calls == []
    model.close()
    model.close()  # twice is harmless
    assert fake_sglang.engines[0].shut
    with pytest.raises(RstarError, match="closed"):
        score(model, ("p", "s"))


# --- the real engine (GPU) ---------------------------------------------------------------------------------------

GPU_REWARD_ENV = "RSTAR_GPU_TEST_REWARD_MODEL"


@pytest.mark.gpu
@pytest.mark.skipif(not os.environ.get(GPU_REWARD_ENV), reason=f"needs a reward checkpoint in ${GPU_REWARD_ENV}")
def test_gpu_real_sglang_matches_the_hf_reward_model():
    """Real SGLang on a one-label classification checkpoint (``$RSTAR_GPU_TEST_REWARD_MODEL``), against ``hf``."""
    if "sglang" in sys.modules and not hasattr(sys.modules["sglang"], "__file__"):
        pytest.skip("a fake sglang module is installed")
    pytest.importorskip("sglang")
    from rstar_hf.reward import HFRewardModel, HFRewardOptions

    path = os.environ[GPU_REWARD_ENV]
    items = [RewardRequest("Question: 2 + 3?\n", f"x = 2 + {k}\n<end_of_step>") for k in range(6)]
    hf = HFRewardModel(HFRewardOptions(model=path, dtype="float32", transform="identity"))
    expected = hf.score_sync(items)
    hf.close()
    model = make(model=path, dtype="float32", context_length=512)
    try:
        assert model.score_sync(items) == pytest.approx(expected, abs=1e-2, rel=1e-2)
    finally:
        model.close()
