"""Fakes of vLLM's engine API for the unit tests of the `vllm` reward model (named as fakes; the real engine
runs in the tests marked gpu)."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any

from fakes.tokenizers import FakeCharTokenizer


def seen_tokens(prompt: Any) -> list[int]:
    return list(prompt["prompt_token_ids"]) if isinstance(prompt, dict) else FakeCharTokenizer().encode(prompt)


def fake_head(ids: list[int]) -> float:
    """The fake model's raw score: number of tokens seen minus 10, plus 0.5 when the last token is '>'."""
    return len(ids) - 10 + (0.5 if ids[-1] == ord(">") else 0.0)


@dataclass
class FakeClassificationOutput:
    """Test fake of ``vllm.outputs.ClassificationOutput``."""

    probs: list[float]


@dataclass
class FakeClassificationRequestOutput:
    """Test fake of ``vllm.ClassificationRequestOutput``."""

    prompt_token_ids: list[int]
    outputs: FakeClassificationOutput


class NewPoolingParams:
    """Test fake of ``vllm.PoolingParams`` (0.11.1 and later): ``use_activation``."""

    def __init__(self, *, use_activation: bool | None = None) -> None:
        self.use_activation = use_activation

    def applies_activation(self) -> bool:
        return self.use_activation is not False


class OldPoolingParams:
    """Test fake of ``vllm.PoolingParams`` in 0.11.0: ``activation``."""

    def __init__(self, *, activation: bool | None = None) -> None:
        self.activation = activation

    def applies_activation(self) -> bool:
        return self.activation is not False


@dataclass
class FakeVLLM:
    """Test fake of the ``vllm`` module for pooling: ``LLM.classify`` applies a sigmoid unless the pooling
    params turn the activation off, as vLLM does for one-label classifiers."""

    max_model_len: int = 4096
    pooling_params: type = NewPoolingParams
    labels: int = 1
    engines: list[Any] = field(default_factory=list)
    calls: list[tuple[list[Any], Any]] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("vllm")

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs
                self.shut = False
                max_len = kwargs.get("max_model_len", fake.max_model_len)
                self.llm_engine = types.SimpleNamespace(
                    model_config=types.SimpleNamespace(max_model_len=max_len),
                    engine_core=types.SimpleNamespace(shutdown=self._shutdown),
                )
                fake.engines.append(self)

            def _shutdown(self) -> None:
                self.shut = True

            def get_tokenizer(self) -> FakeCharTokenizer:
                return FakeCharTokenizer()

            def classify(self, prompts: list[Any], *, pooling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
                assert isinstance(prompts, list) and use_tqdm is False
                fake.calls.append((prompts, pooling_params))
                out = []
                for p in prompts:
                    ids = seen_tokens(p)
                    raw = fake_head(ids)
                    value = 1 / (1 + math.exp(-raw)) if pooling_params.applies_activation() else raw
                    out.append(FakeClassificationRequestOutput(ids, FakeClassificationOutput([value] * fake.labels)))
                return out

        mod.LLM = LLM  # type: ignore[attr-defined]
        mod.PoolingParams = self.pooling_params  # type: ignore[attr-defined]
        return mod
