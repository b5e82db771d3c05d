"""The batching engine (ARCHITECTURE.md section 4): strategies stay simple, the engine batches.

Each problem's search is one coroutine written as plain sequential code. When it awaits the
policy, the verifier, the answer checker or the reward model, its request joins that component's
queue. A queue is handed to its component as one batch when **every live search is waiting** (none
can add more) or when the queue holds ``max_batch`` requests. So an offline engine sees one large
batch per "round" of requests from all problems at once, with no barrier between trees of
different depths.

A backend that batches on its own (an HTTP server with continuous batching, an async engine) says
so with a ``batches_itself = True`` attribute; its requests are then sent as they come. The
concurrency each component kind receives is written on its protocol (`rstar.interfaces`).

Results never depend on batching: each problem's randomness comes from a seed derived from
``(run seed, problem id)``, and every policy request carries its own seed drawn from it.

`Engine.snapshot` reads the engine's counters (problems done and in flight, spend so far, batch fill, the seconds
each component was busy) for a display or a logger; taking one costs a few additions per search in flight, and
keeping the counters a few per finished problem or batch, so nothing is added to the work per node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from rstar.errors import RstarError
from rstar.interfaces import AnswerChecker, PolicyBackend, RewardModel, SearchContext, SearchStrategy, StepVerifier
from rstar.steps import StepFormat
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

In = TypeVar("In")
Out = TypeVar("Out")


def problem_seed(run_seed: int, problem_id: str) -> int:
    """A problem's seed: a stable hash of the run seed and the problem id (not Python's ``hash``)."""
    digest = hashlib.sha256(f"{run_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class _Ticket(Generic[Out]):
    """One ``submit`` call: its future resolves when all of its items have results."""

    future: asyncio.Future[list[Out]]
    results: list[Any]
    remaining: int


@dataclass
class BatcherStats:
    """What one component was handed: per batch its size, the searches in it and the searches alive then;
    and how long the component was busy."""

    batches: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)
    searches: list[int] = field(default_factory=list)
    live: list[int] = field(default_factory=list)
    busy_s: float = 0.0
    """Wall seconds during which at least one batch was in flight: the union of the batches' intervals, not
    their sum (the verifier runs several batches at once). Counts the intervals that have ended."""

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    @property
    def mean_fill(self) -> float:
        """Mean over batches of (searches with a request in the batch) / (searches alive when it was sent)."""
        fills = [n / live for n, live in zip(self.searches, self.live, strict=True) if live]
        return sum(fills) / len(fills) if fills else 0.0


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine's counters at one moment (`Engine.snapshot`): what the searches of its runs have done so far.

    Spend (tokens, jobs, calls) counts finished searches and the searches in flight, as far as they got.
    Answers and accuracy count finished searches only: a tree's answer is chosen when its search ends."""

    problems: int
    """Problems handed to the engine's runs."""
    done: int
    """Problems whose search has finished."""
    in_flight: int
    """Searches running now."""
    answered: int
    """Finished searches that chose an answer."""
    correct: int
    """Finished searches whose chosen answer is correct."""
    labelled: int
    """Finished searches of problems with a reference answer (accuracy's denominator)."""
    nodes: int
    """Nodes of the finished searches' trees, the root left out."""
    samples: int
    """Policy samples drawn so far: each becomes at most one node, so this is the live count of nodes made."""
    policy_calls: int
    generated_tokens: int
    prompt_tokens: int
    verifier_jobs: int
    reward_calls: int
    reward_tokens: int
    policy_batches: int
    """Batches handed to the policy."""
    batch_fill: float
    """The policy's `BatcherStats.mean_fill`: how full its batches were, from 0 to 1."""
    seconds: float
    """Since the engine's first run started."""
    policy_busy_s: float
    """Wall seconds during which the policy had a batch in flight (`BatcherStats.busy_s`)."""
    verifier_busy_s: float
    """Wall seconds during which the verifier had at least one batch in flight: overlapping batches count once."""
    reward_busy_s: float
    """Wall seconds during which the reward model had a batch in flight; 0.0 without a reward model."""
    reward_tokens_computed: int
    """Tokens the reward model ran through its network since the engine was made, the tokens its caches served
    left out; against ``reward_tokens`` (the tokens it read), what its caches saved. Read from the model's
    optional ``tokens_computed`` counter. A model without one is taken to compute every token it reads: then this
    equals ``reward_tokens``."""

    @property
    def accuracy(self) -> float | None:
        """Correct over labelled finished searches; None before the first one."""
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        """The counters as a JSON mapping, accuracy included."""
        return {**dataclasses.asdict(self), "accuracy": self.accuracy}


