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

From outside, the parent enforces the wall-clock deadline (it has the worker kill the job's whole
process tree, and kills the whole worker, sandbox included, when that does not happen in time), caps
the output (a verdict says ``output_limit``), and reads the verdict from a pipe separate from the
program's stdout, so what the program prints cannot pose as a verdict. A worker that dies is
replaced; `SubprocessVerifier.close` leaves no process behind. Messages to and from a worker are
framed (`rstar_sandbox.worker.send_message`), so batches and answers of any size travel whole.

Inline jobs (option ``inline``, on by default): most steps are short arithmetic, for which a fork, five
pipes and a temporary directory cost hundreds of times more than the program. So jobs go to the workers
first in batches; a worker forks one child per batch, which runs each program that an allow-list check
accepts (`rstar_sandbox.worker.closed_program`: allowed syntax, builtins and attribute names; imports of
math/cmath/Fraction only) with only the allowed builtins, its output captured and capped, a SIGALRM
deadline and a soft address-space limit, and answers ``fork`` for every other program, which then runs
as above. The verdicts are the same either way (a test compares them). A batch whose process dies or
hangs gets no verdicts from it: its unanswered jobs are forked, each judged alone.

Limits: a `rstar.types.CodeJob` may set its own ``timeout_s``, ``memory_mb`` and
``max_output_bytes``; the limits it leaves as None are the verifier's options.
"""

from __future__ import annotations

import array
import asyncio
import codecs
import collections
import concurrent.futures
import contextlib
import errno
import functools
import json
import logging
import math
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rstar.config import Options
from rstar.errors import RstarError
from rstar.types import CodeJob, Verdict, VerdictStatus
from rstar_sandbox.worker import RECORD_BYTES, clean_text, records, remove_tree

log = logging.getLogger(__name__)

WORKER_SOURCE_PATH = Path(__file__).with_name("worker.py")
STDERR_TAIL_BYTES = 4096
READ_CHUNK = 65536
DRAIN_GRACE_S = 1.0
"""After the job ends, how long to wait for its pipes to close and its directory to be removed."""
KILL_GRACE_S = 2.0
"""How long the worker has to kill a job it was told to kill before the whole worker is killed."""
START_TIMEOUT_S = 120.0
"""How long a new worker may take to import its ``preload`` modules."""
DEFAULT_PRELOAD = ("math", "fractions", "sympy", "numpy")

_MEMORY_HINTS = ("memoryerror", "cannot allocate memory", "bad_alloc", "out of memory", "memory allocation")
"""Lower-case phrases on stderr that tell a crash from running out of memory (e.g. OpenBLAS exits with 1)."""

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


class SubprocessVerifier:
    """Runs each `rstar.types.CodeJob` in a child forked from a warm worker; see the module docstring."""

    Options = SubprocessOptions

    def __init__(self, options: SubprocessOptions | None = None) -> None:
        self.options = options if options is not None else SubprocessOptions()
        self._python = _resolve_python(self.options.python)
        self.isolation: str = _choose_isolation(self.options.isolation)
        # What the sandbox shows of the host: the system's libraries and the interpreter's own folders, read-only.
        self._binds = _interpreter_binds(self._python)
        # Started as root, each worker switches to a uid of its own (no capabilities; RLIMIT_NPROC then counts
        # only its processes). Without bubblewrap that needs the interpreter's files reachable for others
        # (bubblewrap shows only what it binds, through folders anyone may enter); where they are not (Python
        # under /root, say), 'none' keeps root, as the docs warn.
        self._private_uids = os.geteuid() == 0 and (
            self.isolation == "bwrap" or not _closed_ancestors(_interpreter_paths(self._python))
        )
        self._init_pool()

    def _init_pool(self) -> None:
        self._worker_source = WORKER_SOURCE_PATH.read_text(encoding="utf-8")
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._finalizer = weakref.finalize(self, _close_workers, self._workers)
        self.counts: collections.Counter[str] = collections.Counter()
        """Jobs run ``inline`` and ``forked``, and ``workers_started`` (for benchmarks and tests)."""

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
            await self._run_inline(todo, [i for i, job in enumerate(todo) if _may_inline(job)], verdicts)
        forked = [i for i, verdict in enumerate(verdicts) if verdict is None]
        self.counts["inline"] += len(todo) - len(forked)
        self.counts["forked"] += len(forked)
        results = await asyncio.gather(*(self._run_one(todo[i]) for i in forked), return_exceptions=True)
        for i, result in zip(forked, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            verdicts[i] = result
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        """Kill every worker and every job still running (their verdicts say ``killed``).

        The verifier stays usable: a later `run` starts new workers.
        """
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
        _close_workers(workers)

    # --- workers ------------------------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.options.max_workers)
            return sem

    async def _acquire(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self._workers.discard(worker)
                worker.kill()
        loop = asyncio.get_running_loop()
        worker = await loop.run_in_executor(_starter(), self._start_worker)
        with self._lock:
            self._workers.add(worker)
        self.counts["workers_started"] += 1
        return worker

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
        worker.kill()

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive() and worker in self._workers:
                self._idle.append(worker)
                return
            self._workers.discard(worker)
        worker.kill()

    def _worker_config(self, uid: int | None, scratch: Sequence[str]) -> dict[str, Any]:
        return {
            "preload": list(self.options.preload),
            "env": _child_env(),
            "uid": uid,
            "scratch": list(scratch),
            "retire_growth_bytes": self._retire_growth_bytes,
            "inline": self.options.inline,
        }

    _retire_growth_bytes = 256 * 1024 * 1024
    """A worker whose peak memory grew by this much since it started is replaced after its batch."""

    def _start_worker(self) -> _Worker:
        uid = _private_uid() if self._private_uids else None
        config = self._worker_config(uid, SANDBOX_SCRATCH if self.isolation == "bwrap" else ())
        command = [self._python, "-s", "-B", "-X", "utf8", "-c", self._worker_source]
        cgroup = _Cgroup.create(self.options.worker_memory_mb) if self.options.worker_memory_mb else None
        try:
            if self.isolation != "bwrap":
                return _Worker.start(command, config, cgroup=cgroup)
            prefix = _bwrap_prefix(self._binds, self.options.tmpfs_mb)
            return _Worker.start(command, config, prefix, seccomp_program(), cgroup)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise

    # --- inline jobs ---------------------------------------------------------------------------

    async def _run_inline(self, jobs: list[CodeJob], todo: list[int], verdicts: list[Verdict | None]) -> None:
        """Offer the jobs ``todo`` to the workers in batches; fill in the verdicts of those run inline."""
        queue = collections.deque(todo)
        lanes = min(self.options.max_workers, len(todo))
        size = max(1, min(INLINE_BATCH_JOBS, -(-len(todo) // lanes)))  # an even share each: one batch per lane
        await asyncio.gather(*(self._inline_lane(jobs, queue, size, verdicts) for _ in range(lanes)))

    async def _inline_lane(
        self, jobs: list[CodeJob], queue: collections.deque[int], size: int, verdicts: list[Verdict | None]
    ) -> None:
        async with self._semaphore():
            worker: _Worker | None = None
            refusals: collections.Counter[int] = collections.Counter()
            try:
                while queue:
                    if worker is None:
                        worker = await self._acquire()
                    batch: list[int] = []
                    room = INLINE_BATCH_CHARS
                    while queue and len(batch) < size and (not batch or len(jobs[queue[0]].program) <= room):
                        room -= len(jobs[queue[0]].program)
                        batch.append(queue.popleft())
                    outcome = await self._inline_batch(worker, jobs, batch, queue, verdicts)
                    if outcome == "refused":  # the worker could not even take the batch: bounded retries
                        refusals[batch[0]] += 1
                        if refusals[batch[0]] >= WORKER_TRIES:
                            queue.remove(batch[0])
                            verdicts[batch[0]] = Verdict("error", "", _refused_error(), 0.0)
                    if outcome != "healthy":
                        self._discard(worker)  # it died, was killed, or asked to retire: replace it
                        worker = None
            finally:
                if worker is not None:
                    self._release(worker)

    async def _inline_batch(
        self,
        worker: _Worker,
        jobs: list[CodeJob],
        batch: list[int],
        queue: collections.deque[int],
        verdicts: list[Verdict | None],
    ) -> Literal["healthy", "retire", "lost", "refused"]:
        """Run one batch on ``worker``: "healthy" when it may take the next, else why it must be replaced. Jobs
        it could not take are back in ``queue`` ("refused"); jobs it did not answer keep no verdict (forked)."""
        loop = asyncio.get_running_loop()
        fields = ("program", "timeout_s", "memory_mb", "max_output_bytes")
        payload = json.dumps({"inline": [{f: getattr(jobs[i], f) for f in fields} for i in batch]}).encode()
        sock = worker.control
        waiting = list(batch)  # answered in order, in groups
        try:
            sock.setblocking(False)
            try:
                for record in records(payload):
                    await loop.sock_sendall(sock, record)
            except OSError:  # the worker died before it got the batch
                worker.kill()
                queue.extendleft(reversed(waiting))
                return "refused"
            started = time.monotonic()
            while True:
                # Answers come in groups (`rstar_sandbox.worker.Answers`), but never held longer than a few ms: the
                # job running is taken to be the first waiting. Where it is a later one with a longer time limit,
                # the worker may be given up too early; that costs time, not truth (the jobs are then forked).
                timeout = (jobs[waiting[0]].timeout_s or 0.0) + INLINE_KILL_GRACE_S if waiting else KILL_GRACE_S
                messages, closed = await _receive(sock, worker.partial, started + timeout)
                for message in messages:
                    if not waiting:
                        done = _json_object(message)
                        if done is not None and done.get("done"):
                            return "retire" if done.get("retire") else "healthy"
                        closed = True  # not what a worker sends: trust it no further
                        break
                    answers = _inline_answers(message, len(waiting))
                    if answers is None:
                        closed = True
                        break
                    started = time.monotonic()
                    for answer, output in answers:
                        index = waiting.pop(0)
                        if not answer.get("fork"):
                            verdicts[index] = _inline_verdict(jobs[index], answer, output)
                if closed or not messages:
                    # It died, or is stuck past every deadline (in C code, or catching the alarm). Which of the
                    # jobs it had not answered did that is not known (answers travel in groups), so none gets a
                    # verdict here: each is forked and gets its own.
                    worker.kill()
                    return "lost"
        finally:
            if not worker.closed:
                with contextlib.suppress(OSError):
                    sock.setblocking(True)

    # --- one job ------------------------------------------------------------------------------

    async def _run_one(self, job: CodeJob) -> Verdict:
        """Run one job (its limits already filled in by `run`) as a forked child."""
        async with self._semaphore():
            worker = await self._acquire()
            try:
                return await self._run_on(worker, job)
            finally:
                self._release(worker)

    async def _run_on(self, worker: _Worker, job: CodeJob) -> Verdict:
        assert job.timeout_s is not None and job.memory_mb is not None and job.max_output_bytes is not None
        cpu_s = _cpu_seconds(job)
        limits = {
            "memory_mb": job.memory_mb,
            "cpu_s": cpu_s,
            "file_mb": self.options.max_file_mb,
            "open_files": self.options.max_open_files,
            "processes": self.options.max_processes,
        }
        pipes = [os.pipe() for _ in range(5)]  # stdin, stdout, stderr, verdict channel, status
        ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0], pipes[4][0]]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1], pipes[4][1]]
        start = time.monotonic()
        fds = _FdSet(ours)
        try:
            try:
                worker.send(limits, theirs)
            finally:
                for fd in theirs:
                    os.close(fd)
            return await self._supervise(worker, job, fds, start)
        except OSError:  # the worker died before it got the job
            worker.kill()
            return Verdict("killed", "", "ProcessError: the sandbox worker died", time.monotonic() - start)
        finally:
            fds.close_all()

    async def _supervise(self, worker: _Worker, job: CodeJob, fds: _FdSet, start: float) -> Verdict:
        assert job.timeout_s is not None and job.max_output_bytes is not None
        stdin_w, stdout_r, stderr_r, channel_r, status_r = fds.fds
        loop = asyncio.get_running_loop()
        output = bytearray()
        overflow = False
        stderr_tail = bytearray()
        exit_code: int | None = None
        exited: asyncio.Future[None] = loop.create_future()
        status_buffer = bytearray()
        workdir = ""
        limit = job.max_output_bytes

        def on_stdout(chunk: bytes) -> bool:
            nonlocal overflow
            room = limit - len(output)
            if len(chunk) > room:
                output.extend(chunk[:room])
                overflow = True
                worker.kill_job()
                return False
            output.extend(chunk)
            return True

        def on_stderr(chunk: bytes) -> bool:
            stderr_tail.extend(chunk)
            del stderr_tail[:-STDERR_TAIL_BYTES]
            return True

        def on_status(chunk: bytes) -> bool:
            nonlocal exit_code, workdir
            status_buffer.extend(chunk)
            *lines, rest = bytes(status_buffer).split(b"\n")
            status_buffer[:] = rest
            for line in lines:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict) and "pid" in message:
                        worker.job_pid = int(message["pid"])
                        workdir = str(message.get("workdir", ""))
                    if isinstance(message, dict) and "exit" in message:
                        exit_code = int(message["exit"])
                        _resolve(exited)
            return True

        feed = asyncio.ensure_future(_write_all(stdin_w, job.program.encode("utf-8", "replace"), fds.close))
        readers = [
            asyncio.ensure_future(_read_all(stdout_r, on_stdout)),
            asyncio.ensure_future(_read_all(stderr_r, on_stderr)),
        ]
        status_task = asyncio.ensure_future(_read_all(status_r, on_status))
        status_task.add_done_callback(lambda _: _resolve(exited))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=job.timeout_s)
            except asyncio.TimeoutError:
                timed_out = True
                worker.kill_job()
                await asyncio.wait([exited], timeout=KILL_GRACE_S)
            duration = time.monotonic() - start
            # The worker closes the status pipe once the job's processes are gone and its directory removed.
            await asyncio.wait([status_task], timeout=KILL_GRACE_S if exit_code is not None else DRAIN_GRACE_S)
            if not status_task.done() or exit_code is None:
                worker.kill()  # hung or dead: replace it (killing it kills its whole sandbox)
            await asyncio.wait(readers, timeout=DRAIN_GRACE_S)
        finally:
            for task in [feed, *readers, status_task]:
                task.cancel()
            await asyncio.gather(feed, *readers, status_task, return_exceptions=True)
            worker.job_pid = None
            if worker.closed and self.isolation == "none" and workdir.startswith(tempfile.gettempdir()):
                remove_tree(workdir)  # the worker died before removing it (in bubblewrap, /tmp dies with it)

        text = _decode(bytes(output), complete=not overflow)
        if overflow:
            return Verdict("output_limit", text, _output_limit_error(job), duration)
        if timed_out:
            return Verdict("timeout", text, _timeout_error(job), duration)
        ready, reported = _read_channel(channel_r)
        if reported is not None and exit_code == 0:  # a program that forged a verdict and then crashed: killed
            status, error = reported
            return Verdict(status, text, error, duration)
        return self._abnormal_end(worker, exit_code, job, text, ready, bytes(stderr_tail), duration)

    def _abnormal_end(
        self, worker: _Worker, code: int | None, job: CodeJob, text: str, ready: bool, stderr: bytes, duration: float
    ) -> Verdict:
        """The job ended without reporting a verdict: killed, crashed, or the sandbox is broken."""
        if worker.retired:
            return Verdict("killed", text, "ProcessError: killed because the verifier was closed", duration)
        if code is None:
            return Verdict("killed", text, "ProcessError: the sandbox worker died during the job", duration)
        if code < 0 and -code == signal.SIGXCPU:
            return Verdict(
                "timeout",
                text,
                f"TimeoutError: CPU time limit of {_cpu_seconds(job)} s exceeded",
                duration,
            )
        if not ready:
            if code < 0:
                return Verdict(
                    "killed", text, f"ProcessError: killed by {_signal_name(-code)} before starting", duration
                )
            detail = stderr.decode("utf-8", "replace").strip() or f"exit code {code}"
            raise RstarError(
                f"subprocess verifier: the sandbox worker failed to start a job ({self._python}): {detail}"
            )
        stderr_text = stderr.decode("utf-8", "replace").lower()
        if any(hint in stderr_text for hint in _MEMORY_HINTS):
            return Verdict("memory", text, f"MemoryError: memory limit of {job.memory_mb} MiB exceeded", duration)
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return Verdict("killed", text, f"ProcessError: the program {how} before finishing", duration)


class _Worker:
    """One warm worker process (inside bubblewrap or not) and the socket that hands it jobs."""

    def __init__(self, process: subprocess.Popen[bytes] | None, control: socket.socket, isolation: str) -> None:
        self.process = process
        self.control = control
        self.isolation = isolation
        self.closed = False
        self.retired = False  # killed by the verifier's close()
        self.job_pid: int | None = None  # the running job's pid, as the worker sees it
        self.partial = bytearray()  # the records of a message not yet complete
        self.cgroup: _Cgroup | None = None

    @classmethod
    def start(
        cls,
        command: list[str],
        config: dict[str, Any],
        prefix: Sequence[str] = (),
        seccomp: bytes | None = None,
        cgroup: _Cgroup | None = None,
    ) -> _Worker:
        """Start ``command`` (behind the sandbox's ``prefix`` and ``seccomp`` filter, if any, in ``cgroup``); wait
        for ``ready``."""
        # The worker's own stderr goes to a file, so that it can never block on it; read only if it fails to start.
        with tempfile.TemporaryFile() as errors:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            passed = [theirs.fileno()]
            if prefix and seccomp is not None:  # bubblewrap reads the filter from a pipe
                filter_r, filter_w = os.pipe()
                os.write(filter_w, seccomp)
                os.close(filter_w)
                passed.append(filter_r)
                prefix = [prefix[0], "--seccomp", str(filter_r), *prefix[1:]]
            try:
                argv = [*prefix, *command, str(theirs.fileno()), json.dumps(config)]
                if cgroup is not None:  # enter it before anything else runs: all that starts below stays in it
                    argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup.procs, *argv]
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    pass_fds=passed,
                    env=_child_env(),
                    cwd="/",
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise RstarError(f"subprocess verifier: cannot start {command[0]!r}: {exc}") from exc
            finally:
                for fd in passed:
                    os.close(fd)
            if _hello(ours) is None:
                _kill_process(process)
                ours.close()
                errors.seek(0)
                detail = errors.read().decode("utf-8", "replace").strip()[-2000:]
                raise RstarError(
                    f"subprocess verifier: the sandbox worker failed to start: {detail or 'no reason given'}"
                )
        worker = cls(process, ours, "bwrap" if prefix else "none")
        worker.cgroup = cgroup
        return worker

    def alive(self) -> bool:
        """Not killed, and its control socket has no pending end (a dead worker's socket reads as closed)."""
        if self.closed or (self.process is not None and self.process.poll() is not None):
            return False
        with contextlib.suppress(OSError, ValueError):
            readable, _, _ = select.select([self.control], [], [], 0)
            return not readable
        return False

    def send(self, limits: dict[str, int], fds: list[int]) -> None:
        payload = b"." + json.dumps(limits).encode()
        self.control.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])

    def kill_job(self) -> None:
        """Have the worker kill the running job's whole tree; kill its process group from here too where we can."""
        with contextlib.suppress(OSError):
            self.control.send(KILL_MESSAGE)
        if self.isolation == "none" and self.job_pid is not None:
            _kill_group(self.job_pid)

    def kill(self) -> None:
        """Kill the worker, its sandbox and every job in it (in a PID namespace they all die with it)."""
        self.closed = True
        if self.isolation == "none" and self.job_pid is not None:
            with contextlib.suppress(OSError):
                self.control.send(KILL_MESSAGE)
            _kill_group(self.job_pid)
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)
        self.control.close()
        if self.process is not None:
            _kill_process(self.process)
        if self.cgroup is not None:
            self.cgroup.remove()


