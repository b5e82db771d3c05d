"""Scripted policy and reward model: deterministic fakes driven by plain Python functions."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from rstar.backends import find_stop
from rstar.options import Options
from rstar.registry import import_string
from rstar.types import GenerationRequest, GenerationResult, RewardRequest, Sample


def count_tokens(text: str) -> int:
    """The scripted components' token count: whitespace-separated words (at least 1 for non-empty text)."""
    return max(1, len(text.split())) if text else 0


def _resolve(fn: Any) -> Callable[..., Any]:
    resolved: Callable[..., Any] = import_string(fn) if isinstance(fn, str) else fn
    return resolved


class ScriptedPolicyOptions(Options):
    fn: str = Field(description="'module:function' with signature fn(prompt, n) -> list[str] (may take seed=)")


class ScriptedPolicy:
    """A policy whose samples come from ``fn(prompt, n) -> list[str]``.

    Each returned text is cut after the first stop string of the request it contains (the stop
    string is kept, ``finish_reason="stop"``); otherwise it ends with ``"eos"``, or ``"length"``
    when it has more than ``max_tokens`` words (then it is cut to ``max_tokens`` words). If ``fn``
    accepts a ``seed`` keyword it receives the request's seed. ``calls`` records every batch it got.
    """

    Options = ScriptedPolicyOptions

    def __init__(self, options: ScriptedPolicyOptions | Callable[..., list[str]]) -> None:
        fn = options.fn if isinstance(options, ScriptedPolicyOptions) else options
        self.fn = _resolve(fn)
        self._takes_seed = "seed" in inspect.signature(self.fn).parameters
        self.calls: list[list[GenerationRequest]] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append(list(requests))
        return [self._one(req) for req in requests]

    def _one(self, req: GenerationRequest) -> GenerationResult:
        kwargs = {"seed": req.seed} if self._takes_seed else {}
        texts = list(self.fn(req.prompt, req.n, **kwargs))
        if len(texts) != req.n:
            raise ValueError(f"scripted policy returned {len(texts)} samples for n={req.n}")
        return GenerationResult(tuple(_finish(t, req) for t in texts), prompt_tokens=count_tokens(req.prompt))


def _finish(text: str, req: GenerationRequest) -> Sample:
    hit = find_stop(text, req.stop)
    if hit is not None:
        end, stop = hit
        text = text[:end]
        return Sample(text, "stop", stop, count_tokens(text))
    words = text.split()
    if len(words) > req.max_tokens:
        text = " ".join(words[: req.max_tokens])
        return Sample(text, "length", None, req.max_tokens)
    return Sample(text, "eos", None, count_tokens(text))


class ScriptedRewardOptions(Options):
    fn: str = Field(description="'module:function' with signature fn(text) -> float; text = prompt + solution")


class ScriptedRewardModel:
    """A reward model whose score of a partial solution is ``fn(prompt + solution)``."""

    Options = ScriptedRewardOptions

    def __init__(self, options: ScriptedRewardOptions | Callable[[str], float]) -> None:
        fn = options.fn if isinstance(options, ScriptedRewardOptions) else options
        self.fn = _resolve(fn)
        self.calls: list[list[RewardRequest]] = []

    async def score(self, items: Sequence[RewardRequest]) -> list[float]:
        self.calls.append(list(items))
        return [float(self.fn(item.prompt + item.solution)) for item in items]
