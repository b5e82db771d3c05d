"""The ``subprocess`` step verifier: each program in a forked, resource-limited, sandboxed process.

The verifier keeps up to ``max_workers`` warm workers ("zygotes", `rstar_sandbox.worker`), each a
long-lived Python process that runs inside bubblewrap (the default ``isolation``; the verifier refuses to
start without it unless ``isolation: none`` is named): only the system's libraries and the interpreter
visible, read-only; a private, bounded ``/tmp``; no network; its own PID and IPC namespaces; a seccomp
filter; dying with rstar. Started as root, the worker switches to a uid of its own and becomes
non-dumpable, then imports the ``preload`` modules (math, fractions, sympy, numpy) once. A job goes to an
idle worker, which forks one child for it; the child starts a new session in a fresh temporary directory,
limits itself (address space, CPU time, file size, open files, processes), runs the program like a
notebook cell and exits; the worker then removes whatever it left. A forked child shares nothing with the
next job's child, so no state leaks between jobs; imports the worker made cost nothing.

Inline jobs (option ``inline``, on by default): most steps are short arithmetic, for which a fork costs
hundreds of times more than the program, so jobs go to the workers first in batches, and a worker runs the
closed programs of a batch (an allow-list check) one after the other in one forked process, and answers
``fork`` for every other one. The verdicts are the same either way (a test compares them).

Branching state (option ``state``; ``replay``, the original's way, by default): with ``fork``, a job that ran
``ok`` stays, stopped, in its worker, and a child step's job forks it and runs only the new lines, with the
same verdict as the whole program's (`rstar_sandbox.states`).

This module is the component: its options, the choice of isolation (fail closed: never a silent fallback)
and `SubprocessVerifier.run`, which sends each job inline or forked. The rest is in modules of its own:

* `rstar_sandbox.pool`: the pool of warm workers (`rstar_sandbox.pool.WorkerPool`, which this verifier
  is) and the framed protocol on each worker's control socket;
* `rstar_sandbox.isolation`: the sandbox around a worker: the bubblewrap command line, the seccomp filter,
  the memory cgroup, the worker's uid and environment;
* `rstar_sandbox.forked`: one job in a child of its own, with its deadline, output cap and verdict;
* `rstar_sandbox.inline`: batches of closed programs, one process per batch;
* `rstar_sandbox.states`: ``state: fork``, which programs' states the workers keep;
* `rstar_sandbox.worker`: the worker itself, which runs inside the sandbox.

Limits: a `rstar.types.CodeJob` may set its own ``timeout_s``, ``memory_mb`` and
``max_output_bytes``; the limits it leaves as None are the verifier's options.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from rstar.errors import RstarError
from rstar.options import Options
from rstar.types import CodeJob, Verdict
from rstar_sandbox.forked import StateJob, decode_output, run_forked
from rstar_sandbox.inline import may_inline, run_inline
from rstar_sandbox.isolation import (
    SANDBOX_SCRATCH,
    Cgroup,
    bwrap_prefix,
    bwrap_works,
    child_env,
    closed_ancestors,
    interpreter_binds,
    interpreter_paths,
    private_uid,
    seccomp_program,
)
from rstar_sandbox.pool import DEFAULT_PRELOAD, WORKER_SOURCE_PATH, Worker, WorkerPool
from rstar_sandbox.states import Kept, StateCache, step_job

log = logging.getLogger(__name__)

Isolation = Literal["bwrap", "none", "auto"]
StateMode = Literal["replay", "fork"]

STATE_DESCRIPTION = (
    "'replay' (each step's job runs its code block's whole program from scratch, as the original) or 'fork' (a "
    "job that ran ok stays, stopped, as the state its children's jobs fork from: only the new step runs; same "
    "verdicts, see the docs for the exceptions, where it runs from scratch)"
)
STATES_DESCRIPTION = "states kept per worker with state 'fork' (least recently used dropped first)"


def check_states(states: int, max_processes: int) -> None:
    """A state counts as a process of its worker's uid: a job's forks need that room (RLIMIT_NPROC); the worker
    holds one state more than ``states`` for a moment."""
    if states > max_processes - 9:
        raise ValueError(f"states ({states}) must be at most max_processes - 9 ({max_processes - 9})")


class StateOptions(Options):
    """The ``state`` options both verifiers share (`rstar_sandbox.states`)."""

    state: StateMode = Field("replay", description=STATE_DESCRIPTION)
    states: int = Field(32, ge=1, description=STATES_DESCRIPTION)

    @model_validator(mode="after")
    def _states_fit(self) -> StateOptions:
        if self.state == "fork":
            check_states(self.states, getattr(self, "max_processes", 64))
        return self


class SubprocessOptions(StateOptions):
    """Options of the ``subprocess`` verifier. The limits are defaults for the jobs it builds."""

    timeout_s: float = Field(10.0, gt=0, description="default wall-clock limit of a job, in seconds")
    memory_mb: int = Field(
        2048, ge=16, description="default memory a job may map (RLIMIT_AS) on top of the warm worker's, in MiB"
    )
    max_output_bytes: int = Field(65536, ge=0, description="default cap on a job's stdout, in bytes")
    max_workers: int = Field(2, ge=1, description="jobs run at the same time (one warm worker each)")
    python: str | None = Field(None, description="Python interpreter that runs the jobs (default: rstar's own)")
    isolation: Isolation = Field(
        "bwrap",
        description="'bwrap' (bubblewrap sandbox; the verifier refuses to start where it cannot run) or 'none' "
        "(rlimits only, no security boundary; must be named explicitly). 'auto' is 'bwrap' (no fallback)",
    )
    tmpfs_mb: int = Field(256, ge=16, description="size of each worker's private /tmp under bubblewrap, in MiB")
    worker_memory_mb: int = Field(
        4096,
        ge=0,
        description="memory of one worker and all its jobs' processes together (a cgroup of its own, where rstar "
        "runs as root and may create one); 0: no such bound",
    )
    preload: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PRELOAD),
        description="modules each warm worker imports once, so that jobs importing them pay nothing",
    )
    max_processes: int = Field(64, ge=1, description="processes and threads one job may run (RLIMIT_NPROC)")
    max_file_mb: int = Field(64, ge=1, description="largest file a job may write (RLIMIT_FSIZE), in MiB")
    max_open_files: int = Field(256, ge=16, description="files a job may hold open at once (RLIMIT_NOFILE)")
    inline: bool = Field(
        True,
        description="run closed programs (an allow-list of syntax, builtins and attributes: arithmetic with math, "
        "cmath, Fraction) in one process per batch instead of one per program: same verdicts, ~100x faster on "
        "short arithmetic",
    )


class SubprocessVerifier(WorkerPool):
    """Runs each `rstar.types.CodeJob` in a child forked from a warm worker; see the module docstring."""

    Options = SubprocessOptions

    def __init__(self, options: SubprocessOptions | None = None) -> None:
        self.options = options if options is not None else SubprocessOptions()
        self._python = _resolve_python(self.options.python)
        self.isolation: str = _choose_isolation(self.options.isolation)
        # What the sandbox shows of the host: the system's libraries and the interpreter's own folders, read-only.
        self._binds = interpreter_binds(self._python)
        # Started as root, each worker switches to a uid of its own (no capabilities; RLIMIT_NPROC then counts
        # only its processes). Without bubblewrap that needs the interpreter's files reachable for others
        # (bubblewrap shows only what it binds, through folders anyone may enter); where they are not (Python
        # under /root, say), 'none' keeps root, as the docs warn.
        self._private_uids = os.geteuid() == 0 and (
            self.isolation == "bwrap" or not closed_ancestors(interpreter_paths(self._python))
        )
        self._worker_source = WORKER_SOURCE_PATH.read_text(encoding="utf-8")
        super().__init__(self.options.max_workers)
        self.states = StateCache(self.options.states)
        """The workers' kept states (``state: fork``), by program."""

    def _with_limits(self, job: CodeJob) -> CodeJob:
        """The job with every limit it leaves unset taken from this verifier's options."""
        if job.timeout_s is not None and job.memory_mb is not None and job.max_output_bytes is not None:
            return job
        return CodeJob(
            job.program,
            self.options.timeout_s if job.timeout_s is None else job.timeout_s,
            self.options.memory_mb if job.memory_mb is None else job.memory_mb,
            self.options.max_output_bytes if job.max_output_bytes is None else job.max_output_bytes,
        )

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        """One verdict per job, in order; at most ``max_workers`` jobs run at once (per event loop)."""
        todo = [self._with_limits(job) for job in jobs]
        verdicts: list[Verdict | None] = [None] * len(todo)
        if self.options.inline:
            await run_inline(self, todo, [i for i, job in enumerate(todo) if may_inline(job)], verdicts)
        forked = [i for i, verdict in enumerate(verdicts) if verdict is None]
        self.counts["inline"] += len(todo) - len(forked)
        self.counts["forked"] += len(forked)
        run_one = self._run_stateful if self.options.state == "fork" else self._run_one
        results = await asyncio.gather(*(run_one(todo[i]) for i in forked), return_exceptions=True)
        for i, result in zip(forked, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            verdicts[i] = result
        return verdicts  # type: ignore[return-value]

    async def _run_one(self, job: CodeJob, keep: bool = False) -> Verdict:
        """Run one job (its limits already filled in by `run`) as a forked child; ``keep``: from scratch under
        ``state: fork``, its state kept if it runs ok."""
        async with self.semaphore():
            worker = await self.acquire()
            try:
                if not keep:
                    return await self._forked(worker, job)
                state = StateJob(whole=job, keep="__future__" not in job.program)
                verdict = await self._forked(worker, job, state)
                self._keep(worker, job.program, state, verdict, 0.0)
                return verdict
            finally:
                self.release(worker)

    async def _forked(self, worker: Worker, job: CodeJob, state: StateJob | None = None) -> Verdict:
        return await run_forked(
            worker,
            job,
            file_mb=self.options.max_file_mb,
            open_files=self.options.max_open_files,
            processes=self.options.max_processes,
            isolation=self.isolation,
            python=self._python,
            state=state,
        )

    async def _run_stateful(self, job: CodeJob) -> Verdict:
        """``state: fork`` (`rstar_sandbox.states`): fork the state of the longest earlier program this one
        continues, if a worker keeps one; else run the whole program, and keep its state."""
        found = self.states.lookup(job.program)
        if found is not None:
            try:
                verdict = await self._run_from_state(job, *found)
            finally:
                self.states.unpin(found[1])
            if verdict is not None:
                return verdict
        self.states.counts["from_scratch"] += 1
        return await self._run_one(job, keep=True)

    async def _run_from_state(self, job: CodeJob, parent: str, kept: Kept) -> Verdict | None:
        """The job's new lines in a fork of ``kept``; None when that cannot be done exactly (run from scratch)."""
        step = step_job(job, parent, kept)
        if step is None:
            return None
        new, skip, line_offset = step
        async with self.semaphore():
            if not await self.acquire_this(kept.worker):
                self.states.forget(parent)
                return None
            try:
                prefix = kept.output[: len(kept.output) - kept.display]
                state = StateJob(job, from_state=kept.state_id, skip=skip, line_offset=line_offset, prefix=prefix)
                verdict = await self._forked(kept.worker, new, state)
                if state.fallback:  # the new lines do not compile on their own; the state stays good
                    self.states.counts["fallback"] += 1
                    return None
                if state.lost:
                    self.states.counts["lost"] += 1
                    self.states.forget(parent)
                    return None
                self.states.counts["from_state"] += 1
                if state.statements == 0 and verdict.status == "ok":  # only comments: the parent's value still shows
                    state.output, state.display = kept.output, kept.display
                    verdict = Verdict("ok", decode_output(kept.output, complete=True), "", verdict.duration_s)
                self._keep(kept.worker, job.program, state, verdict, kept.elapsed_s)
                return verdict
            finally:
                self.release(kept.worker)

    def _keep(self, worker: Worker, program: str, state: StateJob, verdict: Verdict, elapsed_s: float) -> None:
        """Note the state the worker kept for ``program``, and have it drop the ones that no longer fit."""
        if state.state_id is None:
            return
        if verdict.status != "ok":  # the worker keeps only states whose program reported ok; never trust the rest
            worker.drop_states([state.state_id])
            return
        display = min(state.display, len(state.output))  # what the job reported: never more than it printed
        kept = Kept(worker, state.state_id, state.output, display, elapsed_s + verdict.duration_s)
        drop = self.states.add(program, kept)
        if drop:
            worker.drop_states(drop)

    # --- workers ------------------------------------------------------------------------------

    def _worker_config(self, uid: int | None, scratch: Sequence[str]) -> dict[str, Any]:
        return {
            "preload": list(self.options.preload),
            "env": child_env(),
            "uid": uid,
            "scratch": list(scratch),
            "retire_growth_bytes": self._retire_growth_bytes,
            "inline": self.options.inline,
            # One more than the cache holds: the verifier drops the least recently used one after a new one is kept.
            "states": self.options.states + 1 if self.options.state == "fork" else 0,
        }

    _retire_growth_bytes = 256 * 1024 * 1024
    """A worker whose peak memory grew by this much since it started is replaced after its batch."""

    def start_worker(self) -> Worker:
        uid = private_uid() if self._private_uids else None
        config = self._worker_config(uid, SANDBOX_SCRATCH if self.isolation == "bwrap" else ())
        command = [self._python, "-s", "-B", "-X", "utf8", "-c", self._worker_source]
        cgroup = Cgroup.create(self.options.worker_memory_mb) if self.options.worker_memory_mb else None
        try:
            if self.isolation != "bwrap":
                return Worker.start(command, config, cgroup=cgroup)
            prefix = bwrap_prefix(self._binds, self.options.tmpfs_mb)
            return Worker.start(command, config, prefix, seccomp_program(), cgroup)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise


# --- isolation and interpreter -----------------------------------------------------------------------


_warned = False
"""Whether the warning about ``isolation: none`` was given (once per process)."""


def _choose_isolation(isolation: Isolation) -> Literal["bwrap", "none"]:
    """``isolation`` as asked; a sandbox that cannot run here is an error (fail closed), never a fallback."""
    global _warned
    if isolation == "none":
        if not _warned:
            _warned = True
            log.warning(
                "subprocess verifier: isolation 'none': model-written code runs with rlimits only. That is NOT a "
                "security boundary: it can read and write your files and use the network. Install bubblewrap "
                "(apt-get install bubblewrap) or use the docker verifier."
            )
        return "none"
    if not bwrap_works():  # looked up in this module, where tests replace it
        raise RstarError(
            "subprocess verifier: bubblewrap is not installed or cannot create namespaces here, and the sandbox "
            "does not run without it. Install it (Debian/Ubuntu: apt-get install bubblewrap), use the docker "
            "verifier, or, for trusted code only, set the verifier's isolation to 'none' (rlimits only)"
        )
    return "bwrap"


def _resolve_python(python: str | None) -> str:
    if python is None:
        if not sys.executable:
            raise RstarError("subprocess verifier: cannot tell which Python runs rstar; set the 'python' option")
        return sys.executable
    found = shutil.which(python)
    if found is None:
        raise RstarError(f"subprocess verifier: python {python!r} is not an executable file or a command on PATH")
    return found
