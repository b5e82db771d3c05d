"""The ``subprocess`` step verifier: each program in a forked, resource-limited, sandboxed process.

The verifier keeps up to ``max_workers`` warm workers ("zygotes", `rstar_sandbox.worker`), each a
long-lived Python process that has imported the ``preload`` modules (math, fractions, sympy, numpy)
once and, where bubblewrap works, runs inside it: read-only root, private ``/tmp``, no network, its
own PID namespace, dying with rstar. A job goes to an idle worker, which forks one child for it; the
child starts a new session in a fresh temporary directory, drops root, limits itself (address space,
CPU time, file size, open files, processes), runs the program like a notebook cell and exits. A
forked child shares nothing with the next job's child, so no state leaks between jobs; imports the
worker made cost nothing.

From outside, the parent enforces the wall-clock deadline (it has the worker kill the job's whole
process tree, and kills the whole worker, sandbox included, when that does not happen in time), caps
the output (a verdict says ``output_limit``), and reads the verdict from a pipe separate from the
program's stdout, so what the program prints cannot pose as a verdict. A worker that dies is
replaced; `SubprocessVerifier.close` leaves no process behind.

Inline jobs (option ``inline``, on by default): most steps are short arithmetic, for which a fork, five
pipes and a temporary directory cost hundreds of times more than the program. So jobs go to the workers
first in batches; a worker runs each program that a static check proves *closed* (it can only compute
and print: no imports but math/cmath/Fraction, no dunder or private names, no attribute assignment, no
``eval``/``open``/``getattr``/``type``..., see `rstar_sandbox.worker.closed_program`) right there, in a
fresh namespace, with its output captured and capped, a SIGALRM deadline and a soft address-space
limit, and answers ``fork`` for every other program, which then runs as above. The verdicts are the
same either way (a test compares them); an inline program stuck in C code past its deadline is stopped
by killing its worker, and then what it printed before is lost.

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
import dataclasses
import functools
import json
import logging
import math
import os
import select
import shutil
import signal
import socket
import stat
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
from rstar_sandbox.worker import remove_tree

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

Isolation = Literal["auto", "bwrap", "none"]


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
        "auto", description="'bwrap' (bubblewrap sandbox), 'none' (rlimits only), or 'auto' (bwrap when it works)"
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
        description="run closed programs (they can only compute and print) in the warm worker itself instead of "
        "a forked child: same verdicts, ~100x faster on short arithmetic",
    )


class SubprocessVerifier:
    """Runs each `rstar.types.CodeJob` in a child forked from a warm worker; see the module docstring."""

    Options = SubprocessOptions

    def __init__(self, options: SubprocessOptions | None = None) -> None:
        self.options = options if options is not None else SubprocessOptions()
        self._python = _resolve_python(self.options.python)
        self.isolation: str = _choose_isolation(self.options.isolation)
        # Jobs started as root run as 'nobody' (then RLIMIT_NPROC holds and they cannot signal their worker),
        # which needs the interpreter's files readable by others: bubblewrap hides closed directories on the
        # way (e.g. /root) behind a tmpfs that shows only those paths; without it, such an install keeps root.
        self._hidden = _closed_ancestors(_interpreter_paths(self._python))
        # bubblewrap gives each worker a private /tmp: an interpreter or virtual environment that lives under
        # the temporary directory (a CI checkout, say) is bound back in, read-only.
        self._visible = _under_tmp([*_interpreter_paths(self._python), os.path.dirname(os.path.abspath(self._python))])
        self._drop_root = os.geteuid() == 0 and (self.isolation == "bwrap" or not self._hidden)
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
        return dataclasses.replace(
            job,
            timeout_s=self.options.timeout_s if job.timeout_s is None else job.timeout_s,
            memory_mb=self.options.memory_mb if job.memory_mb is None else job.memory_mb,
            max_output_bytes=self.options.max_output_bytes if job.max_output_bytes is None else job.max_output_bytes,
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

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive() and worker in self._workers:
                self._idle.append(worker)
                return
            self._workers.discard(worker)
        worker.kill()

    def _start_worker(self) -> _Worker:
        config = {"preload": list(self.options.preload), "env": _child_env(), "drop_root": self._drop_root}
        command = [self._python, "-s", "-B", "-X", "utf8", "-c", self._worker_source]
        return _Worker.start(command, config, self.isolation, self._hidden, self._visible)

    # --- inline jobs ---------------------------------------------------------------------------

    async def _run_inline(self, jobs: list[CodeJob], todo: list[int], verdicts: list[Verdict | None]) -> None:
        """Offer the jobs ``todo`` to the workers in batches; fill in the verdicts of those run inline."""
        queue = collections.deque(todo)
        lanes = min(self.options.max_workers, len(todo))
        await asyncio.gather(*(self._inline_lane(jobs, queue, lanes, verdicts) for _ in range(lanes)))

    async def _inline_lane(
        self, jobs: list[CodeJob], queue: collections.deque[int], lanes: int, verdicts: list[Verdict | None]
    ) -> None:
        async with self._semaphore():
            worker = await self._acquire()
            try:
                while queue:
                    size = max(1, min(INLINE_BATCH_JOBS, -(-len(queue) // lanes)))
                    batch: list[int] = []
                    room = INLINE_BATCH_CHARS
                    while queue and len(batch) < size and (not batch or len(jobs[queue[0]].program) <= room):
                        room -= len(jobs[queue[0]].program)
                        batch.append(queue.popleft())
                    if not await self._inline_batch(worker, jobs, batch, queue, verdicts):
                        self._release(worker)  # it died or was killed: replace it
                        worker = await self._acquire()
            finally:
                self._release(worker)

    async def _inline_batch(
        self,
        worker: _Worker,
        jobs: list[CodeJob],
        batch: list[int],
        queue: collections.deque[int],
        verdicts: list[Verdict | None],
    ) -> bool:
        """Run one batch on ``worker``; False when the worker had to be given up (unanswered jobs requeued)."""
        loop = asyncio.get_running_loop()
        fields = ("program", "timeout_s", "memory_mb", "max_output_bytes")
        payload = json.dumps({"inline": [{f: getattr(jobs[i], f) for f in fields} for i in batch]}).encode()
        sock = worker.control
        waiting = list(batch)  # the worker answers in order: the first one waiting is the one running
        healthy = True
        try:
            sock.setblocking(False)
            await loop.sock_sendall(sock, payload)
            started = time.monotonic()
            while waiting:
                job = jobs[waiting[0]]
                assert job.timeout_s is not None
                messages, closed = await _receive(sock, started + job.timeout_s + INLINE_KILL_GRACE_S)
                for message in messages:
                    header, _, output = message.partition(b"\n")
                    answer = json.loads(header)
                    index = batch[answer["i"]]
                    waiting.remove(index)
                    started = time.monotonic()
                    if answer.get("fork"):
                        continue
                    verdicts[index] = _inline_verdict(jobs[index], answer, output)
                    healthy = healthy and not answer.get("retire")
                if closed or (not messages and waiting):
                    healthy = False
                    if not closed:  # past its deadline and stuck (in C code, say): kill the worker
                        verdicts[waiting[0]] = Verdict("timeout", "", _timeout_error(job), time.monotonic() - started)
                    else:
                        verdicts[waiting[0]] = self._abnormal_end(
                            worker, None, job, "", True, b"", time.monotonic() - started
                        )
                    queue.extendleft(reversed(waiting[1:]))
                    worker.kill()
                    return False
        except OSError:  # the worker died before it got the batch
            worker.kill()
            queue.extendleft(reversed(waiting))
            return False
        finally:
            if not worker.closed:
                with contextlib.suppress(OSError):
                    sock.setblocking(True)
        return healthy

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
        if reported is not None:
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

    @classmethod
    def start(
        cls,
        command: list[str],
        config: dict[str, Any],
        isolation: str,
        hidden: dict[str, set[str]],
        visible: Sequence[str] = (),
    ) -> _Worker:
        # The worker's own stderr goes to a file, so that it can never block on it; read only if it fails to start.
        with tempfile.TemporaryFile() as errors:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                argv = [*command, str(theirs.fileno()), json.dumps(config)]
                if isolation == "bwrap":
                    argv = [*_bwrap_prefix(hidden, visible), *argv]
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    pass_fds=(theirs.fileno(),),
                    env=_child_env(),
                    cwd="/",
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise RstarError(f"subprocess verifier: cannot start {command[0]!r}: {exc}") from exc
            finally:
                theirs.close()
            ours.settimeout(START_TIMEOUT_S)
            try:
                hello = ours.recv(4096)
            except OSError:
                hello = b""
            if not hello:
                _kill_process(process)
                ours.close()
                errors.seek(0)
                detail = errors.read().decode("utf-8", "replace").strip()[-2000:]
                raise RstarError(
                    f"subprocess verifier: the sandbox worker failed to start: {detail or 'no reason given'}"
                )
        ours.settimeout(None)
        return cls(process, ours, isolation)

    def alive(self) -> bool:
        """Not killed, and its control socket has no pending end (a dead worker's socket reads as closed)."""
        if self.closed or (self.process is not None and self.process.poll() is not None):
            return False
        with contextlib.suppress(OSError, ValueError):
            readable, _, _ = select.select([self.control], [], [], 0)
            return not readable
        return False

    def send(self, limits: dict[str, int], fds: list[int]) -> None:
        payload = json.dumps(limits).encode()
        self.control.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])

    def kill_job(self) -> None:
        """Have the worker kill the running job's whole tree; kill its process group from here too where we can."""
        with contextlib.suppress(OSError):
            self.control.send(b'{"kill": true}')
        if self.isolation == "none" and self.job_pid is not None:
            _kill_group(self.job_pid)

    def kill(self) -> None:
        """Kill the worker, its sandbox and every job in it (in a PID namespace they all die with it)."""
        self.closed = True
        if self.isolation == "none" and self.job_pid is not None:
            with contextlib.suppress(OSError):
                self.control.send(b'{"kill": true}')
            _kill_group(self.job_pid)
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)
        self.control.close()
        if self.process is not None:
            _kill_process(self.process)


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

