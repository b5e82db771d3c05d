"""A forked job: one program in a child of its own, forked by a warm worker, judged from outside.

`run_forked` hands a worker (`rstar_sandbox.pool.Worker`) the job's limits and five pipes: stdin (the
program), stdout, stderr, the verdict channel and the status pipe. The worker forks a child that starts a new
session in a fresh temporary directory, limits itself (address space, CPU time, file size, open files,
processes), runs the program like a notebook cell and reports on the verdict channel; the worker reports the
child's pid, then its exit, on the status pipe, and closes that pipe once the job's processes are gone and its
directory removed (`rstar_sandbox.worker`).

From here, the parent enforces the wall-clock deadline (it has the worker kill the job's whole process tree,
and kills the whole worker, sandbox included, when that does not happen in time), caps the output (the verdict
says ``output_limit``), and reads the verdict from the channel, separate from the program's stdout, so that
what the program prints cannot pose as a verdict; a verdict the program wrote there itself counts only if it
then exited normally. A job that ended without one was killed, crashed or ran out of memory (`_abnormal_end`).

The verdict texts here (`timeout_error`, `output_limit_error`, `decode_output`) are also those of inline jobs
(`rstar_sandbox.inline`), whose verdicts must be the same.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from rstar.errors import RstarError
from rstar.types import CodeJob, Verdict, VerdictStatus
from rstar_sandbox.pool import KILL_GRACE_S, Worker, wait_fd
from rstar_sandbox.worker import clean_text, remove_tree

STDERR_TAIL_BYTES = 4096
READ_CHUNK = 65536
DRAIN_GRACE_S = 1.0
"""After the job ends, how long to wait for its pipes to close and its directory to be removed."""

_MEMORY_HINTS = ("memoryerror", "cannot allocate memory", "bad_alloc", "out of memory", "memory allocation")
"""Lower-case phrases on stderr that tell a crash from running out of memory (e.g. OpenBLAS exits with 1)."""


@dataclass
class StateJob:
    """How a job of ``state: fork`` runs (`rstar_sandbox.states`), and what came back besides its verdict.

    The job given to `run_forked` is then only the new step, with what its whole program has left of the time
    limit; ``whole`` is the whole program's job (the verdict's texts name its limits), ``prefix`` the output
    the program's earlier steps printed (the new step's output is capped at what the whole program has left).
    """

    whole: CodeJob
    keep: bool = True
    """Ask the worker to keep the state once the program ran ``ok``."""
    from_state: int | None = None
    """The state to fork from (None: run the whole program from scratch)."""
    skip: int = 0
    """Where the new lines start in the program (characters); the job gets the whole program."""
    line_offset: int = 0
    """The line the new lines start after."""
    prefix: bytes = b""
    # what came back
    lost: bool = False
    """The state was gone, or the step does not compile on its own (``fallback``): run the whole program from
    scratch."""
    fallback: bool = False
    state_id: int | None = None
    """The id under which the worker keeps this job's state."""
    display: int = 0
    """Bytes at the end of the output that print the value of the program's trailing expression."""
    statements: int = 0
    """Top-level statements of the source the job ran."""
    output: bytes = b""
    """The whole program's output so far, as bytes (before decoding)."""


async def run_forked(
    worker: Worker,
    job: CodeJob,
    *,
    file_mb: int,
    open_files: int,
    processes: int,
    isolation: str,
    python: str,
    state: StateJob | None = None,
) -> Verdict:
    """Run ``job`` (its limits filled in) in a child that ``worker`` forks for it, and judge how it ended.

    ``file_mb``, ``open_files`` and ``processes`` are its rlimits besides memory and CPU time; ``isolation`` is
    the verifier's (``none``: a job directory a dead worker left is removed here); ``python`` names the
    interpreter in the error raised when the worker cannot start jobs at all. ``state``: a job of
    ``state: fork`` (`StateJob`), filled in with what came back.
    """
    assert job.timeout_s is not None and job.memory_mb is not None and job.max_output_bytes is not None
    cpu_s = _cpu_seconds(job)
    limits: dict[str, int | bool] = {
        "memory_mb": job.memory_mb,
        "cpu_s": cpu_s,
        "file_mb": file_mb,
        "open_files": open_files,
        "processes": processes,
    }
    if state is not None:
        limits["keep"] = state.keep
        if state.from_state is not None:
            limits["from"] = state.from_state
            limits["line_offset"] = state.line_offset
            limits["skip"] = state.skip
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
        return await _supervise(worker, job, fds, start, isolation, python, state)
    except OSError:  # the worker died before it got the job
        worker.kill()
        return Verdict("killed", "", "ProcessError: the sandbox worker died", time.monotonic() - start)
    finally:
        fds.close_all()


