"""The sandbox boundary around each worker: what it sees of the host, what it may do, what it may use.

Everything here is decided before a worker starts; nothing of it changes while jobs run.

* `bwrap_prefix`: the bubblewrap command line a worker runs behind (``isolation: bwrap``): only the
  system's libraries and the interpreter's folders, read-only (`interpreter_binds`); fresh ``/dev`` and
  ``/proc``; a private, bounded ``/tmp``; no network; its own PID and IPC namespaces; dying with rstar.
* `seccomp_program`: the seccomp filter bubblewrap installs (no System V IPC, POSIX queues, memfds, new
  namespaces, keyrings, tracing, BPF, perf events, userfaultfd or io_uring).
* `Cgroup`: a memory cgroup per worker (where rstar runs as root and may make one), so that a worker and
  every process of its jobs share one bound.
* `private_uid`: the uid a worker started as root switches to (one of its own, far from any real account).
* `child_env`: the environment every worker (and so every job) starts with: nothing of rstar's.

`bwrap_works` tells whether bubblewrap can run here at all; the verifier refuses to start where it cannot
(it never falls back to running without a sandbox). See docs/concepts/sandboxes.md for the threat model.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import platform
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rstar.errors import RstarError

log = logging.getLogger(__name__)

# --- bubblewrap ------------------------------------------------------------------------------------


SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""The system's programs and libraries, shown read-only in the sandbox (a symbolic link stays one)."""
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf")
"""What a Python process reads of /etc; nothing else of it is shown."""
SANDBOX_SCRATCH = ("/tmp", "/dev/shm", "/dev/mqueue")
"""The places a job can write to in a sandbox; the worker empties them after every job."""


def bwrap_prefix(binds: Sequence[str] = (), tmpfs_mb: int = 256) -> list[str]:
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
    for path in outermost(binds):
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


# --- seccomp ---------------------------------------------------------------------------------------


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


def outermost(paths: Sequence[str]) -> list[str]:
    """The existing folders among ``paths`` (resolved), without those inside another one."""
    found = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    return [p for i, p in enumerate(found) if not any(p.startswith(q + os.sep) for q in found[:i])]


@functools.cache
def bwrap_works() -> bool:
    """Whether bubblewrap is installed and can start a sandbox here (some containers forbid namespaces)."""
    if shutil.which("bwrap") is None:
        return False
    try:
        result = subprocess.run([*bwrap_prefix(), "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


# --- what the interpreter needs, the uid and environment of a worker -------------------------------


def interpreter_paths(python: str) -> list[str]:
    """What a job's interpreter reads: its own directory and, when it is rstar's, every import path."""
    paths = [os.path.dirname(os.path.realpath(python))]
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
    return [os.path.realpath(p) for p in paths if p and os.path.isdir(p)]


def interpreter_binds(python: str) -> list[str]:
    """The folders the interpreter needs inside the sandbox: its prefixes (a virtual environment's and its base
    installation's) and the folders of its executable, asked of the interpreter itself."""
    query = "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix]))"
    try:
        result = subprocess.run(
            [python, "-s", "-B", "-c", query], capture_output=True, timeout=60, check=True, env=child_env()
        )
        prefixes = [str(p) for p in json.loads(result.stdout)]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise RstarError(f"subprocess verifier: cannot run the interpreter {python!r}: {exc}") from exc
    executable = os.path.dirname(os.path.abspath(python))
    return outermost([*prefixes, executable, os.path.dirname(os.path.realpath(python))])


PRIVATE_UIDS = (2_000_000_000, 100_000_000)
"""Where the uid of each worker started as root is drawn from (first, count): far from any real account."""


def private_uid() -> int:
    first, count = PRIVATE_UIDS
    return first + secrets.randbelow(count)


def closed_ancestors(paths: Sequence[str]) -> dict[str, set[str]]:
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


def child_env() -> dict[str, str]:
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


# --- memory cgroups --------------------------------------------------------------------------------


class Cgroup:
    """A memory cgroup of one worker: it, its sandbox and every process of its jobs share ``memory_mb``.

    RLIMIT_AS bounds each process; a job with many processes (up to ``max_processes``) or memory no process maps
    (pipes, a tmpfs) is bounded here. Made where rstar runs as root and finds a memory controller it may write:
    cgroup v2 (a group next to the root's children) or v1 (below rstar's own memory group).
    """

    def __init__(self, path: str, procs: str) -> None:
        self.path = path
        self.procs = procs

    @classmethod
    def create(cls, memory_mb: int) -> Cgroup | None:
        base = cgroup_base()
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
def cgroup_base() -> tuple[int, str] | None:
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
