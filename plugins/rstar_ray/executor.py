"""The ``ray`` executor: a search's problems on Ray actors, each owning a whole engine built from the recipe.

The runner's process (the *driver*) keeps the queue. Each worker (`rstar_ray.worker.SearchWorker`) is handed
problems one at a time, up to ``max_in_flight`` at once (fewer when there are few problems, so that every
worker gets some), and takes the next one as soon as one of its trees is finished: a tree grows on one worker
from start to end. Each finished tree comes back to the driver, which hands it to the runner (``trees.jsonl``,
``tree_done``) exactly as an in-process search would.

A worker that dies (killed, out of memory, its node lost) takes no tree with it: the driver puts its unfinished
problems back at the front of the queue and starts a worker in its place; a tree the driver did not get whole is
never written, and one it got is written once. More than ``max_worker_deaths`` deaths in one search end it with
an `RstarError`; what was written stays, and the same command resumes. An error raised by a component or a
search strategy on a worker ends the search as it would in process.

Ray is imported only when a search starts (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rstar.config import Recipe
from rstar.engine import EngineSnapshot
from rstar.errors import MissingExtraError, RstarError
from rstar.executors import SearchWork
from rstar.registry import Registry
from rstar.types import Problem, Tree
from rstar_ray.options import RayOptions

log = logging.getLogger(__name__)

POLL_S = 1.0
"""How often the driver asks the workers for their counters (and checks workers that are slow to start)."""
CLOSE_TIMEOUT_S = 30.0
"""How long the workers get to close their components at the end before they are killed."""
BUILT = ("policy", "verifier", "answer_checker", "reward_model", "search")
"""What a worker builds: recipe keys, each also the kind of its component."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError("executor 'ray'", "ray", "ray") from None
    return ray


def connect(ray: Any, options: RayOptions) -> None:
    """Join (or, for address ``local``, start) the Ray cluster, unless this process already did: a process uses
    one cluster, the one its first search named."""
    if ray.is_initialized():
        return
    if options.address == "local":
        ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False)
    else:
        ray.init(address=options.address)


def worker_runtime_env(options: RayOptions) -> dict[str, Any] | None:
    """The workers' Ray runtime environment: the recipe's ``runtime_env``; with address ``local`` the workers, on
    this machine, also import from this process's ``sys.path`` (a test's helpers, a policy function in a script's
    folder), as an in-process search would."""
    runtime_env = dict(options.runtime_env or {})
    if options.address == "local":
        env_vars = dict(runtime_env.get("env_vars") or {})
        env_vars.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p and os.path.exists(p)))
        runtime_env["env_vars"] = env_vars
    return runtime_env or None


class RayExecutor:
    """The typed value of ``executor: {name: ray, ...}`` (`rstar.executors.Executor`): holds its options only;
    each `search` starts its workers and stops them when it ends."""

    def __init__(self, options: RayOptions) -> None:
        self.options = options

    def __repr__(self) -> str:
        return f"RayExecutor({self.options!r})"

    def search(self, work: SearchWork) -> dict[str, Any]:
        ray = import_ray()
        connect(ray, self.options)
        pool = WorkerPool(ray, self.options, work)
        try:
            return pool.run()
        finally:
            pool.stop()


@dataclass(eq=False)
class Worker:
    """The driver's record of one worker actor."""

    index: int
    actor: Any
    started: float
    state: str = "starting"
    """``starting`` (building its engine), ``ready`` or ``dead``."""
    node: str = ""
    pid: int = 0
    ready_at: float = 0.0
    in_flight: dict[str, Problem] = field(default_factory=dict)
    done: int = 0
    snapshot: EngineSnapshot | None = None
    polling: bool = False

    def describe(self, now: float) -> dict[str, Any]:
        busy = now - self.ready_at if self.state == "ready" and self.ready_at else 0.0
        return {
            "worker": self.index,
            "node": self.node,
            "pid": self.pid,
            "state": self.state,
            "in_flight": len(self.in_flight),
            "done": self.done,
            "problems_per_s": round(self.done / busy, 3) if busy > 0 else 0.0,
        }


