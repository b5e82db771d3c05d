"""The pool of warm sandbox workers, and rstar's side of the protocol it speaks with each of them.

Both verifiers (``subprocess`` and ``docker``) are a `WorkerPool`: up to ``max_workers`` long-lived
worker processes ("zygotes", `rstar_sandbox.worker`), each started behind its sandbox (bubblewrap, or
none, by `rstar_sandbox.subprocess_verifier`; a container, by `rstar_sandbox.docker_verifier`). A
subclass says how to start one (`WorkerPool.start_worker`); the pool hands them out and takes them back:

* `WorkerPool.semaphore`: at most ``max_workers`` jobs (or inline batches) at once, per event loop;
* `WorkerPool.acquire`: an idle worker that is still alive, or a new one (started in one long-lived
  thread, because bubblewrap's ``--die-with-parent`` follows the thread that started it);
* `WorkerPool.release`: back to the idle ones, unless it died; `WorkerPool.discard`: killed, to be replaced;
* `WorkerPool.close`: every worker and every job in it killed; the pool stays usable.

A `Worker` is one such process (or container) and its control socket, a Unix ``SOCK_SEQPACKET`` socket.
Every message on it is framed as records of at most `rstar_sandbox.worker.RECORD_BYTES` (``+`` more to
come, ``.`` the last; `rstar_sandbox.worker.records` frames them), so batches and answers of any size
travel whole: `hello` reads a new worker's ``ready``, `Worker.send` hands it a forked job (its limits, with
the job's pipes passed as file descriptors), `Worker.kill_job` has it kill the running job's whole process
tree, and `receive` reads complete messages (an inline batch's answers). `Worker.kill` kills the worker and,
with it, its sandbox and every job in it.

How a job runs on a worker is in `rstar_sandbox.forked` (one fork per job) and `rstar_sandbox.inline`
(one process per batch of closed programs).
"""

from __future__ import annotations

import array
import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rstar.errors import RstarError
from rstar_sandbox.isolation import Cgroup, child_env
from rstar_sandbox.worker import RECORD_BYTES

WORKER_SOURCE_PATH = Path(__file__).with_name("worker.py")
"""The worker's source; it runs as ``python -c SOURCE CONTROL CONFIG_JSON``."""
DEFAULT_PRELOAD = ("math", "fractions", "sympy", "numpy")
"""The modules a worker imports once, so that jobs importing them pay nothing (the verifiers' ``preload``)."""
KILL_GRACE_S = 2.0
"""How long the worker has to kill a job it was told to kill before the whole worker is killed."""
START_TIMEOUT_S = 120.0
"""How long a new worker may take to import its ``preload`` modules."""


