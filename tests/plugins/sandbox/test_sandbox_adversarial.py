"""Hostile programs against every verifier: each case asserts the exact verdict and that the host is untouched.

Parametrized over the verifiers: ``subprocess`` (bubblewrap where it works), ``subprocess`` with
``isolation: none`` (rlimits only; the cases it cannot pass are expected failures, which is what the
docs warn about) and ``docker`` (marked ``docker``; skipped where the verifier or an engine is absent).
One verifier serves every case of its parameter, so a case that damaged it would show in the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

from rstar.registry import get_registry
from rstar.types import CodeJob, Verdict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and rlimits: Linux")


TIMEOUT_S = 2.0

VERIFIERS = [
    pytest.param({"name": "subprocess"}, id="subprocess"),
    pytest.param({"name": "subprocess", "isolation": "none"}, id="subprocess-none", marks=pytest.mark.slow),
    pytest.param({"name": "docker"}, id="docker", marks=pytest.mark.docker),
]


def _live_descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _processes_matching(marker: str) -> list[int]:
    """Every live process on the machine whose command line contains ``marker``."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(int(p.name))]


def _sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("rstar-sandbox-*")}


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module", params=VERIFIERS)
def verifier(request) -> Iterator[object]:
    spec = dict(request.param)
    if spec["name"] == "docker":
        if importlib.util.find_spec("rstar_sandbox.docker_verifier") is None:
            pytest.skip("the docker verifier is not there")
        from rstar_sandbox import docker_verifier  # type: ignore[attr-defined]

        reason = docker_verifier.unavailable_reason()
        if reason:
            pytest.skip(reason)
    dirs_before = _sandbox_dirs()
    processes_before = set(_live_descendants(os.getpid()))
    v = get_registry().build("verifier", spec)
    yield v
    v.close()
    assert _wait_until(lambda: set(_live_descendants(os.getpid())) <= processes_before), "processes left behind"
    assert _sandbox_dirs() <= dirs_before, "temporary directories left behind"


def run1(verifier, program: str, **limits) -> Verdict:
    limits.setdefault("timeout_s", TIMEOUT_S)
    return asyncio.run(verifier.run([CodeJob(program, **limits)]))[0]


def isolated(verifier) -> bool:
    """Whether the verifier really isolates (``auto`` falls back to rlimits only where bubblewrap fails)."""
    return getattr(verifier, "isolation", "container") != "none"


def expect_isolation(verifier, what: str) -> None:
    if not isolated(verifier):
        pytest.xfail(f"isolation 'none' (rlimits only) cannot stop {what}")


def test_infinite_loop(verifier):
    start = time.monotonic()
    v = run1(verifier, "while True:\n    pass")
    assert v.status == "timeout"
    assert time.monotonic() - start < TIMEOUT_S + 3


def test_busy_c_level_computation(verifier):
    start = time.monotonic()
    v = run1(verifier, "x = 10**10**8")
    assert v.status == "timeout"
    assert time.monotonic() - start < TIMEOUT_S + 3


def test_fork_bomb(verifier):
    if getattr(verifier, "isolation", "") == "none" and os.geteuid() == 0 and not verifier._private_uids:
        pytest.skip("jobs that keep root are not held by RLIMIT_NPROC: a fork bomb would hurt this machine")
    marker = f"bomb{uuid.uuid4().hex[:8]}"
    program = f"import os\n{marker} = 1\nwhile True:\n    os.fork()"
    v = run1(verifier, program, timeout_s=5)
    assert v.status == "error"
    assert "BlockingIOError" in v.error or "Resource temporarily unavailable" in v.error
    assert run1(verifier, "1 + 1").output == "2\n", "the sandbox goes on"


def test_memory_bomb(verifier):
    v = run1(verifier, "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))", memory_mb=256)
    assert v.status == "memory"
    assert v.error.startswith("MemoryError")


def test_a_gigabyte_of_output(verifier):
    v = run1(verifier, "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)", max_output_bytes=4096)
    assert v.status == "output_limit"
    assert v.output == "x" * 4096