class _Cgroup:
    """A memory cgroup of one worker: it, its sandbox and every process of its jobs share ``memory_mb``.

    RLIMIT_AS bounds each process; a job with many processes (up to ``max_processes``) or memory no process maps
    (pipes, a tmpfs) is bounded here. Made where rstar runs as root and finds a memory controller it may write:
    cgroup v2 (a group next to the root's children) or v1 (below rstar's own memory group).
    """

    def __init__(self, path: str, procs: str) -> None:
        self.path = path
        self.procs = procs

    @classmethod
    def create(cls, memory_mb: int) -> _Cgroup | None:
        base = _cgroup_base()
        if base is None:
            return None
        version, parent = base
        path = os.path.join(parent, f"rstar-worker-{os.getpid()}-{secrets.token_hex(4)}")
        limit = str(memory_mb * 1024 * 1024)
        try:
            os.mkdir(path)
            if version == 2:
                _write(os.path.join(path, "memory.max"), limit)
                with contextlib.suppress(OSError):
                    _write(os.path.join(path, "memory.swap.max"), "0")
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), limit)
                with contextlib.suppress(OSError):
                    _write(os.path.join(path, "memory.memsw.limit_in_bytes"), limit)
        except OSError as exc:
            log.debug("subprocess verifier: no memory cgroup for the worker (%s)", exc)
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None
        return cls(path, os.path.join(path, "cgroup.procs"))

    def remove(self) -> None:
        """Remove the group once its processes are gone (they are being killed: wait up to a second)."""
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@functools.cache
def _cgroup_base() -> tuple[int, str] | None:
    """Where per-worker memory groups can be made: (cgroup version, parent folder), or None."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return None
    root = "/sys/fs/cgroup"
    try:
        if os.path.exists(os.path.join(root, "cgroup.controllers")):  # v2, unified
            if "memory" not in Path(root, "cgroup.controllers").read_text().split():
                return None
            parent = os.path.join(root, "rstar-sandbox")
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(root, "cgroup.subtree_control"), "+memory")
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
            return 2, parent
        for line in Path("/proc/self/cgroup").read_text().splitlines():  # v1: below our own memory group
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                parent = os.path.join(root, "memory", path.lstrip("/"))
                if os.access(parent, os.W_OK) and os.path.exists(os.path.join(parent, "memory.limit_in_bytes")):
                    return 1, parent
    except OSError as exc:
        log.debug("subprocess verifier: no memory cgroups (%s)", exc)
    return None


KILL_MESSAGE = b'.{"kill": true}'


def _hello(sock: socket.socket) -> dict[str, Any] | None:
    """The worker's first message (``ready``), or None when it closed or said nothing in time."""
    sock.settimeout(START_TIMEOUT_S)
    try:
        record = sock.recv(RECORD_BYTES)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    hello = _json_object(record[1:]) if record[:1] == b"." else None
    return hello if hello is not None and hello.get("ready") else None


