"""The component interfaces: small, batch-shaped ``typing.Protocol``s.

Plugins implement them without inheriting from anything. Every method takes a batch and returns
one result per item, in order; the engine (`rstar.engine`) gathers the requests of many
concurrent searches into those batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rstar.types import (
    CodeJob,
    GenerationRequest,
    GenerationResult,
    Problem,
    Reference,
    RewardRequest,
    Tree,
    Verdict,
)

if TYPE_CHECKING:
    from rstar.engine import SearchContext


@runtime_checkable
class PolicyBackend(Protocol):
    """Samples continuations. Each result has ``request.n`` samples whose text keeps its stop string."""

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class StepVerifier(Protocol):
    """Runs untrusted programs. What the code does is a `rstar.types.Verdict`, never an exception."""

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]: ...


@runtime_checkable
class AnswerChecker(Protocol):
    """Decides whether each ``(prediction, reference)`` pair is mathematically equivalent."""

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]: ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores partial solutions; higher is better. Scores are floats in the model's own range."""

    async def score(self, items: Sequence[RewardRequest]) -> list[float]: ...


@runtime_checkable
class SearchStrategy(Protocol):
    """Searches one problem, as plain sequential code; ``ctx`` batches its calls with other problems'."""

    async def search(self, problem: Problem, ctx: SearchContext) -> Tree: ...


@runtime_checkable
class Dataset(Protocol):
    """Yields problems; ``load`` may raise `rstar.errors.DataError` naming the file and line."""

    def load(self) -> list[Problem]: ...


@runtime_checkable
class Trainer(Protocol):
    """Fits a model on extracted data and returns the checkpoint directory it wrote."""

    def fit(self, data: Path, init_model: str, out_dir: Path) -> Path: ...


class Closeable(Protocol):
    """Components that hold processes, threads or devices may also offer ``close()``; the runner calls it."""

    def close(self) -> Any: ...