class Batcher(Generic[In, Out]):
    """Gathers the items submitted by many searches and calls ``fn`` with them in batches."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        fn: Callable[[list[In]], Awaitable[list[Out]]],
        max_batch: int,
        max_concurrent: int | None = 1,
        eager: bool = False,
    ) -> None:
        self.engine = engine
        self.eager = eager
        self.name = name
        self.fn = fn
        self.max_batch = max_batch
        self.max_concurrent = max_concurrent
        self.pending: deque[tuple[In, _Ticket[Out], int]] = deque()
        self.in_flight = 0
        self.stats = BatcherStats()
        self._busy_since = 0.0  # when in_flight last went from 0 to 1

    @property
    def busy_s(self) -> float:
        """`BatcherStats.busy_s`, the interval still open (a batch in flight now) included."""
        open_s = time.perf_counter() - self._busy_since if self.in_flight else 0.0
        return self.stats.busy_s + open_s

    async def submit(self, items: Sequence[In]) -> list[Out]:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        ticket: _Ticket[Out] = _Ticket(loop.create_future(), [None] * len(items), len(items))
        for i, item in enumerate(items):
            self.pending.append((item, ticket, i))
        self.engine._blocked += 1
        self.engine._maybe_flush()
        return await ticket.future

    def _can_start(self) -> bool:
        return bool(self.pending) and (self.max_concurrent is None or self.in_flight < self.max_concurrent)

    def _flush(self, only_full: bool) -> None:
        only_full = only_full and not self.eager
        while self._can_start() and (not only_full or len(self.pending) >= self.max_batch):
            chunk = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
            self.stats.searches.append(len({id(ticket) for _, ticket, _ in chunk}))
            self.stats.live.append(self.engine._live)
            if self.in_flight == 0:
                self._busy_since = time.perf_counter()
            self.in_flight += 1
            self.engine._tasks.add(asyncio.ensure_future(self._run(chunk)))

    async def _run(self, chunk: list[tuple[In, _Ticket[Out], int]]) -> None:
        self.stats.batches += 1
        self.stats.items += len(chunk)
        self.stats.sizes.append(len(chunk))
        try:
            results = await self.fn([item for item, _, _ in chunk])
            if len(results) != len(chunk):
                raise RstarError(f"{self.name} returned {len(results)} results for a batch of {len(chunk)}")
        except BaseException as exc:
            for _, ticket, _ in chunk:
                if not ticket.future.done():
                    ticket.future.set_exception(exc)
                    self.engine._blocked -= 1
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, ticket, i), result in zip(chunk, results, strict=True):
                ticket.results[i] = result
                ticket.remaining -= 1
                if ticket.remaining == 0 and not ticket.future.done():
                    ticket.future.set_result(ticket.results)
                    self.engine._blocked -= 1
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.stats.busy_s += time.perf_counter() - self._busy_since
            self.engine._maybe_flush()


@dataclass
class Components:
    """The components a search uses."""

    policy: PolicyBackend
    verifier: StepVerifier
    checker: AnswerChecker
    reward_model: RewardModel | None = None


class Engine:
    """Runs many searches concurrently and batches their component calls."""

    def __init__(
        self,
        components: Components,
        *,
        max_in_flight: int = 64,
        max_batch: int = 256,
        seed: int = 0,
    ) -> None:
        self.components = components
        self.max_in_flight = max_in_flight
        self.seed = seed
        self._live = 0
        self._blocked = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        # The counters of `snapshot`: kept per finished problem, summed over the running ones when asked.
        self._running: set[ProblemContext] = set()
        self._spent = dict.fromkeys(_COUNTED, 0)
        self._samples = 0
        self._problems = 0
        self._outcomes = {"done": 0, "answered": 0, "correct": 0, "labelled": 0, "nodes": 0}
        self._started: float | None = None
        c = components
        # A reward model's ``tokens_computed`` counts its whole life; the engine counts from what it says now.
        self._reward_computed_at_start = _tokens_computed(c.reward_model)
        # A backend that batches on its own (an HTTP server, an async engine) sets `batches_itself = True`:
        # its requests go out as they come, any number at once.
        eager = bool(getattr(c.policy, "batches_itself", False))
        self.policy: Batcher[GenerationRequest, GenerationResult] = Batcher(
            self, "policy", c.policy.generate, max_batch, None if eager else 1, eager=eager
        )
        self.verifier: Batcher[CodeJob, Verdict] = Batcher(self, "verifier", c.verifier.run, max_batch, None)
        self.checker: Batcher[tuple[str, Reference], bool] = Batcher(
            self, "answer checker", c.checker.check, max_batch, None
        )
        self.reward: Batcher[RewardRequest, tuple[float, int]] | None = (
            Batcher(self, "reward model", _scored_with_tokens(c.reward_model), max_batch)
            if c.reward_model is not None
            else None
        )

    @property
    def batchers(self) -> list[Batcher[Any, Any]]:
        return [b for b in (self.policy, self.verifier, self.checker, self.reward) if b is not None]

    def snapshot(self) -> EngineSnapshot:
        """The counters now: cheap (a few additions per search in flight), for a display or a logger."""
        spent = dict(self._spent)
        samples = self._samples
        for ctx in self._running:
            samples += ctx._samples
            for key in _COUNTED:
                spent[key] += getattr(ctx._usage, key)
        policy = self.policy.stats
        computed = _tokens_computed(self.components.reward_model)
        return EngineSnapshot(
            problems=self._problems,
            in_flight=len(self._running),
            samples=samples,
            policy_calls=spent["policy_calls"],
            generated_tokens=spent["generated_tokens"],
            prompt_tokens=spent["prompt_tokens"],
            verifier_jobs=spent["verifier_jobs"],
            reward_calls=spent["reward_calls"],
            reward_tokens=spent["reward_tokens"],
            policy_batches=policy.batches,
            batch_fill=policy.mean_fill,
            seconds=0.0 if self._started is None else time.perf_counter() - self._started,
            policy_busy_s=self.policy.busy_s,
            verifier_busy_s=self.verifier.busy_s,
            reward_busy_s=0.0 if self.reward is None else self.reward.busy_s,
            reward_tokens_computed=(
                spent["reward_tokens"] if computed is None else computed - (self._reward_computed_at_start or 0)
            ),
            **self._outcomes,
        )

    def _finished(self, ctx: ProblemContext, tree: Tree) -> None:
        self._running.discard(ctx)
        for key in _COUNTED:
            self._spent[key] += getattr(ctx._usage, key)
        self._samples += ctx._samples
        counts = self._outcomes
        counts["done"] += 1
        counts["answered"] += tree.prediction is not None
        counts["correct"] += tree.correct is True
        counts["labelled"] += tree.correct is not None
        counts["nodes"] += len(tree.nodes) - 1

    def _maybe_flush(self) -> None:
        everyone_waits = self._blocked >= self._live
        for batcher in self.batchers:
            batcher._flush(only_full=not everyone_waits)

    async def run(
        self,
        problems: Iterable[Problem],
        strategy: SearchStrategy,
        step_format: StepFormat,
        budget: Budget,
        on_tree: Callable[[Tree], Any] | None = None,
    ) -> list[Tree]:
        """Search every problem, ``max_in_flight`` at a time; ``on_tree`` sees each tree as it finishes.

        Returns the trees in the order the problems were given. The first exception raised by a
        search or a component stops the run and is re-raised.
        """
        queue = list(problems)
        trees: dict[int, Tree] = {}
        next_index = 0
        self._problems += len(queue)
        if self._started is None:
            self._started = time.perf_counter()

        async def worker() -> None:
            nonlocal next_index
            try:
                while next_index < len(queue):
                    index = next_index
                    next_index += 1
                    problem = queue[index]
                    ctx = ProblemContext(self, problem, step_format, budget)
                    self._running.add(ctx)
                    tree = await strategy.search(problem, ctx)
                    self._finished(ctx, tree)
                    trees[index] = tree
                    if on_tree is not None:
                        on_tree(tree)
            finally:
                self._live -= 1
                self._maybe_flush()

        # A worker counts as live from the start, so that the first requests wait for the others.
        n_workers = min(self.max_in_flight, len(queue))
        self._live += n_workers
        workers = [asyncio.ensure_future(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            for task in list(self._tasks):
                if not task.done():
                    task.cancel()
        return [trees[i] for i in range(len(queue))]


class ProblemContext:
    """The engine's `rstar.interfaces.SearchContext` for one problem: its calls join the engine's batches."""

    def __init__(self, engine: Engine, problem: Problem, step_format: StepFormat, budget: Budget) -> None:
        self._engine = engine
        self.problem = problem
        self.step_format = step_format
        self.budget = budget
        self.seed = problem_seed(engine.seed, problem.id)
        self.rng = random.Random(self.seed)
        self._usage = Usage()
        self._samples = 0
        self._started = time.perf_counter()

    @property
    def has_reward_model(self) -> bool:
        return self._engine.reward is not None

    @property
    def usage(self) -> Usage:
        """What this search has spent so far, wall time included."""
        return Usage(**{**self._usage.to_dict(), "wall_time_s": round(time.perf_counter() - self._started, 4)})

    @property
    def token_cap_reached(self) -> bool:
        """Whether this problem's generated tokens reached ``budget.max_tokens`` (never, without a cap)."""
        cap = self.budget.max_tokens
        return cap is not None and self._usage.generated_tokens >= cap

    def _spend(self, **amounts: int) -> None:
        self._usage = self._usage + Usage(**amounts)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sample from the policy. Requests without a seed get one from this problem's generator."""
        seeded = [r if r.seed is not None else _with_seed(r, self.rng.randrange(2**31)) for r in requests]
        results = await self._engine.policy.submit(seeded)
        self._samples += sum(len(res.samples) for res in results)
        self._spend(
            policy_calls=len(seeded),
            generated_tokens=sum(s.num_tokens for res in results for s in res.samples),
            prompt_tokens=sum(res.prompt_tokens for res in results),
        )
        return results

    async def execute(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        """Run programs in the verifier."""
        verdicts = await self._engine.verifier.submit(jobs)
        self._spend(verifier_jobs=len(jobs))
        return verdicts

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        """Decide answer equivalence with the answer checker (not counted as spent compute)."""
        return await self._engine.checker.submit(pairs)

    async def score(self, items: Sequence[RewardRequest]) -> list[float]:
        """Score partial solutions with the reward model; an error if the recipe has none."""
        if self._engine.reward is None:
            raise RstarError("this search strategy needs a reward model: set 'reward_model' in the recipe")
        scored = await self._engine.reward.submit(items)
        self._spend(reward_calls=len(items), reward_tokens=sum(tokens for _, tokens in scored))
        return [score for score, _ in scored]


_COUNTED = ("policy_calls", "generated_tokens", "prompt_tokens", "verifier_jobs", "reward_calls", "reward_tokens")
"""The `Usage` fields an `EngineSnapshot` sums."""


def _with_seed(request: GenerationRequest, seed: int) -> GenerationRequest:
    return replace(request, seed=seed)


def _tokens_computed(model: RewardModel | None) -> int | None:
    """The reward model's ``tokens_computed`` counter (optional: tokens run through its network, cache hits
    left out); None without a reward model or a counter."""
    value = getattr(model, "tokens_computed", None)
    return None if value is None else int(value)


def _scored_with_tokens(model: RewardModel) -> Callable[[list[RewardRequest]], Awaitable[list[tuple[float, int]]]]:
    """The model's ``score_with_tokens`` (the optional part of `RewardModel`), or ``score`` with 0 tokens per item."""
    counted = getattr(model, "score_with_tokens", None)
    if callable(counted):
        return counted  # type: ignore[no-any-return]

    async def uncounted(items: list[RewardRequest]) -> list[tuple[float, int]]:
        return [(score, 0) for score in await model.score(items)]

    return uncounted


__all__ = [
    "Batcher",
    "BatcherStats",
    "Components",
    "Engine",
    "EngineSnapshot",
    "ProblemContext",
    "SearchContext",
    "problem_seed",
]