def test_writing_outside_the_work_dir(verifier):
    name = f"rstar-adversarial-{uuid.uuid4().hex}"
    targets = [Path(tempfile.gettempdir()) / name, REPO / name, Path("/var/tmp") / name]
    program = (
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)\n"
    )
    try:
        v = run1(verifier, program)
        assert v.status == "ok"
        leaked = [str(t) for t in targets if t.exists()]
        if leaked:
            expect_isolation(verifier, "writes to world-writable directories")
        assert not leaked
    finally:
        for target in targets:
            with contextlib.suppress(OSError):
                target.unlink()


def test_reading_secrets_from_the_host_environment(verifier, monkeypatch):
    monkeypatch.setenv("RSTAR_ADVERSARIAL_SECRET", "hunter2-secret")
    program = (
        "import os, glob\n"
        "found = [k for k, v in os.environ.items() if 'hunter2' in v]\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        if b'hunter2' in open(path, 'rb').read():\n"
        "            found.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(found)"
    )
    v = run1(verifier, program)
    assert (v.status, v.output) == ("ok", "[]\n")


def test_opening_a_network_connection(verifier):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'exfiltrated')\n"
            "print('connected')"
        )
        v = run1(verifier, program)
        try:
            connection, _ = server.accept()
            connection.close()
            reached = True
        except BlockingIOError:
            reached = False
    if reached:
        expect_isolation(verifier, "network connections")
    assert not reached
    assert v.status == "error"
    assert v.error.startswith(("ConnectionRefusedError", "OSError", "TimeoutError", "socket"))


def test_killing_the_parent_process(verifier):
    v = run1(verifier, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(1)")
    # A job runs under its worker's uid, so it may kill it: the worker is replaced and the sandbox goes on.
    assert (v.status, v.error.split(":")[0]) in {("error", "PermissionError"), ("killed", "ProcessError")}
    assert run1(verifier, "6 * 7").output == "42\n", "the sandbox goes on"


def test_double_forked_daemon(verifier):
    marker = f"rstar-daemon-{uuid.uuid4().hex[:8]}"
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sh', ['sh', '-c', 'sleep 60 # {marker}'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('daemonized')"
    )
    v = run1(verifier, program)
    assert (v.status, v.output) == ("ok", "daemonized\n")
    assert _wait_until(lambda: not _processes_matching(marker)), "the daemon outlived its job"


def test_os_exit(verifier):
    v = run1(verifier, "print('bye')\nimport os\nos._exit(7)")
    assert (v.status, v.output) == ("killed", "bye\n")
    assert "code 7" in v.error


def test_deep_recursion(verifier):
    v = run1(verifier, "def f(n):\n    return f(n + 1)\nf(0)")
    assert (v.status, v.error.split(":")[0]) == ("error", "RecursionError")


def test_a_crash_in_c_code(verifier):
    v = run1(verifier, "import ctypes\nctypes.string_at(0)")
    assert v.status == "killed"
    assert "SIGSEGV" in v.error


def test_system_exit(verifier):
    v = run1(verifier, "print(1)\nraise SystemExit('stop')")
    assert (v.status, v.output, v.error) == ("error", "1\n", "SystemExit: stop")


def test_an_unclosed_thread(verifier):
    start = time.monotonic()
    v = run1(verifier, "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nprint('done')")
    assert (v.status, v.output) == ("ok", "done\n")
    assert time.monotonic() - start < TIMEOUT_S


def test_a_syntax_error(verifier):
    v = run1(verifier, "print('unclosed'\nx = = 1")
    assert v.status == "error"
    assert v.error.startswith("SyntaxError")


@pytest.mark.parametrize(
    ("program", "status"),
    [
        ("\x00\ufffe\u202e💥", "error"),
        ("print('\\ud800')", "error"),
        ("print('💥' * 3, '\\u202e', 'é')", "ok"),
        ("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 bytes')", "ok"),
    ],
    ids=["nul-and-controls", "lone-surrogate", "emoji", "invalid-utf8-output"],
)
def test_unicode_garbage(verifier, program, status):
    v = run1(verifier, program)
    assert v.status == status
    v.output.encode("utf-8")  # whatever was printed comes back as valid text


def test_the_verifier_is_still_sound_afterwards(verifier):
    verdicts = asyncio.run(verifier.run([CodeJob(f"{i} * 2") for i in range(8)]))
    assert [v.output for v in verdicts] == [f"{i * 2}\n" for i in range(8)]
