"""The ``vllm`` reward model around the engine call, against a fake ``vllm`` module (a test fake injected
into ``sys.modules``): engine arguments, raw (activation-free) pooling requests, left truncation, result
mapping, transforms, missing extra, closing.

No test here runs vLLM itself (it needs a GPU); see docs/plugins/engines.md for what ran where.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import pydantic
import pytest
import rstar_vllm
from fakes.tokenizers import BOS, decode
from fakes.vllm_reward import FakeVLLM, OldPoolingParams
from rstar_vllm.reward import VLLMRewardModel, VLLMRewardOptions, raw_score, read_tokens

from rstar.backends import keep_end
from rstar.errors import MissingExtraError, RstarError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.reward import CONFIG_KEY, ScoreTransform, checkpoint_transform
from rstar.types import RewardRequest


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    return fake


def make(**options: Any) -> VLLMRewardModel:
    options.setdefault("transform", "identity")  # 'auto' would look the (made-up) model up on the Hub
    return VLLMRewardModel(VLLMRewardOptions(model=options.pop("model", "some/model"), **options))


def score(model: VLLMRewardModel, *pairs: tuple[str, str]) -> list[float]:
    return asyncio.run(model.score([RewardRequest(p, s) for p, s in pairs]))


# --- registration, options, engine ---------------------------------------------------------------------


def test_registered_as_vllm_and_options_reject_unknown_keys():
    registry = Registry.from_plugin_manager(make_plugin_manager([("vllm", rstar_vllm)], entry_points=False))
    assert "vllm" in registry.names("reward_model")
    with pytest.raises(RstarError, match="max_length"):
        registry.build("reward_model", {"name": "vllm", "model": "m", "max_length": 4})
    with pytest.raises(pydantic.ValidationError):
        VLLMRewardOptions(model="m", gpu_memory_utilization=1.5)
    assert VLLMRewardOptions(model="m").gpu_memory_utilization == 0.3


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingExtraError, match=r"'vllm' extra.*\[vllm\]"):
        make()


def test_engine_arguments_use_the_pooling_runner(fake_vllm: FakeVLLM):
    make()
    make(
        tokenizer="tok",
        max_model_len=2048,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.25,
        enable_prefix_caching=True,
        dtype="float32",
        engine_kwargs={"enforce_eager": True, "runner": "pooling", "convert": "classify"},
    )
    default, custom = (e.kwargs for e in fake_vllm.engines)
    assert default == {
        "model": "some/model",
        "runner": "pooling",
        "dtype": "auto",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.3,
        "trust_remote_code": False,
        "disable_log_stats": False,
    }
    assert custom["tokenizer"] == "tok" and custom["max_model_len"] == 2048
    assert custom["tensor_parallel_size"] == 2 and custom["gpu_memory_utilization"] == 0.25
    assert custom["enable_prefix_caching"] is True and custom["dtype"] == "float32"
    assert custom["enforce_eager"] is True and custom["convert"] == "classify"


def test_on_cpu_the_kv_cache_is_fixed_not_a_share_of_ram(fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch):
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    make()
    assert fake_vllm.engines[0].kwargs["kv_cache_memory_bytes"] == 2**30


# --- requests and results ----------------------------------------------------------------------------------


def test_one_classify_call_per_batch_with_raw_scores(fake_vllm: FakeVLLM):
    model = make()
    scores = score(model, ("Q: 1+1?\n", "x = 2<end_of_step>"), ("ab", "c"))
    assert len(fake_vllm.calls) == 1
    prompts, params = fake_vllm.calls[0]
    assert prompts == ["Q: 1+1?\nx = 2<end_of_step>", "abc"]  # prompt + solution, as text
    assert params.use_activation is False
    # raw = tokens seen (BOS + characters) - 10, + 0.5 when the text ends with '>': no sigmoid on top
    assert scores == [27 - 10 + 0.5, 4 - 10]


def test_vllm_0_11_0_pooling_params_turn_the_activation_off(monkeypatch: pytest.MonkeyPatch):
    fake = FakeVLLM(pooling_params=OldPoolingParams)
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    assert score(make(), ("", "abc")) == [4 - 10]
    assert fake.calls[0][1].activation is False


def test_transforms_from_options_and_from_the_checkpoint(fake_vllm: FakeVLLM, tmp_path: Path):
    assert score(make(transform="tanh", scale=4.0), ("", "abcdef")) == [pytest.approx(math.tanh((7 - 10) / 4.0))]
    (tmp_path / "config.json").write_text(json.dumps({CONFIG_KEY: {"transform": "tanh", "scale": 2.0}}))
    auto = make(model=str(tmp_path), transform="auto")
    assert auto.transform == ScoreTransform("tanh", 2.0)
    assert score(auto, ("", "abc")) == [pytest.approx(math.tanh(-3.0))]
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    assert make(model=str(tmp_path), transform="auto").transform == ScoreTransform()  # nothing stored: identity


def test_checkpoint_transform_of_a_hub_id_reads_its_config(monkeypatch: pytest.MonkeyPatch, caplog):
    import transformers

    def fake_config(model: str, trust_remote_code: bool = False) -> Any:
        if model == "org/ppm":
            return types.SimpleNamespace(**{CONFIG_KEY: {"transform": "tanh", "scale": 5.0}})
        raise OSError(f"{model} is not a model")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", staticmethod(fake_config))
    assert checkpoint_transform("org/ppm") == ScoreTransform("tanh", 5.0)
    with caplog.at_level(logging.WARNING):
        assert checkpoint_transform("org/missing") == ScoreTransform()
    assert "not transformed" in caplog.text


def test_long_text_is_cut_from_the_left_keeping_its_end_and_bos(fake_vllm: FakeVLLM, caplog):
    fake_vllm.max_model_len = 32
    model = make()
    long = "".join(chr(ord("a") + i % 26) for i in range(100)) + "<end_of_step>"
    with caplog.at_level(logging.WARNING):
        scores = score(model, ("", long), ("", "short"))
    prompts, _ = fake_vllm.calls[0]
    ids = prompts[0]["prompt_token_ids"]
    assert len(ids) == 32 and ids[0] == BOS
    assert decode(ids) == long[-31:] and decode(ids).endswith("<end_of_step>")
    assert prompts[1] == "short"
    assert scores == [32 - 10 + 0.5, 6 - 10]
    assert "cut 1 of 2 texts" in caplog.text


def test_tokens_read_come_from_the_outputs_after_the_cut(fake_vllm: FakeVLLM):
    fake_vllm.max_model_len = 32
    model = make()
    long = "x" * 100 + "<end_of_step>"
    items = [RewardRequest("", long), RewardRequest("Q: ", "short")]
    pairs = asyncio.run(model.score_with_tokens(items))
    assert [n for _, n in pairs] == [32, 1 + len("Q: short")]  # the cut text's 32 tokens; BOS + characters
    assert [s for s, _ in pairs] == model.score_sync(items)
    assert len(fake_vllm.calls) == 2  # one classify call each: nothing is tokenized or scored apart
    assert read_tokens(types.SimpleNamespace(outputs=None)) == 0  # an output that does not say: 0


def test_keep_end():
    assert keep_end([BOS, 5, 6, 7, 8], 3, BOS) == [BOS, 7, 8]
    assert keep_end([5, 6, 7, 8], 3, BOS) == [6, 7, 8]
    assert keep_end([BOS, 5, 6], 3, BOS) == [BOS, 5, 6]
    assert keep_end([BOS, 5, 6], 1, BOS) == [6]


def test_outputs_with_other_shapes(fake_vllm: FakeVLLM):
    class FakeTensor:
        """Test fake of a torch tensor: ``flatten().tolist()``."""

        def __init__(self, values: list[float]) -> None:
            self.values = values

        def flatten(self) -> FakeTensor:
            return self

        def tolist(self) -> list[float]:
            return self.values

    pooling = types.SimpleNamespace(outputs=types.SimpleNamespace(data=FakeTensor([1.25])))
    assert raw_score(pooling) == 1.25  # a PoolingRequestOutput
    fake_vllm.labels = 2
    with pytest.raises(RstarError, match="one label"):
        score(make(), ("", "abc"))


def test_empty_batch_makes_no_call_and_close_shuts_down(fake_vllm: FakeVLLM):
    model = make()
    assert score(model) == []
    assert fake_vllm.calls == []
    model.close()
    model.close()  # twice is harmless
    assert fake_vllm.engines[0].shut
    with pytest.raises(RstarError, match="closed"):
        score(model, ("p", "s"))


# --- the real engine (GPU) ---------------------------------------------------------------------------------------

GPU_REWARD_ENV = "RSTAR_GPU_TEST_REWARD_MODEL"


@pytest.mark.gpu
@pytest.mark.skipif(not os.environ.get(GPU_REWARD_ENV), reason=f"needs a reward checkpoint in ${GPU_REWARD_ENV}")
def test_gpu_real_vllm_matches_the_hf_reward_model():
    """Real vLLM on a one-label classification checkpoint (``$RSTAR_GPU_TEST_REWARD_MODEL``), against ``hf``."""
    if "vllm" in sys.modules and not hasattr(sys.modules["vllm"], "__file__"):
        pytest.skip("a fake vllm module is installed")
    pytest.importorskip("vllm")
    from rstar_hf.reward import HFRewardModel, HFRewardOptions

    path = os.environ[GPU_REWARD_ENV]
    items = [RewardRequest("Question: 2 + 3?\n", f"x = 2 + {k}\n<end_of_step>") for k in range(6)]
    hf = HFRewardModel(HFRewardOptions(model=path, dtype="float32", transform="identity"))
    expected = hf.score_sync(items)
    hf.close()
    model = make(model=path, dtype="float32", max_model_len=512, engine_kwargs={"enforce_eager": True})
    try:
        assert model.score_sync(items) == pytest.approx(expected, abs=1e-2, rel=1e-2)
    finally:
        model.close()
