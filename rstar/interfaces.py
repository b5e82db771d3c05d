"""The component interfaces: small, batch-shaped ``typing.Protocol``s, with every optional part written here.

Plugins implement them without inheriting from anything. Every batch method takes a batch and returns
one result per item, in order; the engine (`rstar.engine`) gathers the requests of many concurrent
searches into those batches.

**Concurrency each kind receives** (from the engine, within one process):

* `PolicyBackend` and `RewardModel`: **one batch at a time**. A batch is sent when every live search
  waits or ``max_batch`` requests are queued. A policy that batches on its own (an HTTP server, an
  async engine) sets ``batches_itself = True`` and then receives each search's requests as they come,
  any number of calls at once.
* `StepVerifier` and `AnswerChecker`: **any number of batches at once** (unbounded): the engine does
  not wait for one batch to finish before sending the next, so these must be safe to call
  concurrently and bound their own parallelism (a worker pool).
* `SearchStrategy.search`: one call per problem, up to ``max_in_flight`` problems at once.

**Optional parts** every kind may have:

* ``Options``: a class attribute, the `rstar.options.Options` model that validates the component's
  recipe keys (default: it takes none);
* ``close()``: release processes, threads, devices (`Closeable`); the runner calls it when the
  component is no longer used;
* ``batches_itself`` (policies only), described above;
* ``stats()``: what the component measured about itself, as ``{name: number}`` (a serving engine's prefix-cache
  hit rate, say); the runner adds it to each search's summary under ``components``;
* ``score_with_tokens(items)`` (reward models only): ``score`` that also says how many tokens the model read
  for each item, described on `RewardModel`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from rstar.types import (
    Budget,
    CodeJob,
    GenerationRequest,
    GenerationResult,
    Problem,
    Reference,
    RewardRequest,
    Tree,
    Usage,
    Verdict,
)

if TYPE_CHECKING:
    from rstar.config import Recipe
    from rstar.registry import Registry
    from rstar.steps import StepFormat


@runtime_checkable
class PolicyBackend(Protocol):
    """Samples continuations. Each result has ``request.n`` samples whose text keeps its stop string.

    Receives one batch at a time, unless it sets ``batches_itself = True`` (then: every request as it comes).
    """

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class StepVerifier(Protocol):
    """Runs untrusted programs. What the code does is a `rstar.types.Verdict`, never an exception.

    Receives any number of batches at once."""

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]: ...


@runtime_checkable
class AnswerChecker(Protocol):
    """Decides whether each ``(prediction, reference)`` pair is mathematically equivalent.

    Receives any number of batches at once."""

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]: ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores partial solutions; higher is better. Scores are floats in the model's own range.

    Receives one batch at a time.

    Optional: ``async score_with_tokens(items) -> list[tuple[float, int]]``, one ``(score, tokens)`` pair
    per item: the score ``score`` gives and the number of tokens the model read for the item (after any
    cut). A model that tokenizes its texts anyway counts them for free, so the engine calls it instead of
    ``score`` when it exists, and counts the tokens in `rstar.types.Usage.reward_tokens`; a model
    without it is counted as reading 0 tokens. The count is per item because one batch holds the
    requests of several problems.

    Optional: ``tokens_computed: int``, the tokens the model ran through its network since it was made (those
    read, less those its caches served: a node's path scored before its children, say); the engine reports it
    next to the tokens read (`rstar.engine.EngineSnapshot.reward_tokens_computed`)."""

    async def score(self, items: Sequence[RewardRequest]) -> list[float]: ...


class SearchContext(Protocol):
    """What a strategy gets for one problem: batched component calls, the step format, the budget,
    seeded randomness, and usage accounting in the units every strategy reports.

    Write a strategy as plain sequential code against this; the engine batches its awaits with those
    of every other problem in flight."""

    problem: Problem
    step_format: StepFormat
    budget: Budget
    seed: int
    """This problem's seed, derived from the run's seed and the problem id (`rstar.engine.problem_seed`)."""
    rng: random.Random
    """A generator seeded with ``seed``: draw every random choice of the search from it."""

    @property
    def has_reward_model(self) -> bool: ...

    @property
    def usage(self) -> Usage:
        """What this search has spent so far, wall time included."""
        ...

    @property
    def token_cap_reached(self) -> bool:
        """Whether this problem's generated tokens reached ``budget.max_tokens`` (never, without a cap): a
        strategy checks it before each unit of work (a rollout, a beam level, a wave) and starts none once true."""
        ...

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sample from the policy. Requests without a seed get one from this problem's generator."""
        ...

    async def execute(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        """Run programs in the verifier."""
        ...

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        """Decide answer equivalence with the answer checker (not counted as spent compute)."""
        ...

    async def score(self, items: Sequence[RewardRequest]) -> list[float]:
        """Score partial solutions with the reward model; an error if the recipe has none."""
        ...


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


@runtime_checkable
class Closeable(Protocol):
    """Components that hold processes, threads or devices may also offer ``close()``; the runner calls it."""

    def close(self) -> Any: ...


class StageContext(Protocol):
    """What a stage gets from the runner: the round's recipe (checkpoint markers resolved), its folder,
    the run folder, and the runner's services (search, components, progress)."""

    recipe: Recipe
    """This round's recipe, validated once; read a plugin's section with ``recipe.section(name)``."""
    round: int
    """The round, 1-based."""
    folder: Path
    """This stage's folder, ``<output_dir>/round_<k>/<stage>/``; the runner marks it done after `Stage.run`."""

    @property
    def output_dir(self) -> Path:
        """The run folder."""
        ...

    @property
    def run_recipe(self) -> Recipe:
        """The whole recipe, rounds not merged (``recipe`` is this round's view of it)."""
        ...

    @property
    def registry(self) -> Registry: ...

    @property
    def progress(self) -> Callable[[str, dict[str, Any]], None]:
        """Display events (``"loading"``, ``"evaluate_run"``, ...) for the command line."""
        ...

    def round_dir(self, round_index: int) -> Path:
        """``<output_dir>/round_<k>``."""
        ...

    def stage_dir(self, stage: str, round_index: int | None = None) -> Path:
        """The folder of a stage of this (or another) round."""
        ...

    def search(
        self, recipe: Recipe, folder: Path, *, only: set[str] | None = None, cache: Any = None
    ) -> dict[str, Any]:
        """Search ``recipe``'s problems (those with ids in ``only``, if given) into ``folder/trees.jsonl``,
        resumably; return the search summary. Pass a ``cache`` from `components` to keep models loaded
        across several searches."""
        ...

    def components(self) -> Any:
        """A component cache (``get(spec)``, ``close()``) for stages that run several searches with the same
        models; the stage closes it."""
        ...

    def build(self, kind: str, spec: Any) -> Any:
        """Build a component from its validated spec (`rstar.config.ComponentSpec`)."""
        ...


@runtime_checkable
class Stage(Protocol):
    """One named step of a round (``search``, ``extract``, ``train_sft``, ...), registered with
    ``register_stages`` and listed in a recipe's ``stages``.

    The runner skips a stage whose folder holds a done-marker, and otherwise calls ``run`` and writes
    its summary and the marker. A stage that runs long should make its own work resumable (a search is
    resumed problem by problem). ``needs`` (optional) maps each recipe section the stage cannot run
    without to an example shown when the section is missing; the runner resolves checkpoint markers
    (``@round.sft``, ...) in those sections as well as in the components."""

    needs: ClassVar[Mapping[str, str]]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Do the stage's work into ``ctx.folder``; return its summary (JSON values)."""
        ...
