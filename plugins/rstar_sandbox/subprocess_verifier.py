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

This module is the component: its options, the choice of isolation (fail closed: never a silent fallback)
and `SubprocessVerifier.run`, which sends each job inline or forked. The rest is in modules of its own:

* `rstar_sandbox.pool`: the pool of warm workers (`rstar_sandbox.pool.WorkerPool`, which this verifier
  is) and the framed protocol on each worker's control socket;
* `rstar_sandbox.isolation`: the sandbox around a worker: the bubblewrap command line, the seccomp filter,
  the memory cgroup, the worker's uid and environment;
* `rstar_sandbox.forked`: one job in a child of its own, with its deadline, output cap and verdict;
* `rstar_sandbox.inline`: batches of closed programs, one process per batch;
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

from pydantic import Field

from rstar.errors import RstarError
from rstar.options import Options
from rstar.types import CodeJob, Verdict
from rstar_sandbox.forked import run_forked
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

log = logging.getLogger(__name__)

Isolation = Literal["bwrap", "none", "auto"]


class SubprocessOptions(Options):
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
        results = await asyncio.gather(*(self._run_one(todo[i]) for i in forked), return_exceptions=True)
        for i, result in zip(forked, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            verdicts[i] = result
        return verdicts  # type: ignore[return-value]

    async def _run_one(self, job: CodeJob) -> Verdict:
        """Run one job (its limits already filled in by `run`) as a forked child."""
        async with self.semaphore():
            worker = await self.acquire()
            try:
                return await run_forked(
                    worker,
                    job,
                    file_mb=self.options.max_file_mb,
                    open_files=self.options.max_open_files,
                    processes=self.options.max_processes,
                    isolation=self.isolation,
                    python=self._python,
                )
            finally:
                self.release(worker)

    # --- workers ------------------------------------------------------------------------------

    def _worker_config(self, uid: int | None, scratch: Sequence[str]) -> dict[str, Any]:
        return {
            "preload": list(self.options.preload),
            "env": child_env(),
            "uid": uid,
            "scratch": list(scratch),
            "retire_growth_bytes": self._retire_growth_bytes,
            "inline": self.options.inline,
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
