"""The ``math_verify`` answer checker: math-verify's parse + verify, in worker processes.

math-verify bounds its parsing and comparison time with ``signal.alarm``, which works only in the
main thread of a process. So every check that needs it runs in a worker of a `pebble.ProcessPool`
(``spawn`` context, created on first use, reused), where it is the main thread; the event loop awaits
its future through ``asyncio.wrap_future``. Checking therefore works from any thread and any event loop.

Per ``(prediction, reference)`` pair:

* reference ``None`` (or an empty list) → False; a list → True when any element matches;
* equal strings (after stripping) → True, decided here without a worker;
* otherwise both sides are parsed as LaTeX (a bare answer such as ``16``, ``\\frac{20}{3}`` or
  ``18 dollars`` is wrapped as ``\\boxed{...}``, trailing unit words as ``\\text{...}``) and compared
  with ``math_verify.verify(gold=reference, target=prediction)``.

A check that raises or times out is False. math-verify's own timeouts cover Python code; a worker
stuck where signals cannot reach it (inside a C call) is stopped by the pool after a hard deadline,
counted from when the worker took the check (SIGTERM, then SIGKILL 3 s later if it is still there),
and replaced; the other workers' checks go on. A check whose worker died under it (crashed, or killed
from outside) is tried once more in a fresh worker. `close` ends the checks in flight as False.

Spawned workers import the ``__main__`` module, so a script that uses this checker needs the usual
``if __name__ == "__main__":`` guard (the ``rstar`` command and pytest have it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import re
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

from pebble import ProcessExpired, ProcessPool
from pydantic import Field

from rstar.options import Options
from rstar.types import Reference

logger = logging.getLogger(__name__)

_TRAILING_WORDS = re.compile(r"(?P<math>.*?[0-9}\)\]])\s*(?P<words>[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)\.?")
"""A math part ending in a digit or closing bracket, then plain words: ``18 dollars``, ``5 square feet``."""


# --- in the worker processes ------------------------------------------------------------------------


def _init_worker() -> None:
    """Import math-verify once per worker and keep its expected timeout warnings off the terminal."""
    import math_verify  # noqa: F401

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)


def as_latex(answer: str) -> str:
    """Text math-verify's LaTeX extraction reads as one answer: bare answers are wrapped in ``\\boxed{}``."""
    answer = answer.strip()
    if "\\boxed" in answer or answer.count("$") >= 2:
        return answer
    match = _TRAILING_WORDS.fullmatch(answer)
    if match:
        answer = f"{match['math']} \\text{{ {match['words']}}}"
    return f"\\boxed{{{answer}}}"


