"""The ``subprocess`` step verifier: each program in a fresh, resource-limited Python process.

One job = one child process (``python -c <worker.py>``), started in its own session (so the whole
process group can be killed) in a fresh temporary directory that is removed afterwards, with a
minimal environment (nothing of the parent's environment is passed on). The program goes in on
stdin; inside the child, `rstar_sandbox.worker` limits address space and CPU time and runs the
program like a notebook cell. The parent enforces the wall-clock deadline and the output cap from
outside and reads the verdict from a pipe separate from the program's stdout, so what the program
prints cannot pose as a verdict.

Limits: a `rstar.types.CodeJob` may set its own ``timeout_s``, ``memory_mb`` and
``max_output_bytes``; the limits it leaves as None are the verifier's options.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from rstar.config import Options
from rstar.errors import RstarError
from rstar.types import CodeJob, Verdict, VerdictStatus

WORKER_SOURCE_PATH = Path(__file__).with_name("worker.py")
STDERR_TAIL_BYTES = 4096
READ_CHUNK = 65536
DRAIN_GRACE_S = 1.0
"""After the child exits, how long to wait for its pipes to close (a grandchild outside the group may hold them)."""

_MEMORY_HINTS = ("memoryerror", "cannot allocate memory", "bad_alloc", "out of memory", "memory allocation")
"""Lower-case phrases on stderr that tell a crash from running out of memory (e.g. OpenBLAS exits with 1)."""


class SubprocessOptions(Options):
    """Options of the ``subprocess`` verifier. The limits are defaults for the jobs it builds."""

    timeout_s: float = Field(10.0, gt=0, description="default wall-clock limit of a job, in seconds")
    memory_mb: int = Field(2048, ge=16, description="default address-space limit of a job (RLIMIT_AS), in MiB")
    max_output_bytes: int = Field(65536, ge=0, description="default cap on a job's stdout, in bytes")
    max_workers: int = Field(2, ge=1, description="jobs run at the same time")
    python: str | None = Field(None, description="Python interpreter that runs the jobs (default: rstar's own)")


class SubprocessVerifier:
    """Runs each `rstar.types.CodeJob` in a fresh child process; see the module docstring."""

    Options = SubprocessOptions

    def __init__(self, options: SubprocessOptions | None = None) -> None:
        self.options = options if options is not None else SubprocessOptions()
        self._python = _resolve_python(self.options.python)
        self._worker_source = WORKER_SOURCE_PATH.read_text(encoding="utf-8")
        self._running: set[int] = set()  # process groups (= pids of the children) still alive
        self._closed_groups: set[int] = set()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

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
        results = await asyncio.gather(*(self._run_one(job) for job in jobs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)  # type: ignore[arg-type]

    def close(self) -> None:
        """Kill every process group still running; their jobs end with status ``killed``."""
        for group in list(self._running):
            self._closed_groups.add(group)
            _kill_group(group)

    # --- one job ------------------------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.options.max_workers)
            return sem

    async def _run_one(self, job: CodeJob) -> Verdict:
        job = self._with_limits(job)
        async with self._semaphore():
            workdir = tempfile.mkdtemp(prefix="rstar-sandbox-")
            try:
                return await self._spawn_and_supervise(job, workdir)
            finally:
                _remove_tree(workdir)

    async def _spawn_and_supervise(self, job: CodeJob, workdir: str) -> Verdict:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        cpu_s = math.ceil(job.timeout_s) + 1  # the wall-clock deadline should normally fire first
        start = time.monotonic()
        try:
            try:
                transport, protocol = await loop.subprocess_exec(
                    lambda: _ExitAwareProtocol(loop),
                    *self._command(write_fd, job.memory_mb, cpu_s),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=workdir,
                    env=_child_env(workdir),
                    start_new_session=True,
                    pass_fds=(write_fd,),
                )
            except OSError as exc:
                raise RstarError(f"subprocess verifier: cannot start {self._python!r}: {exc}") from exc
            finally:
                os.close(write_fd)
            proc = asyncio.subprocess.Process(transport, protocol, loop)
            self._running.add(proc.pid)
            try:
                return await self._supervise(proc, protocol.exited, job, read_fd, start)
            finally:
                _kill_group(proc.pid)
                await protocol.exited
                transport.close()  # our ends of the pipes, even if something outside the group still holds theirs
                self._running.discard(proc.pid)
                self._closed_groups.discard(proc.pid)
        finally:
            os.close(read_fd)

    def _command(self, channel_fd: int, memory_mb: int, cpu_s: int) -> list[str]:
        # -s: no user site-packages; -B: no .pyc writes; -u: output reaches the parent even if the child is killed
        # -X utf8: UTF-8 stdio whatever the locale. PYTHON* variables come only from _child_env.
        source = self._worker_source
        return [self._python, "-s", "-B", "-u", "-X", "utf8", "-c", source, str(channel_fd), str(memory_mb), str(cpu_s)]

    async def _supervise(
        self, proc: asyncio.subprocess.Process, exited: asyncio.Future[None], job: CodeJob, channel: int, start: float
    ) -> Verdict:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        output = bytearray()
        overflow = False
        stderr_tail = bytearray()

        async def read_stdout() -> None:
            nonlocal overflow
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(READ_CHUNK):
                room = job.max_output_bytes - len(output)
                if len(chunk) > room:
                    output.extend(chunk[:room])
                    overflow = True
                    _kill_group(proc.pid)
                    return
                output.extend(chunk)

        async def read_stderr() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(READ_CHUNK):
                stderr_tail.extend(chunk)
                del stderr_tail[:-STDERR_TAIL_BYTES]

        tasks = [
            asyncio.ensure_future(_feed(proc.stdin, job.program.encode("utf-8", "replace"))),
            asyncio.ensure_future(read_stdout()),
            asyncio.ensure_future(read_stderr()),
        ]
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=job.timeout_s)
                timed_out = False
            except asyncio.TimeoutError:
                timed_out = True
                _kill_group(proc.pid)
                await exited
            duration = time.monotonic() - start
            _kill_group(proc.pid)  # whatever the program left running in its group
            await asyncio.wait(tasks, timeout=DRAIN_GRACE_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        text = _decode(bytes(output), complete=not overflow)
        if overflow:
            return Verdict(
                "output_limit", text, f"OutputLimitError: output exceeded {job.max_output_bytes} bytes", duration
            )
        if timed_out:
            return Verdict("timeout", text, f"TimeoutError: time limit of {job.timeout_s:g} s exceeded", duration)
        ready, reported = _read_channel(channel)
        if reported is not None:
            status, error = reported
            return Verdict(status, text, error, duration)
        return self._abnormal_end(proc, job, text, ready, bytes(stderr_tail), duration)

    def _abnormal_end(
        self, proc: asyncio.subprocess.Process, job: CodeJob, text: str, ready: bool, stderr: bytes, duration: float
    ) -> Verdict:
        """The child ended without reporting a verdict: killed, crashed, or the sandbox is broken."""
        code = proc.returncode
        assert code is not None
        if proc.pid in self._closed_groups:
            return Verdict("killed", text, "ProcessError: killed because the verifier was closed", duration)
        if code < 0 and -code == signal.SIGXCPU:
            return Verdict(
                "timeout", text, f"TimeoutError: CPU time limit of {math.ceil(job.timeout_s) + 1} s exceeded", duration
            )
        if not ready:
            if code < 0:
                return Verdict(
                    "killed", text, f"ProcessError: killed by {_signal_name(-code)} before starting", duration
                )
            detail = stderr.decode("utf-8", "replace").strip() or f"exit code {code}"
            raise RstarError(f"subprocess verifier: the sandbox worker failed to start ({self._python}): {detail}")
        stderr_text = stderr.decode("utf-8", "replace").lower()
        if any(hint in stderr_text for hint in _MEMORY_HINTS):
            return Verdict("memory", text, f"MemoryError: memory limit of {job.memory_mb} MiB exceeded", duration)
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return Verdict("killed", text, f"ProcessError: the program {how} before finishing", duration)


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol plus ``exited``, resolved when the child exits.

    ``Process.wait()`` also waits for the child's pipes to close, which never happens while a
    grandchild holds them; the deadline must follow the child itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=READ_CHUNK, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


# --- helpers ----------------------------------------------------------------------------------------


def _resolve_python(python: str | None) -> str:
    if python is None:
        if not sys.executable:
            raise RstarError("subprocess verifier: cannot tell which Python runs rstar; set the 'python' option")
        return sys.executable
    found = shutil.which(python)
    if found is None:
        raise RstarError(f"subprocess verifier: python {python!r} is not an executable file or a command on PATH")
    return found


def _child_env(workdir: str) -> dict[str, str]:
    """A fresh environment: nothing from the parent's (no tokens, no keys), one thread per math library."""
    return {
        "PATH": os.defpath,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # printed sets and dicts of strings come out the same on every run
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child ended before reading everything; its verdict says why
    finally:
        stdin.close()


def _read_channel(fd: int) -> tuple[bool, tuple[VerdictStatus, str] | None]:
    """What the worker reported: whether it got ready, and its verdict (status, error) if it sent one."""
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


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _remove_tree(path: str) -> None:
    """Remove the job's directory even where the program took away its own permissions."""

    def make_writable_and_retry(func: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, stat.S_IRWXU)
            func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=make_writable_and_retry)
