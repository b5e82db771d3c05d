"""Fakes of vLLM's engine API for the unit tests of the `vllm` policy (named as fakes; the real engine
runs in the tests marked gpu)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakes.tokenizers import FakeCharTokenizer

STEP = "<end_of_step>"
CODE = "<end_of_code>"


@dataclass
class FakeCompletion:
    """Test fake of ``vllm.CompletionOutput``."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    """Test fake of ``vllm.RequestOutput``."""

    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]
    finished: bool = True


class FakeSamplingParams:
    """Test fake of ``vllm.SamplingParams``: records its keyword arguments."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


Responder = Callable[[Any, FakeSamplingParams], list[FakeCompletion]]


def echo_responder(prompt: Any, params: FakeSamplingParams) -> list[FakeCompletion]:
    """Sample i of n is ``"s<i>"`` + the first stop string, reported as vLLM does with include_stop_str_in_output."""
    stops = params.kwargs.get("stop") or []
    out = []
    for i in range(params.kwargs["n"]):
        if stops:
            out.append(FakeCompletion(i, f"s{i} {stops[0]}", [7] * (i + 2), "stop", stops[0]))
        else:
            out.append(FakeCompletion(i, f"s{i}", [7] * (i + 2), "stop", None))
    return out


def prompt_ids(prompt: Any) -> list[int]:
    return list(prompt["prompt_token_ids"]) if isinstance(prompt, dict) else FakeCharTokenizer().encode(prompt)


@dataclass
class FakeVLLM:
    """Test fake of the ``vllm`` module: ``LLM``, ``SamplingParams``, ``AsyncEngineArgs``, ``AsyncLLMEngine``;
    every engine built and every call made are recorded."""

    max_model_len: int = 4096
    respond: Responder = echo_responder
    engines: list[Any] = field(default_factory=list)
    calls: list[tuple[list[Any], list[FakeSamplingParams]]] = field(default_factory=list)

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

            def generate(
                self, prompts: list[Any], params: list[FakeSamplingParams], use_tqdm: bool = True
            ) -> list[Any]:
                assert isinstance(prompts, list) and isinstance(params, list) and len(prompts) == len(params)
                fake.calls.append((prompts, params))
                return [
                    FakeRequestOutput(prompt_ids(p), list(reversed(fake.respond(p, sp))))  # out of index order
                    for p, sp in zip(prompts, params, strict=True)
                ]

        class AsyncEngineArgs:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class AsyncLLMEngine:
            def __init__(self, args: AsyncEngineArgs) -> None:
                self.kwargs = args.kwargs
                self.model_config = types.SimpleNamespace(max_model_len=args.kwargs.get("max_model_len", 4096))
                self.tokenizer = FakeCharTokenizer()
                self.request_ids: list[str] = []
                self.shut = False
                fake.engines.append(self)

            @classmethod
            def from_engine_args(cls, args: AsyncEngineArgs) -> AsyncLLMEngine:
                return cls(args)

            async def generate(self, prompt: Any, sampling_params: FakeSamplingParams, request_id: str) -> Any:
                self.request_ids.append(request_id)
                fake.calls.append(([prompt], [sampling_params]))
                done = fake.respond(prompt, sampling_params)
                partial = [FakeCompletion(c.index, c.text[:1], c.token_ids[:1], None) for c in done]
                await asyncio.sleep(0)
                yield FakeRequestOutput(prompt_ids(prompt), partial, finished=False)
                await asyncio.sleep(0)
                yield FakeRequestOutput(prompt_ids(prompt), done)

            def shutdown(self) -> None:
                self.shut = True

        mod.LLM = LLM  # type: ignore[attr-defined]
        mod.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
        mod.AsyncEngineArgs = AsyncEngineArgs  # type: ignore[attr-defined]
        mod.AsyncLLMEngine = AsyncLLMEngine  # type: ignore[attr-defined]
        return mod