INLINE_BATCH_JOBS = 64
"""Most jobs in one inline batch (the lanes split smaller queues evenly)."""
INLINE_BATCH_CHARS = 256 * 1024
"""Most program text in one inline batch (the control socket's messages are at most 1 MiB)."""
INLINE_MAX_OUTPUT_BYTES = 512 * 1024
"""Jobs that may print more than this are forked: an answer travels in one socket message."""
INLINE_KILL_GRACE_S = 0.5
"""How long after its deadline an inline program that its worker's alarm did not stop (C code) may run."""


def _may_inline(job: CodeJob) -> bool:
    """Whether the worker may be offered ``job`` inline (it still checks that the program is closed)."""
    return (
        len(job.program) <= INLINE_BATCH_CHARS
        and job.max_output_bytes is not None
        and job.max_output_bytes <= INLINE_MAX_OUTPUT_BYTES
    )


def _timeout_error(job: CodeJob) -> str:
    return f"TimeoutError: time limit of {job.timeout_s:g} s exceeded"


def _output_limit_error(job: CodeJob) -> str:
    return f"OutputLimitError: output exceeded {job.max_output_bytes} bytes"


def _inline_verdict(job: CodeJob, answer: dict[str, Any], output: bytes) -> Verdict:
    status = answer["status"]
    duration = float(answer.get("duration_s", 0.0))
    text = _decode(output, complete=status != "output_limit")
    if status == "output_limit":
        return Verdict("output_limit", text, _output_limit_error(job), duration)
    if status == "timeout":
        return Verdict("timeout", text, _timeout_error(job), duration)
    return Verdict(status, text, str(answer.get("error", "")), duration)