class WorkerPool:
    """Up to ``max_workers`` warm workers, shared by the jobs of every event loop; see the module docstring.

    A subclass implements `start_worker`.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._workers: set[Worker] = set()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._finalizer = weakref.finalize(self, _close_workers, self._workers)
        self.counts: collections.Counter[str] = collections.Counter()
        """Jobs run ``inline`` and ``forked``, and ``workers_started`` (for benchmarks and tests)."""

    def start_worker(self) -> Worker:
        """Start one worker and return it once it said ``ready`` (called in the pool's starter thread)."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill every worker and every job still running (their verdicts say ``killed``).

        The verifier stays usable: a later `run` starts new workers.
        """
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
        _close_workers(workers)

    def semaphore(self) -> asyncio.Semaphore:
        """The running event loop's semaphore: at most ``max_workers`` workers busy at once in it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.max_workers)
            return sem

    async def acquire(self) -> Worker:
        """An idle worker that is still alive, else a new one (`start_worker`)."""
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self._workers.discard(worker)
                worker.kill()
        loop = asyncio.get_running_loop()
        worker = await loop.run_in_executor(_starter(), self.start_worker)
        with self._lock:
            self._workers.add(worker)
        self.counts["workers_started"] += 1
        return worker

    async def acquire_this(self, worker: Worker) -> bool:
        """Wait until ``worker`` is idle and take it; False once it died or left the pool (``state: fork``: a job
        must run on the worker that keeps its state)."""
        while True:
            with self._lock:
                if worker not in self._workers:
                    return False
                if worker in self._idle:
                    self._idle.remove(worker)
                    if worker.alive():
                        return True
                    self._workers.discard(worker)
                    worker.kill()
                    return False
            await asyncio.sleep(0.0005)

    def discard(self, worker: Worker) -> None:
        """Kill ``worker`` (it died, hung or asked to retire); the next `acquire` starts a new one."""
        with self._lock:
            self._workers.discard(worker)
        worker.kill()

    def release(self, worker: Worker) -> None:
        """Give ``worker`` back to the idle ones, unless it died or the pool was closed meanwhile."""
        with self._lock:
            if worker.alive() and worker in self._workers:
                self._idle.append(worker)
                return
            self._workers.discard(worker)
        worker.kill()


@functools.cache
def _starter() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that starts every worker. bubblewrap's --die-with-parent follows the thread that started
    it, so that thread must live as long as rstar does (an event loop's default executor does not)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rstar-sandbox-starter")


def _close_workers(workers: Any) -> None:
    for worker in list(workers):
        worker.retired = True
        worker.kill()


class Worker:
    """One warm worker process (inside bubblewrap or not) and the socket that hands it jobs.

    `rstar_sandbox.docker_verifier` subclasses it for a worker in a container (no process of ours; `kill`
    removes the container).
    """

    def __init__(self, process: subprocess.Popen[bytes] | None, control: socket.socket, isolation: str) -> None:
        self.process = process
        self.control = control
        self.isolation = isolation
        self.closed = False
        self.retired = False  # killed by the verifier's close()
        self.job_pid: int | None = None  # the running job's pid, as the worker sees it
        self.partial = bytearray()  # the records of a message not yet complete
        self.cgroup: Cgroup | None = None

    @classmethod
    def start(
        cls,
        command: list[str],
        config: dict[str, Any],
        prefix: Sequence[str] = (),
        seccomp: bytes | None = None,
        cgroup: Cgroup | None = None,
    ) -> Worker:
        """Start ``command`` (behind the sandbox's ``prefix`` and ``seccomp`` filter, if any, in ``cgroup``); wait
        for ``ready``."""
        # The worker's own stderr goes to a file, so that it can never block on it; read only if it fails to start.
        with tempfile.TemporaryFile() as errors:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # Detached: closed once, below. A socket object still owning it would close the number again when
            # collected, by then perhaps another thread's new file (a pipe of a process pool starting meanwhile).
            passed = [theirs.detach()]
            if prefix and seccomp is not None:  # bubblewrap reads the filter from a pipe
                filter_r, filter_w = os.pipe()
                os.write(filter_w, seccomp)
                os.close(filter_w)
                passed.append(filter_r)
                prefix = [prefix[0], "--seccomp", str(filter_r), *prefix[1:]]
            try:
                argv = [*prefix, *command, str(passed[0]), json.dumps(config)]
                if cgroup is not None:  # enter it before anything else runs: all that starts below stays in it
                    argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup.procs, *argv]
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    pass_fds=passed,
                    env=child_env(),
                    cwd="/",
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise RstarError(f"subprocess verifier: cannot start {command[0]!r}: {exc}") from exc
            finally:
                for fd in passed:
                    os.close(fd)
            if hello(ours) is None:
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
        """Hand the worker a job to fork: its ``limits`` and, passed with them, its pipes ``fds``."""
        payload = b"." + json.dumps(limits).encode()
        self.control.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])

    def drop_states(self, ids: list[int]) -> None:
        """Have the worker kill the states it keeps under these ids (``state: fork``)."""
        with contextlib.suppress(OSError):
            self.control.send(b"." + json.dumps({"drop": ids}).encode())

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


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _kill_process(process: subprocess.Popen[bytes]) -> None:
    _kill_group(process.pid)
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(subprocess.SubprocessError):
        process.wait(timeout=5)


# --- the control socket's messages -----------------------------------------------------------------


KILL_MESSAGE = b'.{"kill": true}'


def hello(sock: socket.socket) -> dict[str, Any] | None:
    """The worker's first message (``ready``), or None when it closed or said nothing in time."""
    sock.settimeout(START_TIMEOUT_S)
    try:
        record = sock.recv(RECORD_BYTES)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    hello = json_object(record[1:]) if record[:1] == b"." else None
    return hello if hello is not None and hello.get("ready") else None


def json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` as a JSON object, or None when it is not one."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def receive(sock: socket.socket, partial: bytearray, deadline: float) -> tuple[list[bytes], bool]:
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
            await asyncio.wait_for(wait_fd(sock.fileno(), writable=False), timeout)


async def wait_fd(fd: int, writable: bool) -> None:
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