@functools.cache
def _starter() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that starts every worker. bubblewrap's --die-with-parent follows the thread that started
    it, so that thread must live as long as rstar does (an event loop's default executor does not)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rstar-sandbox-starter")


def _close_workers(workers: Any) -> None:
    for worker in list(workers):
        worker.retired = True
        worker.kill()


# --- inline jobs: size limits, answers ---------------------------------------------------------------

INLINE_BATCH_JOBS = 512
"""Most jobs in one inline batch (the lanes split smaller queues evenly)."""
INLINE_BATCH_CHARS = 256 * 1024
"""Most program text in one inline batch; a longer program is forked."""
INLINE_MAX_OUTPUT_BYTES = 4 * 1024 * 1024
"""Jobs that may print more than this are forked (an inline answer is held in memory whole)."""
INLINE_KILL_GRACE_S = 0.5
"""How long after its deadline an inline program that its worker's alarm did not stop (C code) may run."""
INLINE_STATUSES = frozenset(["ok", "error", "memory", "timeout", "output_limit", "killed"])
WORKER_TRIES = 3
"""Workers that may fail to take the same job (die before it reaches them) before the job gets an ``error``."""


def _refused_error() -> str:
    return f"ProcessError: {WORKER_TRIES} sandbox workers in a row died before they could take this job"


def _may_inline(job: CodeJob) -> bool:
    """Whether the worker may be offered ``job`` inline (it still checks that the program is closed)."""
    return (
        len(job.program) <= INLINE_BATCH_CHARS
        and job.max_output_bytes is not None
        and job.max_output_bytes <= INLINE_MAX_OUTPUT_BYTES
        and (job.program.isascii() or _is_utf8(job.program))  # a forked job reads lone surrogates as U+FFFD
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _timeout_error(job: CodeJob) -> str:
    return f"TimeoutError: time limit of {job.timeout_s:g} s exceeded"


def _output_limit_error(job: CodeJob) -> str:
    return f"OutputLimitError: output exceeded {job.max_output_bytes} bytes"


def _inline_verdict(job: CodeJob, answer: dict[str, Any], output: bytes) -> Verdict:
    status = answer["status"]
    duration = float(answer.get("duration_s", 0.0))
    assert job.max_output_bytes is not None
    overflow = status == "output_limit" or len(output) > job.max_output_bytes
    text = _decode(output[: job.max_output_bytes], complete=False) if overflow else output.decode("utf-8", "replace")
    if overflow:
        return Verdict("output_limit", text, _output_limit_error(job), duration)
    if status == "timeout":
        return Verdict("timeout", text, _timeout_error(job), duration)
    return Verdict(status, text, clean_text(str(answer.get("error", ""))), duration)


def _inline_answers(message: bytes, most: int) -> list[tuple[dict[str, Any], bytes]] | None:
    """The answers in one message of an inline batch, or None when it is not what a worker sends."""
    line, _, outputs = message.partition(b"\n")
    try:
        headers = json.loads(line)
    except ValueError:
        return None
    if not isinstance(headers, list) or not 0 < len(headers) <= most:
        return None
    answers, offset = [], 0
    for header in headers:
        if not isinstance(header, dict) or not (header.get("fork") or header.get("status") in INLINE_STATUSES):
            return None
        size = header.get("n")
        if not isinstance(size, int) or size < 0 or offset + size > len(outputs):
            return None
        answers.append((header, outputs[offset : offset + size]))
        offset += size
    return answers if offset == len(outputs) else None


def _json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` as a JSON object, or None when it is not one."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _receive(sock: socket.socket, partial: bytearray, deadline: float) -> tuple[list[bytes], bool]:
    """The complete messages waiting on ``sock`` (waiting for one until ``deadline``, monotonic), and whether it
    closed. ``partial`` holds the records of a message still to be completed, from one call to the next."""
    messages: list[bytes] = []

    def drain() -> bool:
        while True:
            try:
                record = sock.recv(RECORD_BYTES)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if record[:1] not in (b"+", b"."):  # closed (empty), or not a record: trust it no further
                return True
            partial.extend(record[1:])
            if record[:1] == b".":
                messages.append(bytes(partial))
                partial.clear()

    while True:
        closed = drain()
        timeout = deadline - time.monotonic()
        if messages or closed or timeout <= 0:
            return messages, closed
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(_wait_fd(sock.fileno(), writable=False), timeout)


# --- reading and writing pipes from any event loop --------------------------------------------------


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait_fd(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _read_all(fd: int, sink: Callable[[bytes], bool]) -> None:
    """Read ``fd`` to its end (or until ``sink`` returns False), chunk by chunk."""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            await _wait_fd(fd, writable=False)
            continue
        if not chunk or not sink(chunk):
            return


class _FdSet:
    """Our ends of a job's pipes; each is closed exactly once (a second close could hit a reused number)."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = list(fds)
        self._open = set(fds)

    def close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                self.close(fd)


async def _write_all(fd: int, data: bytes, close: Callable[[int], None]) -> None:
    """Write ``data`` to ``fd``, then close it (through ``close``) so the reader sees its end."""
    os.set_blocking(fd, False)
    try:
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                await _wait_fd(fd, writable=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the job ended before reading everything; its verdict says why
    finally:
        with contextlib.suppress(OSError):
            close(fd)


# --- isolation ------------------------------------------------------------------------------------


SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""The system's programs and libraries, shown read-only in the sandbox (a symbolic link stays one)."""
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf")
"""What a Python process reads of /etc; nothing else of it is shown."""
SANDBOX_SCRATCH = ("/tmp", "/dev/shm", "/dev/mqueue")
"""The places a job can write to in a sandbox; the worker empties them after every job."""


def _bwrap_prefix(binds: Sequence[str] = (), tmpfs_mb: int = 256) -> list[str]:
    """bubblewrap: only the system's libraries and the interpreter's folders (``binds``), read-only; fresh
    /dev and /proc; a private /tmp of ``tmpfs_mb`` MiB; no network; own PID and IPC namespaces; dies with rstar.

    Nothing else of the host is there: no home or repository folders, no /run (so no Docker socket), no /etc
    but what the dynamic loader and Python read. Folders on the way to a bound path are made passable for the
    worker's unprivileged uid (mode 0755) whatever they are on the host (/root, say).
    """
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [bwrap]
    made: set[str] = set()

    def bind(path: str) -> None:
        ancestors = []
        parent = os.path.dirname(path)
        while parent not in ("/", "") and parent not in made:
            ancestors.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(ancestors):
            made.add(directory)
            args.extend(["--perms", "0755", "--dir", directory])
        args.extend(["--ro-bind", path, path])

    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            bind(path)
    for name in ETC_FILES:
        if os.path.exists(os.path.join("/etc", name)):
            bind(os.path.join("/etc", name))
    # /dev/mqueue: the IPC namespace's POSIX message queues, visible so that the worker can remove a job's
    args += ["--dev", "/dev", "--mqueue", "/dev/mqueue", "--proc", "/proc"]
    args += ["--perms", "1777", "--size", str(tmpfs_mb * 1024 * 1024)]
    args += ["--tmpfs", "/tmp"]
    covered = [p for p in SYSTEM_PATHS if os.path.isdir(p) and not os.path.islink(p)]
    for path in _outermost(binds):
        if not any(path == c or path.startswith(c + os.sep) for c in covered):
            bind(path)
    args += ["--die-with-parent", "--new-session", "--chdir", "/"]
    if os.geteuid() == 0:
        # No user namespace (it would map the worker to root outside): the worker switches to a uid of its own
        # as its first act, which needs these two capabilities; that switch drops them and every other one.
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-all"]
    return args


# A seccomp filter (classic BPF, x86-64) for everything in the sandbox: no System V IPC or POSIX message queues
# (memory outside any rlimit that outlives a job), no memfd (the same), no new namespaces (a job could mount its
# own unbounded tmpfs in a user namespace of its own), no kernel keyrings (shared by a uid's processes), no
# tracing, BPF, perf events, userfaultfd or io_uring (kernel attack surface a step never needs).
SECCOMP_DENIED = {
    29: "shmget",
    64: "semget",
    68: "msgget",
    240: "mq_open",
    319: "memfd_create",
    272: "unshare",
    308: "setns",
    165: "mount",
    166: "umount2",
    155: "pivot_root",
    248: "add_key",
    249: "request_key",
    250: "keyctl",
    101: "ptrace",
    310: "process_vm_readv",
    311: "process_vm_writev",
    321: "bpf",
    298: "perf_event_open",
    323: "userfaultfd",
    425: "io_uring_setup",
}
"""x86-64 system call numbers refused with EPERM."""
CLONE_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_LOAD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def seccomp_program() -> bytes | None:
    """The filter above as the ``struct sock_filter`` array bubblewrap's ``--seccomp`` reads; None off x86-64."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    code: list[tuple[int, int, int, int]] = [
        (_LOAD, 0, 0, 4),  # A = seccomp_data.arch
        (_JEQ, 1, 0, 0xC000003E),  # AUDIT_ARCH_X86_64: go on; any other ABI: kill
        (_RET, 0, 0, _KILL),
        (_LOAD, 0, 0, 0),  # A = seccomp_data.nr
        (_JGE, 0, 1, 0x40000000),  # the x32 ABI's numbers
        (_RET, 0, 0, _ERRNO | errno.ENOSYS),
        (_JEQ, 0, 1, 435),  # clone3: ENOSYS, so that the C library falls back to clone, whose flags are seen here
        (_RET, 0, 0, _ERRNO | errno.ENOSYS),
        (_JEQ, 0, 4, 56),  # clone: refused when it asks for a new namespace
        (_LOAD, 0, 0, 16),  # A = low 32 bits of args[0] (the flags)
        (_JSET, 0, 1, CLONE_NEW_NAMESPACES),
        (_RET, 0, 0, _ERRNO | errno.EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
    for number in sorted(SECCOMP_DENIED):
        code += [(_JEQ, 0, 1, number), (_RET, 0, 0, _ERRNO | errno.EPERM)]
    code.append((_RET, 0, 0, _ALLOW))
    return b"".join(struct.pack("<HBBI", op, jt, jf, k) for op, jt, jf, k in code)


def _outermost(paths: Sequence[str]) -> list[str]:
    """The existing folders among ``paths`` (resolved), without those inside another one."""
    found = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    return [p for i, p in enumerate(found) if not any(p.startswith(q + os.sep) for q in found[:i])]


@functools.cache
def bwrap_works() -> bool:
    """Whether bubblewrap is installed and can start a sandbox here (some containers forbid namespaces)."""
    if shutil.which("bwrap") is None:
        return False
    try:
        result = subprocess.run([*_bwrap_prefix(), "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


_warned = False


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
    if not bwrap_works():
        raise RstarError(
            "subprocess verifier: bubblewrap is not installed or cannot create namespaces here, and the sandbox "
            "does not run without it. Install it (Debian/Ubuntu: apt-get install bubblewrap), use the docker "
            "verifier, or, for trusted code only, set the verifier's isolation to 'none' (rlimits only)"
        )
    return "bwrap"


# --- helpers ----------------------------------------------------------------------------------------


def _interpreter_paths(python: str) -> list[str]:
    """What a job's interpreter reads: its own directory and, when it is rstar's, every import path."""
    paths = [os.path.dirname(os.path.realpath(python))]
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
    return [os.path.realpath(p) for p in paths if p and os.path.isdir(p)]


def _interpreter_binds(python: str) -> list[str]:
    """The folders the interpreter needs inside the sandbox: its prefixes (a virtual environment's and its base
    installation's) and the folders of its executable, asked of the interpreter itself."""
    query = "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix]))"
    try:
        result = subprocess.run(
            [python, "-s", "-B", "-c", query], capture_output=True, timeout=60, check=True, env=_child_env()
        )
        prefixes = [str(p) for p in json.loads(result.stdout)]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise RstarError(f"subprocess verifier: cannot run the interpreter {python!r}: {exc}") from exc
    executable = os.path.dirname(os.path.abspath(python))
    return _outermost([*prefixes, executable, os.path.dirname(os.path.realpath(python))])


PRIVATE_UIDS = (2_000_000_000, 100_000_000)
"""Where the uid of each worker started as root is drawn from (first, count): far from any real account."""


def _private_uid() -> int:
    first, count = PRIVATE_UIDS
    return first + secrets.randbelow(count)


def _closed_ancestors(paths: Sequence[str]) -> dict[str, set[str]]:
    """Directories on the way to ``paths`` that others may not enter, each with the entries that lead on."""
    closed: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for depth in range(1, len(parts)):
            directory = os.path.join(*parts[:depth])
            try:
                mode = os.stat(directory).st_mode
            except OSError:
                break
            if not mode & stat.S_IXOTH and not directory.startswith(tempfile.gettempdir()):
                closed.setdefault(directory, set()).add(parts[depth])
    return closed


def _cpu_seconds(job: CodeJob) -> int:
    """The job's CPU-time limit: a second more than its wall-clock limit, which should normally fire first."""
    return math.ceil(job.timeout_s or 0) + 1


def _resolve_python(python: str | None) -> str:
    if python is None:
        if not sys.executable:
            raise RstarError("subprocess verifier: cannot tell which Python runs rstar; set the 'python' option")
        return sys.executable
    found = shutil.which(python)
    if found is None:
        raise RstarError(f"subprocess verifier: python {python!r} is not an executable file or a command on PATH")
    return found


def _child_env() -> dict[str, str]:
    """A fresh environment: nothing from the parent's (no tokens, no keys), one thread per math library."""
    return {
        "PATH": os.defpath,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # printed sets and dicts of strings come out the same on every run
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def _read_channel(fd: int) -> tuple[bool, tuple[VerdictStatus, str] | None]:
    """What the job reported: whether it got ready, and its verdict (status, error) if it sent one."""
    os.set_blocking(fd, False)
    data = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, READ_CHUNK):
            data.extend(chunk)
    lines = bytes(data).split(b"\n")
    ready = lines[0] == b"ready"
    for line in reversed(lines[1:]):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            status = message.get("status")
            if status == "ok" or status == "error" or status == "memory":
                return ready, (status, clean_text(str(message.get("error", ""))))
    return ready, None


def _decode(data: bytes, complete: bool) -> str:
    """UTF-8 text of the output; a multi-byte character cut by the output cap is dropped, not garbled."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=complete)


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _kill_process(process: subprocess.Popen[bytes]) -> None:
    _kill_group(process.pid)
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(subprocess.SubprocessError):
        process.wait(timeout=5)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