async def _receive(sock: socket.socket, deadline: float) -> tuple[list[bytes], bool]:
    """Every message waiting on ``sock`` (waiting for one until ``deadline``, monotonic), and whether it closed."""
    messages: list[bytes] = []

    def drain() -> bool:
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            messages.append(data)

    closed = drain()
    if messages or closed:
        return messages, closed
    timeout = deadline - time.monotonic()
    if timeout > 0:
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(_wait_fd(sock.fileno(), writable=False), timeout)
        closed = drain()
    return messages, closed


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


def _bwrap_prefix(hidden: dict[str, set[str]] | None = None, visible: Sequence[str] = ()) -> list[str]:
    """bubblewrap: read-only root, fresh /dev, /proc and /tmp, no network, own PID namespace, dies with rstar.

    ``hidden``: directories others may not enter, each replaced by a tmpfs that shows only the listed entries.
    ``visible``: paths under /tmp to bind back in, read-only, over the fresh /tmp (the interpreter's files).
    """
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in visible:
        # bubblewrap would create the folders on the way as 0700; jobs run as 'nobody' must pass through them.
        parent = os.path.dirname(path)
        ancestors = []
        while parent not in ("/tmp", "/", ""):
            ancestors.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(ancestors):
            args += ["--perms", "0755", "--dir", directory]
        args += ["--ro-bind", path, path]
    for directory in sorted(hidden or {}, key=lambda d: d.count(os.sep)):
        args += ["--tmpfs", directory]
        for entry in sorted((hidden or {})[directory]):
            path = os.path.join(directory, entry)
            args += ["--ro-bind", path, path]
    args += ["--die-with-parent", "--new-session", "--chdir", "/"]
    if os.geteuid() == 0:
        # No user namespace, so that the worker can drop each job to 'nobody'; only the capabilities that needs.
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-all"]
    return args


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
    global _warned
    if isolation == "none":
        return "none"
    if bwrap_works():
        return "bwrap"
    if isolation == "bwrap":
        raise RstarError(
            "subprocess verifier: isolation 'bwrap' asked for, but bubblewrap is not installed or cannot create "
            "namespaces here (Debian/Ubuntu: apt-get install bubblewrap)"
        )
    if not _warned:
        _warned = True
        log.warning(
            "subprocess verifier: bubblewrap is not available, so model-written code runs with rlimits only. "
            "That is NOT a security boundary: it can read and write your files and use the network. "
            "Install bubblewrap (apt-get install bubblewrap) or use the docker verifier."
        )
    return "none"


# --- helpers ----------------------------------------------------------------------------------------


def _interpreter_paths(python: str) -> list[str]:
    """What a job's interpreter reads: its own directory and, when it is rstar's, every import path."""
    paths = [os.path.dirname(os.path.realpath(python))]
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
    return [os.path.realpath(p) for p in paths if p and os.path.isdir(p)]


def _under_tmp(paths: Sequence[str]) -> list[str]:
    """The outermost of ``paths`` that lie under /tmp (which bubblewrap replaces), without nested ones."""
    tmp = os.path.realpath("/tmp") + os.sep
    inside = sorted({p for p in (os.path.realpath(q) for q in paths) if p.startswith(tmp) and os.path.isdir(p)})
    return [p for i, p in enumerate(inside) if not any(p.startswith(q + os.sep) for q in inside[:i])]


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
                return ready, (status, str(message.get("error", "")))
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
