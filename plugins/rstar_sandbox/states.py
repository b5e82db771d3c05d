"""``state: fork``: a node's program state lives on in a stopped process, and a child step runs in a fork of it.

With ``state: replay`` (the default, as the original does), a step's job is the whole program of its code
block, run from scratch: over a tree, the verifier's work grows with the sum of the path lengths. With
``state: fork``, a job that runs ``ok`` leaves its process behind, stopped, in the worker that ran it (a
*state*, `rstar_sandbox.worker`); a later job whose program is that program plus more lines (a child step)
goes to that worker, which forks the state, and only the new lines run, in the state's namespace.

What the job reports is what replay would have reported: the output of the earlier steps (without the value
of their trailing expression, which is no longer the last statement) followed by the new step's; the time
limit and the output cap are what the whole program has left; line numbers are those of the whole program.
Where the fork could differ, the program runs from scratch instead (`StateCache.lookup` finds no state):

* no state: the parent's job ended in an error, a timeout or any verdict other than ``ok`` (an erroring
  ancestor errs again in every descendant, exactly as replay makes it), called ``sys.exit()``, left a file in
  its working directory or in ``/tmp``, a thread or another process, an open file or writable shared memory
  (forks would share them), changed directory, printed while its trailing value became text, or its program
  uses ``__future__``; or the state was evicted (at most ``states`` per worker, least recently used first), or
  was signalled or woken by another job (the worker checks each stopped state and kills any that ran);
* the new lines do not compile on their own (a step that continues its parent's indented block, say);
* less than `MIN_TIME_LEFT_S` of the time limit is left.

What cannot be equal: a program that reads the clock, or draws random numbers without a seed, sees a different time
or draw (as two replays do), and unseeded draws continue the parent's generator instead of being reseeded; an
``os.register_at_fork`` hook a step installed runs when its state forks; a program that writes outside its working
directory and ``/tmp`` (with ``isolation: none`` only: a sandbox shows nothing else writable).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from rstar.types import CodeJob
from rstar_sandbox.pool import Worker

MIN_TIME_LEFT_S = 0.5
"""A child with less of its time limit left than this runs from scratch (its verdict is then exact)."""


@dataclass
class Kept:
    """A state some worker keeps: the program it ran and what that printed."""

    worker: Worker
    state_id: int
    output: bytes
    """Everything the program printed, the value of a trailing expression included."""
    display: int
    """How many bytes at the end of ``output`` print that value."""
    elapsed_s: float
    """How long the whole program ran so far (its steps' jobs together)."""
    pins: int = 0
    """Jobs waiting to fork it: it is not evicted meanwhile."""


class StateCache:
    """The states of a verifier's workers, by the program they ran; at most ``per_worker`` per worker."""

    def __init__(self, per_worker: int) -> None:
        self.per_worker = per_worker
        self._kept: collections.OrderedDict[str, Kept] = collections.OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter()
        """``from_state`` (jobs that forked a state), ``from_scratch``, ``kept``, ``evicted``, ``lost`` (a state
        that was gone), ``fallback`` (new lines that do not compile on their own)."""

    def lookup(self, program: str) -> tuple[str, Kept] | None:
        """The longest program with a live state that ``program`` continues (after a line break), if any. The state
        is pinned (not evicted) until `unpin`."""
        if "__future__" in program:
            return None
        end = len(program)
        while (end := program.rfind("\n", 0, end)) > 0:
            kept = self._kept.get(program[:end])
            if kept is None:
                continue
            if kept.worker.closed:
                del self._kept[program[:end]]
                continue
            self._kept.move_to_end(program[:end])
            kept.pins += 1
            return program[:end], kept
        return None

    def add(self, program: str, kept: Kept) -> list[int]:
        """Keep ``kept`` for ``program``; the ids of the states its worker should drop to make room."""
        drop: list[int] = []
        old = self._kept.pop(program, None)
        if old is not None and old.worker is kept.worker:
            drop.append(old.state_id)
        self._kept[program] = kept
        self.counts["kept"] += 1
        mine = [key for key, k in self._kept.items() if k.worker is kept.worker]
        for key in mine[: max(0, len(mine) - self.per_worker)]:
            if self._kept[key].pins == 0:
                drop.append(self._kept.pop(key).state_id)
                self.counts["evicted"] += 1
        return drop

    @staticmethod
    def unpin(kept: Kept) -> None:
        kept.pins -= 1

    def forget(self, program: str) -> None:
        self._kept.pop(program, None)


def step_job(whole: CodeJob, parent_program: str, kept: Kept) -> tuple[CodeJob, int, int] | None:
    """The job that runs the new lines of ``whole`` on top of ``kept`` (the state of ``parent_program``), with what
    the whole program has left of its time limit, and where the new lines start in it (character, line); None
    when too little time is left. The job's program is the whole one: the new lines run, and the whole program
    is compiled only when the new lines do not compile on their own (its syntax error is then the verdict)."""
    assert whole.timeout_s is not None and whole.max_output_bytes is not None
    left = whole.timeout_s - kept.elapsed_s
    if left < MIN_TIME_LEFT_S:
        return None
    job = CodeJob(whole.program, left, whole.memory_mb, whole.max_output_bytes)
    return job, len(parent_program) + 1, parent_program.count("\n") + 1
