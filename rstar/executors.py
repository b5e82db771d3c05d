"""Where a search runs, and which of its problems: the runner's seam for scale-out.

By default the runner searches a stage's problems with one `rstar.engine.Engine` in its own process. Two
top-level recipe sections, registered by plugins, change that (bundled: ``rstar_ray`` registers
``executor``, ``rstar_shard`` registers ``shard``):

* ``shard: i/N`` (typed as `Shard`): search only the problems of slice ``i`` of ``N``. A problem belongs to
  slice ``sha256(problem id) mod N + 1``: it lands in the same slice whatever the dataset's order, whatever
  else the dataset holds and whichever stage searches it, so the shards of a run never overlap.
* ``executor: {name: ..., ...}``: a section whose typed value is an `Executor`, handed the problems still
  to search. It reports each finished tree back to the runner, in the runner's process, and the runner
  appends it to ``trees.jsonl``, calls the ``tree_done`` hook and shows progress exactly as for a search
  in process; so resuming, ``rstar extract``, the reports and the hooks cannot tell where a tree grew.
  `InProcess` (``executor: {name: local}``) names the default, to override an executor set elsewhere.

A stage's search reads these sections from its own recipe or, when that recipe was derived for one search
(an ``evaluate`` run, ``search_unsolved``), from the run's recipe.

An executor's workers grow trees with `SearchService`: one engine fed problem by problem for as long as it
lives, so a worker takes the next problem as soon as it has room and a tree stays where it started. Trees
do not depend on where or beside what they grew: each problem's randomness comes from ``(run seed, problem
id)`` (`rstar.engine.problem_seed`), and batching never changes a result.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rstar.config import Recipe
from rstar.engine import Components, Engine, EngineSnapshot, ProblemContext
from rstar.interfaces import SearchStrategy
from rstar.registry import Registry
from rstar.steps import StepFormat
from rstar.types import Problem, Tree

Progress = Callable[[str, dict[str, Any]], None]
"""The runner's display callback: ``progress(event, payload)``."""


@dataclass(frozen=True)
class SearchWork:
    """What the runner hands an executor: one search's recipe (checkpoint markers resolved), the problems still
    to search (those already in ``trees.jsonl`` left out), the registry its components are built from, and where
    to report."""

    recipe: Recipe
    problems: Sequence[Problem]
    registry: Registry
    on_tree: Callable[[Tree], None]
    """Takes each finished tree, in the runner's process: appends it to ``trees.jsonl``, calls ``tree_done``."""
    on_progress: Callable[[EngineSnapshot], None]
    """Takes the search's counters so far, summed over its workers (for the ``search_progress`` hook), now and then."""
    progress: Progress
    """Takes the executor's own events, ``(event, payload)``: the runner hands them to the ``executor_event`` hook."""


@runtime_checkable
class Executor(Protocol):
    """Runs the problems of one search somewhere other than the runner's own engine (the typed value of a
    recipe's ``executor`` section).

    ``search`` returns when every problem of ``work`` has a tree, having called ``work.on_tree`` in the calling
    process exactly once per problem as each tree finished (and never for a tree it did not get whole). It raises
    when the search cannot finish; the trees reported until then stay written, and a re-run searches the rest.
    It returns what the components measured, by role (``{"policy": {name: number}, ...}``, as
    `rstar.runner.component_stats` gives it), which the runner adds to the search's summary."""

    def search(self, work: SearchWork) -> dict[str, Any]: ...


class InProcess:
    """The default executor, named: the runner's own engine, in the runner's process (``executor: {name: local}``)."""

    def __repr__(self) -> str:
        return "InProcess()"


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` (1-based) of ``count``: the problems whose id hashes to it (`shard_index`)."""

    index: int
    count: int

    @classmethod
    def parse(cls, value: object) -> Shard:
        """``"i/N"`` with ``1 <= i <= N``; a `ValueError` saying what is expected otherwise."""
        text = str(value).strip() if isinstance(value, str) else ""
        index, slash, count = text.partition("/")
        if not (slash and index.strip().isdigit() and count.strip().isdigit()):
            raise ValueError(f"expected 'i/N', the i-th of N slices (e.g. 2/8), got {value!r}")
        shard = cls(int(index), int(count))
        if not 1 <= shard.index <= shard.count:
            raise ValueError(f"{value!r}: i must be between 1 and N (slices are numbered from 1)")
        return shard

    def select(self, problems: Sequence[Problem]) -> list[Problem]:
        """The problems of this slice, in their order."""
        return [p for p in problems if shard_index(p.id, self.count) == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_index(problem_id: str, count: int) -> int:
    """The slice (1-based) of ``count`` that a problem belongs to: a stable hash of its id (not Python's ``hash``)."""
    digest = hashlib.sha256(problem_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def shard_of(recipe: Recipe, run_recipe: Recipe) -> Shard | None:
    """The ``shard`` of a search's recipe, else of the run's recipe; None: every problem."""
    value = _section(recipe, run_recipe, "shard")
    return value if isinstance(value, Shard) else None


def executor_of(recipe: Recipe, run_recipe: Recipe) -> Executor | None:
    """The ``executor`` of a search's recipe, else of the run's recipe; None: the runner's own engine."""
    value = _section(recipe, run_recipe, "executor")
    return value if isinstance(value, Executor) else None


def _section(recipe: Recipe, run_recipe: Recipe, name: str) -> Any:
    value = recipe.section(name)
    return value if value is not None else run_recipe.section(name)


class SearchService:
    """One engine that searches the problems handed to it one at a time, for as long as it lives: what an
    executor's worker runs. Each `search` call joins the engine's batches with the problems already in flight
    on the same event loop; a caller bounds how many it keeps in flight (``Engine.run`` does the same for a
    fixed list of problems, ``max_in_flight`` at a time)."""

    def __init__(self, recipe: Recipe, components: Components, registry: Registry) -> None:
        o = recipe.options
        self.engine = Engine(components, max_in_flight=o.max_in_flight, max_batch=o.max_batch, seed=o.seed)
        self.strategy: SearchStrategy = registry.build("search", recipe.require("search"))
        self.step_format = StepFormat.from_config(o.step_format)
        self.budget = o.budget

    async def search(self, problem: Problem) -> Tree:
        """The tree of one problem, grown beside whatever else is in flight."""
        engine = self.engine
        ctx = ProblemContext(engine, problem, self.step_format, self.budget)
        # What `Engine.run` does around each search, for one problem that came alone: counted for the engine's
        # snapshot, and live while it runs (the engine sends a batch early only when every live search waits).
        engine._problems += 1
        if engine._started is None:
            engine._started = time.perf_counter()
        engine._running.add(ctx)
        engine._live += 1
        try:
            tree = await self.strategy.search(problem, ctx)
            engine._finished(ctx, tree)
            return tree
        finally:
            engine._running.discard(ctx)
            engine._live -= 1
            engine._maybe_flush()

    def snapshot(self) -> EngineSnapshot:
        """The engine's counters now (`rstar.engine.Engine.snapshot`)."""
        return self.engine.snapshot()


__all__ = [
    "Executor",
    "InProcess",
    "Progress",
    "SearchService",
    "SearchWork",
    "Shard",
    "executor_of",
    "shard_index",
    "shard_of",
]
