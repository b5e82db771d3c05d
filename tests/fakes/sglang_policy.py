"""Fakes of SGLang's engine API for the unit tests of the `sglang` policy (named as fakes; the real engine
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
EOS = 2


Responder = Callable[[Any, dict[str, Any]], dict[str, Any]]


def echo_responder(prompt: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Answers ``"<seed> <first stop>"``, keeping the stop string as SGLang does with no_stop_trim."""
    stops = params.get("stop") or []
    n_prompt = len(prompt) if isinstance(prompt, list) else len(prompt) + 1
    label = f"seed={params.get('sampling_seed')}"
    if stops:
        finish: dict[str, Any] = {"type": "stop", "matched": stops[0]}
        text = f"{label} {stops[0]}"
    else:
        finish = {"type": "stop", "matched": EOS}
        text = label
    return {"text": text, "meta_info": {"finish_reason": finish, "prompt_tokens": n_prompt, "completion_tokens": 3}}


@dataclass
class FakeSGLang:
    """Test fake of the ``sglang`` module: ``Engine`` with ``generate``, ``async_generate`` and ``shutdown``;
    every engine built and every call made are recorded."""

    context_len: int = 4096
    respond: Responder = echo_responder
    engines: list[Any] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("sglang")

        class Engine:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs
                self.shut = False
                self.tokenizer_manager = types.SimpleNamespace(
                    tokenizer=FakeCharTokenizer(), context_len=kwargs.get("context_length", fake.context_len)
                )
                fake.engines.append(self)

            def _answer(self, mode: str, prompt: Any, input_ids: Any, sampling_params: Any) -> list[dict[str, Any]]:
                assert (prompt is None) != (input_ids is None)
                inputs = prompt if prompt is not None else input_ids
                assert isinstance(inputs, list) and isinstance(sampling_params, list)
                assert len(inputs) == len(sampling_params)
                fake.calls.append({"mode": mode, "prompt": prompt, "input_ids": input_ids, "params": sampling_params})
                return [fake.respond(p, sp) for p, sp in zip(inputs, sampling_params, strict=True)]

            def generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None) -> Any:
                return self._answer("sync", prompt, input_ids, sampling_params)

            async def async_generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None):
                await asyncio.sleep(0)
                return self._answer("async", prompt, input_ids, sampling_params)

            def shutdown(self) -> None:
                self.shut = True

        mod.Engine = Engine  # type: ignore[attr-defined]
        return mod