async def _supervise(
    worker: Worker, job: CodeJob, fds: _FdSet, start: float, isolation: str, python: str, state: StateJob | None
) -> Verdict:
    assert job.timeout_s is not None and job.max_output_bytes is not None
    stdin_w, stdout_r, stderr_r, channel_r, status_r = fds.fds
    loop = asyncio.get_running_loop()
    whole = state.whole if state is not None else job  # the verdict's texts name the whole program's limits
    output = bytearray(state.prefix if state is not None else b"")
    overflow = False
    stderr_tail = bytearray()
    exit_code: int | None = None
    exited: asyncio.Future[None] = loop.create_future()
    status_buffer = bytearray()
    workdir = ""
    limit = whole.max_output_bytes
    assert limit is not None

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
                if isinstance(message, dict) and state is not None:
                    state.lost = state.lost or bool(message.get("lost"))
                    if isinstance(message.get("state"), int):
                        state.state_id = message["state"]
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
        if worker.closed and isolation == "none" and workdir.startswith(tempfile.gettempdir()):
            remove_tree(workdir)  # the worker died before removing it (in bubblewrap, /tmp dies with it)

    text = decode_output(bytes(output), complete=not overflow)
    if state is not None:
        state.output = bytes(output)
        if state.lost:
            return Verdict("killed", text, "ProcessError: the state to fork from was lost", duration)
    if overflow:
        return Verdict("output_limit", text, output_limit_error(whole), duration)
    if timed_out:
        return Verdict("timeout", text, timeout_error(whole), duration)
    ready, reported, extra = _read_channel(channel_r)
    if reported is not None and exit_code == 0:  # a program that forged a verdict and then crashed: killed
        status, error = reported
        if state is not None:
            state.display, state.statements = extra.get("display", 0), extra.get("statements", 1)
            if extra.get("whole_error"):  # the whole program does not compile: nothing ran, nothing was printed
                text = ""
            if str(status) == "fallback":
                state.lost = state.fallback = True
                return Verdict("killed", text, "ProcessError: the step does not run on its own", duration)
        return Verdict(status, text, error, duration)
    if state is not None:
        state.state_id = None
    return _abnormal_end(worker, exit_code, whole, text, ready, bytes(stderr_tail), duration, python)


def _abnormal_end(
    worker: Worker, code: int | None, job: CodeJob, text: str, ready: bool, stderr: bytes, duration: float, python: str
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
            return Verdict("killed", text, f"ProcessError: killed by {_signal_name(-code)} before starting", duration)
        detail = stderr.decode("utf-8", "replace").strip() or f"exit code {code}"
        raise RstarError(f"subprocess verifier: the sandbox worker failed to start a job ({python}): {detail}")
    stderr_text = stderr.decode("utf-8", "replace").lower()
    if any(hint in stderr_text for hint in _MEMORY_HINTS):
        return Verdict("memory", text, f"MemoryError: memory limit of {job.memory_mb} MiB exceeded", duration)
    how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
    return Verdict("killed", text, f"ProcessError: the program {how} before finishing", duration)


# --- verdicts --------------------------------------------------------------------------------------


def timeout_error(job: CodeJob) -> str:
    return f"TimeoutError: time limit of {job.timeout_s:g} s exceeded"


def output_limit_error(job: CodeJob) -> str:
    return f"OutputLimitError: output exceeded {job.max_output_bytes} bytes"


def _cpu_seconds(job: CodeJob) -> int:
    """The job's CPU-time limit: a second more than its wall-clock limit, which should normally fire first."""
    return math.ceil(job.timeout_s or 0) + 1


def _read_channel(fd: int) -> tuple[bool, tuple[VerdictStatus, str] | None, dict[str, int]]:
    """What the job reported: whether it got ready, its verdict (status, error) if it sent one, and the counts a
    job of ``state: fork`` reports with it (``display``, ``statements``)."""
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
            if status in ("ok", "error", "memory", "fallback"):
                keys = ("display", "statements", "whole_error")
                extra = {k: v for k in keys if isinstance(v := message.get(k), int) and v >= 0}
                return ready, (status, clean_text(str(message.get("error", "")))), extra
    return ready, None, {}


def decode_output(data: bytes, complete: bool) -> str:
    """UTF-8 text of the output; a multi-byte character cut by the output cap is dropped, not garbled."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=complete)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- reading and writing pipes from any event loop -------------------------------------------------


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _read_all(fd: int, sink: Callable[[bytes], bool]) -> None:
    """Read ``fd`` to its end (or until ``sink`` returns False), chunk by chunk."""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            await wait_fd(fd, writable=False)
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
                await wait_fd(fd, writable=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the job ended before reading everything; its verdict says why
    finally:
        with contextlib.suppress(OSError):
            close(fd)