class WorkerPool:
    """The driver's side of one search: the queue, the workers, the trees coming back."""

    def __init__(self, ray: Any, options: RayOptions, work: SearchWork) -> None:
        from rstar_ray.worker import SearchWorker

        self.ray = ray
        self.options = options
        self.work = work
        self.actor_class = ray.remote(SearchWorker)
        self.registry = search_registry(work.recipe, work.registry)
        self.runtime_env = worker_runtime_env(options)
        in_flight = work.recipe.options.max_in_flight
        self.per_worker = max(1, min(in_flight, math.ceil(len(work.problems) / options.workers)))
        self.queue: deque[Problem] = deque(work.problems)
        self.refs: dict[Any, tuple[str, Worker, Problem | None]] = {}
        self.workers: list[Worker] = []
        self.deaths = 0
        self.received: set[str] = set()
        self.outcomes = Outcomes()
        self.driver_s = 0.0
        self.started = time.perf_counter()

    # --- the loop --------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.work.progress(
            "executor_start",
            {
                "executor": "ray",
                "workers": self.options.workers,
                "problems": len(self.queue),
                "per_worker": self.per_worker,
            },
        )
        for _ in range(self.options.workers):
            self._start_worker()
        next_poll = time.perf_counter() + POLL_S
        while self.queue or any(w.in_flight for w in self.workers):
            if not self.refs:  # every worker dead, none starting: _lost starts one or raises, so never here
                raise RstarError("ray executor: no worker left to search the remaining problems")
            timeout = max(0.0, next_poll - time.perf_counter())
            ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
            for ref in ready:
                self._handle(ref)
            if time.perf_counter() >= next_poll:
                self._poll()
                next_poll = time.perf_counter() + POLL_S
        self._last_snapshots()
        self.work.on_progress(self.snapshot())
        return self._finish()

    def _handle(self, ref: Any) -> None:
        kind, worker, problem = self.refs.pop(ref)
        if worker.state == "dead":
            return
        exceptions = self.ray.exceptions
        try:
            value = self.ray.get(ref)
        except (exceptions.ActorUnschedulableError, exceptions.RuntimeEnvSetupError) as exc:
            raise RstarError(f"ray executor: worker {worker.index} cannot start: {first_line(exc)}") from None
        except (
            exceptions.RayActorError,
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.OutOfMemoryError,
        ) as exc:
            self._lost(worker, exc)
            return
        except exceptions.ObjectLostError:  # the worker lives, the result is gone with its node: search it again
            if problem is not None:
                worker.in_flight.pop(problem.id, None)
                self.queue.appendleft(problem)
            if kind == "snapshot":
                worker.polling = False
            self._feed(worker)
            return
        except exceptions.RayTaskError as exc:  # a component or the strategy raised: the search stops, as in process
            if kind == "snapshot":  # counters for the display only: not worth a search
                log.debug("ray executor: worker %d gave no counters: %s", worker.index, first_line(exc))
                worker.polling = False
                return
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RstarError):
                raise cause from None
            raise
        if kind == "start":
            worker.state, worker.ready_at = "ready", time.perf_counter()
            worker.node, worker.pid = value["node"], value["pid"]
            seconds = value["seconds"]
            log.info("ray worker %d ready on %s (pid %d) after %.1f s", worker.index, worker.node, worker.pid, seconds)
            self.work.progress("worker_ready", {**worker.describe(worker.ready_at), "seconds": seconds})
        elif kind == "snapshot":
            worker.snapshot, worker.polling = value, False
        else:
            assert problem is not None
            self._tree(worker, problem, value)
        self._feed(worker)

    def _tree(self, worker: Worker, problem: Problem, tree: Tree) -> None:
        started = time.perf_counter()
        worker.in_flight.pop(problem.id, None)
        worker.done += 1
        if problem.id not in self.received:  # never twice, whatever happened on the way
            self.received.add(problem.id)
            self.outcomes.add(tree)
            self.work.on_tree(tree)
        self.driver_s += time.perf_counter() - started
        self.work.progress("executor_progress", self.describe())

    def _feed(self, worker: Worker) -> None:
        while worker.state == "ready" and self.queue and len(worker.in_flight) < self.per_worker:
            problem = self.queue.popleft()
            worker.in_flight[problem.id] = problem
            self.refs[worker.actor.search.remote(problem)] = ("search", worker, problem)

    def _start_worker(self) -> None:
        o = self.options
        actor = self.actor_class.options(
            num_cpus=o.num_cpus_per_worker,
            num_gpus=o.num_gpus_per_worker,
            resources=dict(o.resources_per_worker) or None,
            runtime_env=self.runtime_env,
            max_restarts=0,
        ).remote(self.work.recipe, self.registry)
        worker = Worker(len(self.workers), actor, time.perf_counter())
        self.workers.append(worker)
        self.refs[actor.start.remote()] = ("start", worker, None)

    def _lost(self, worker: Worker, exc: BaseException) -> None:
        """A worker died: its problems go back to the front of the queue, and another worker starts in its place."""
        worker.state = "dead"
        requeued = list(worker.in_flight.values())
        worker.in_flight.clear()
        self.queue.extendleft(reversed(requeued))
        for ref in [r for r, (_, w, _) in self.refs.items() if w is worker]:
            del self.refs[ref]
        kill(self.ray, worker.actor)
        self.deaths += 1
        where = f"worker {worker.index}" + (f" on {worker.node} (pid {worker.pid})" if worker.pid else "")
        log.warning(
            "ray executor: %s died (%s); %d problem(s) go back to the queue",
            where,
            first_line(exc),
            len(requeued),
        )
        self.work.progress(
            "worker_lost",
            {
                **worker.describe(time.perf_counter()),
                "requeued": [p.id for p in requeued],
                "deaths": self.deaths,
                "max_worker_deaths": self.options.max_worker_deaths,
                "error": first_line(exc),
            },
        )
        if self.deaths > self.options.max_worker_deaths:
            left = len(self.work.problems) - len(self.received)
            raise RstarError(
                f"ray executor: {self.deaths} workers died in this search, more than max_worker_deaths="
                f"{self.options.max_worker_deaths}; the last, {where}: {first_line(exc)}. The {len(self.received)} "
                f"trees finished are written: run the same command again to search the other {left} problems "
                "(see the workers' output above, or Ray's logs, for why they died)"
            )
        self._start_worker()

    def _poll(self) -> None:
        """Ask the ready workers for their counters; report progress; give up on workers that never start."""
        now = time.perf_counter()
        for worker in self.workers:
            if worker.state == "ready" and not worker.polling:
                worker.polling = True
                self.refs[worker.actor.snapshot.remote()] = ("snapshot", worker, None)
        self.work.on_progress(self.snapshot())
        self.work.progress("executor_progress", self.describe())
        if any(w.state == "ready" for w in self.workers):
            return
        late = [w for w in self.workers if w.state == "starting" and now - w.started > self.options.start_timeout_s]
        if late:
            o = self.options
            asks = f"num_cpus={o.num_cpus_per_worker}, num_gpus={o.num_gpus_per_worker}"
            if o.resources_per_worker:
                asks += f", resources={o.resources_per_worker}"
            raise RstarError(
                f"ray executor: no worker started within start_timeout_s={o.start_timeout_s:g} s. Each asks for "
                f"{asks}: is there a node with that much free (`ray status`)? A worker loading a large model may "
                "need a larger start_timeout_s"
            )

    # --- reports ---------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        now = time.perf_counter()
        return {
            "workers": [w.describe(now) for w in self.workers if w.state != "dead"],
            "in_flight": sum(len(w.in_flight) for w in self.workers),
            "queued": len(self.queue),
            "done": len(self.received),
            "problems": len(self.work.problems),
            "deaths": self.deaths,
        }

    def snapshot(self) -> EngineSnapshot:
        """The search's counters so far (`combined_snapshot`)."""
        return combined_snapshot(
            [w.snapshot for w in self.workers if w.snapshot is not None],
            self.outcomes,
            problems=len(self.work.problems),
            in_flight=sum(len(w.in_flight) for w in self.workers),
            seconds=time.perf_counter() - self.started,
        )

    def _last_snapshots(self) -> None:
        """Every live worker's counters once more, now that all its searches are finished."""
        asked = {w.actor.snapshot.remote(): w for w in self.workers if w.state == "ready"}
        ready, _ = self.ray.wait(list(asked), num_returns=len(asked), timeout=CLOSE_TIMEOUT_S) if asked else ([], [])
        for ref in ready:
            try:
                asked[ref].snapshot = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue

    def _finish(self) -> dict[str, Any]:
        """What the components measured (the mean over the workers of each number), and the executor's own figures."""
        live = [w for w in self.workers if w.state == "ready"]
        measured: list[dict[str, Any]] = []
        if live:
            refs = [w.actor.stats.remote() for w in live]
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=CLOSE_TIMEOUT_S)
            for ref in ready:
                try:
                    measured.append(self.ray.get(ref))
                except self.ray.exceptions.RayError:
                    continue
        stats = mean_stats(measured)
        seconds = time.perf_counter() - self.started
        first_ready = min((w.ready_at for w in self.workers if w.ready_at), default=self.started)
        stats["executor"] = {
            "workers": self.options.workers,
            "worker_deaths": self.deaths,
            "startup_s": round(first_ready - self.started, 3),
            "problems_per_s": round(len(self.received) / seconds, 3) if seconds > 0 else 0.0,
            "driver_ms_per_tree": round(1000 * self.driver_s / len(self.received), 3) if self.received else 0.0,
        }
        self.work.progress("executor_end", {**stats["executor"], **self.describe()})
        return stats

    def stop(self) -> None:
        """Close every worker's components, then end the workers (also after an error)."""
        live = [w for w in self.workers if w.state != "dead"]
        refs = []
        for worker in live:
            try:
                refs.append(worker.actor.close.remote())
            except Exception:  # a worker that is gone already
                continue
        if refs:
            try:
                self.ray.wait(refs, num_returns=len(refs), timeout=CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("ray executor: closing the workers failed: %s", first_line(exc))
        for worker in live:
            kill(self.ray, worker.actor)
            worker.state = "dead"
        self.refs.clear()


def search_registry(recipe: Recipe, registry: Registry) -> Registry:
    """The registrations a worker needs: the recipe's components and search strategy (each worker builds them
    from these, so components registered by a plugin that only the driver's registry has are found too)."""
    registrations = []
    for key in BUILT:
        spec = recipe.component(key)
        if spec is not None:
            registrations.append(registry.get(spec.kind, spec.name))
    return Registry(registrations)


@dataclass
class Outcomes:
    """What the trees received so far came to: the counters of an `EngineSnapshot` that count finished searches."""

    done: int = 0
    answered: int = 0
    correct: int = 0
    labelled: int = 0
    nodes: int = 0

    def add(self, tree: Tree) -> None:
        self.done += 1
        self.answered += tree.prediction is not None
        self.correct += tree.correct is True
        self.labelled += tree.correct is not None
        self.nodes += len(tree.nodes) - 1


def combined_snapshot(
    snapshots: list[EngineSnapshot], outcomes: Outcomes, *, problems: int, in_flight: int, seconds: float
) -> EngineSnapshot:
    """One `EngineSnapshot` for a search spread over several engines: the engines' spend summed (a dead worker's
    as it last said), the outcomes counted from the trees received."""
    exact: dict[str, Any] = {
        **dataclasses.asdict(outcomes),
        "problems": problems,
        "in_flight": in_flight,
        "seconds": seconds,
    }
    batches = sum(s.policy_batches for s in snapshots)
    exact["batch_fill"] = sum(s.batch_fill * s.policy_batches for s in snapshots) / batches if batches else 0.0
    summed: dict[str, Any] = {
        f.name: sum(getattr(s, f.name) for s in snapshots)
        for f in dataclasses.fields(EngineSnapshot)
        if f.name not in exact
    }
    return EngineSnapshot(**summed, **exact)


def mean_stats(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """``{role: {name: number}}`` of several workers: each number's mean over the workers that report it."""
    out: dict[str, Any] = {}
    for role in sorted({role for stats in measured for role in stats}):
        values: dict[str, list[float]] = {}
        for stats in measured:
            for name, value in stats.get(role, {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values.setdefault(name, []).append(value)
        out[role] = {name: sum(v) / len(v) for name, v in values.items()}
    return out


def kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception as exc:  # gone already
        log.debug("ray executor: kill: %s", first_line(exc))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = [
    "Outcomes",
    "RayExecutor",
    "WorkerPool",
    "combined_snapshot",
    "connect",
    "import_ray",
    "mean_stats",
    "search_registry",
    "worker_runtime_env",
]