def verify_in_worker(prediction: str, references: list[str], seconds: int, float_rounding: int, strict: bool) -> bool:
    """True when ``prediction`` matches any of ``references`` (runs in a worker's main thread)."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    target = parse(as_latex(prediction), extraction_config=config, parsing_timeout=seconds)
    if not target:
        return False
    for reference in references:
        gold = parse(as_latex(reference), extraction_config=config, parsing_timeout=seconds)
        if gold and verify(gold, target, float_rounding=float_rounding, strict=strict, timeout_seconds=seconds):
            return True
    return False


# --- the checker --------------------------------------------------------------------------------


class MathVerifyOptions(Options):
    """Options of the ``math_verify`` answer checker."""

    timeout_s: float = Field(5.0, gt=0, description="math-verify's limit on each parse and comparison (whole seconds)")
    workers: int = Field(1, ge=1, description="worker processes that run checks")
    float_rounding: int = Field(6, ge=0, description="decimal places floats are rounded to before comparing")
    strict: bool = Field(True, description="variables must match by name; sets and tuples are not interchangeable")


class MathVerifyChecker:
    """Decides answer equivalence with math-verify; see the module docstring."""

    Options = MathVerifyOptions

    _HARD_DEADLINE_SLACK_S = 5.0
    """Beyond math-verify's own timeouts, how long a check may take before its worker is killed."""

    def __init__(self, options: MathVerifyOptions | None = None) -> None:
        self.options = options if options is not None else MathVerifyOptions()
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._in_flight: dict[ProcessPool, set[Future[bool]]] = {}
        self._stopped: weakref.WeakSet[Future[bool]] = weakref.WeakSet()
        """Checks cut short by `close` (or a broken pool): they end False rather than cancelled."""
        self._stopped_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        """One verdict per pair, in order."""
        return list(await asyncio.gather(*(self._check_pair(pred, ref) for pred, ref in pairs)))

    def close(self) -> None:
        """Stop the worker processes, killing any that is stuck (a later check starts new ones)."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            self._stop_pool(pool, wait=True)

    # --- one pair -------------------------------------------------------------------------------

    async def _check_pair(self, prediction: str, reference: Reference) -> bool:
        if reference is None:
            return False
        references = [str(r) for r in reference] if isinstance(reference, list) else [str(reference)]
        prediction = str(prediction).strip()
        if not prediction or not references:
            return False
        if any(prediction == r.strip() for r in references):
            return True
        seconds = max(1, math.ceil(self.options.timeout_s))  # signal.alarm takes whole seconds
        args = (prediction, references, seconds, self.options.float_rounding, self.options.strict)
        # counted by the pool from when a worker takes the check, not from when it was queued
        deadline = seconds * (1 + 2 * len(references)) + self._HARD_DEADLINE_SLACK_S
        for _attempt in range(2):
            pool = self._get_pool()
            try:
                future: Future[bool] = pool.schedule(self._work, args, timeout=deadline)
            except RuntimeError:  # the pool has stopped or broken down: start a new one
                self._stop_pool(pool)
                continue
            self._track(pool, future)
            try:
                verdict = await asyncio.wrap_future(future)
                return bool(verdict)
            except asyncio.TimeoutError:
                logger.warning("math_verify: a check ran past %.0f s; its worker was killed", deadline)
                return False
            except asyncio.CancelledError:
                if future in self._stopped:
                    return False
                raise  # this check's caller was cancelled (the pool has killed the worker running it)
            except (ProcessExpired, BrokenProcessPool) as exc:
                # its worker died (crashed, or killed from outside): once more, in a fresh worker
                logger.debug("math_verify: a check's worker died (%r)", exc)
                if isinstance(exc, BrokenProcessPool):
                    self._stop_pool(pool)
            except Exception:
                logger.debug("math_verify: check failed", exc_info=True)
                return False
        logger.warning("math_verify: no worker could finish a check (tried twice); counting it False")
        return False

    _work = staticmethod(verify_in_worker)
    """What runs in the worker: a module-level function (tests swap in one that hangs)."""

    def _get_pool(self) -> ProcessPool:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(
                    max_workers=self.options.workers,
                    initializer=_init_worker,
                    context=multiprocessing.get_context("spawn"),
                )
            return self._pool

    def _track(self, pool: ProcessPool, future: Future[bool]) -> None:
        """Remember an unfinished check, for `_stop_pool` to end it."""
        with self._lock:
            stopped = pool in self._stopped_pools
            if not stopped:
                self._in_flight.setdefault(pool, set()).add(future)
        if stopped:  # stopped between scheduling the check and here
            self._stopped.add(future)
            future.cancel()
            return

        def forget(done: Future[bool]) -> None:
            with self._lock:
                self._in_flight.get(pool, set()).discard(done)

        future.add_done_callback(forget)

    def _stop_pool(self, pool: ProcessPool, wait: bool = False) -> None:
        """Stop a pool and end its unfinished checks; its workers are stopped (killed if stuck)
        here, or with ``wait=False`` in a thread of their own, so that the event loop goes on."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
            if pool in self._stopped_pools:
                return
            self._stopped_pools.add(pool)
            unfinished = self._in_flight.pop(pool, set())
        pool.stop()  # type: ignore[no-untyped-call]
        for future in unfinished:
            self._stopped.add(future)
            future.cancel()
        if wait:
            pool.join()
        else:
            threading.Thread(target=pool.join, name="math_verify-stop-pool", daemon=True).start()
