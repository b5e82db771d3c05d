"""The ``math_verify`` answer checker: math-verify's parse + verify, in worker processes.

math-verify bounds its parsing and comparison time with ``signal.alarm``, which works only in the
main thread of a process. So every check that needs it runs in a worker of a
`concurrent.futures.ProcessPoolExecutor` (``spawn`` context, created on first use, reused),
where it is the main thread; the event loop awaits it through ``loop.run_in_executor``. Checking
therefore works from any thread and any event loop.

Per ``(prediction, reference)`` pair:

* reference ``None`` (or an empty list) → False; a list → True when any element matches;
* equal strings (after stripping) → True, decided here without a worker;
* otherwise both sides are parsed as LaTeX (a bare answer such as ``16``, ``\\frac{20}{3}`` or
  ``18 dollars`` is wrapped as ``\\boxed{...}``, trailing unit words as ``\\text{...}``) and compared
  with ``math_verify.verify(gold=reference, target=prediction)``.

A check that raises or times out is False. math-verify's own timeouts cover Python code; a worker
stuck where signals cannot reach it (inside a C call) is killed after a hard deadline, and its pool
is replaced.

Spawned workers import the ``__main__`` module, so a script that uses this checker needs the usual
``if __name__ == "__main__":`` guard (the ``rstar`` command and pytest have it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import multiprocessing
import re
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pydantic import Field

from rstar.config import Options
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
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        """One verdict per pair, in order."""
        return list(await asyncio.gather(*(self._check_pair(pred, ref) for pred, ref in pairs)))

    def close(self) -> None:
        """Stop the worker processes (a later check starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        workers = _workers(pool)
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.join(timeout=2.0)
            if process.is_alive():  # stuck where math-verify's alarm cannot reach
                process.kill()
        # The pool's manager thread reaps the workers too; once it has ended, every worker's exit
        # status is recorded (two threads reaping one child can leave it looking alive for a moment).
        if manager is not None:
            manager.join(timeout=10.0)
        for process in workers:
            process.join(timeout=1.0)

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
        deadline = seconds * (1 + 2 * len(references)) + self._HARD_DEADLINE_SLACK_S
        loop = asyncio.get_running_loop()
        async with self._semaphore():
            for _attempt in range(2):
                pool = self._get_pool()
                try:
                    return bool(await asyncio.wait_for(loop.run_in_executor(pool, self._work, *args), deadline))
                except asyncio.TimeoutError:
                    logger.warning("math_verify: a check ran past %.0f s; killing its worker", deadline)
                    self._discard_pool(pool)
                    return False
                except BrokenProcessPool:
                    # a worker died (killed after another check's deadline, or crashed): retry once in a new pool
                    self._discard_pool(pool)
                except Exception:
                    logger.debug("math_verify: check failed", exc_info=True)
                    return False
            return False

    _work = staticmethod(verify_in_worker)
    """What runs in the worker: a module-level function (tests swap in one that hangs)."""

    def _semaphore(self) -> asyncio.Semaphore:
        """At most ``workers`` checks submitted at once, so a check's deadline starts when a worker is free."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.options.workers)
            return sem

    def _get_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.options.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                )
            return self._pool

    def _discard_pool(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        """Kill a pool's workers (its running checks fail with BrokenProcessPool) and forget it."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for process in _workers(pool):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def _workers(pool: concurrent.futures.ProcessPoolExecutor) -> list[Any]:
    return list((getattr(pool, "_processes", None) or {}).values())
