"""The warm worker ("zygote") of the ``subprocess`` verifier; it runs inside the sandbox.

The parent starts ``python -c <this file's source> CONTROL_FD CONFIG_JSON`` (inside bubblewrap when
available; in a container, CONTROL is the path of a Unix socket to connect to). This script

1. imports the modules named in the config's ``preload`` (math, fractions, sympy, numpy, ...) once,
   makes itself a child subreaper (orphans of its jobs become its children, so it can end them),
   and sends ``ready`` on the control socket (a Unix ``SOCK_SEQPACKET`` socket);
2. waits for messages on that socket: a job (a JSON header with the limits and, passed as file
   descriptors, the job's stdin, stdout, stderr, verdict channel and status pipe), ``kill``, or a
   batch of ``inline`` jobs (step 5);
3. for each job, forks one child that starts a new session, enters a fresh temporary directory,
   drops root (to ``nobody``) when it has it, sets its rlimits (address space on top of what the
   worker already mapped, CPU time, file size, open files, processes, no core dumps), reseeds the
   random generators, reads the program from stdin, writes ``ready`` to the verdict channel, runs
   the program like a notebook cell (the value of a trailing expression is printed) and writes one
   JSON line ``{"status": ..., "error": ...}`` to the channel;
4. when the child exits (or on ``kill``), kills every process the job left (its whole tree), writes
   ``{"exit": CODE}`` (negative: killed by that signal) to the status pipe, removes the job's
   directory and closes the status pipe: that EOF tells the parent the slot is free again.

5. an ``inline`` batch holds programs to run here, in the worker itself, when they are *closed*: a
   static check of the parsed program (`closed_program`) proves it cannot reach any state that
   outlives it -- no imports but ``math``, ``cmath`` and ``fractions.Fraction``, no name, attribute,
   keyword or string with an underscore prefix or ``__`` in it, no assignment to an attribute, no
   ``eval``/``open``/``getattr``/``type``/..., no generators, ``with`` or ``match``. Such a program can
   only compute and print; it runs in a fresh namespace with its output captured (and capped), a
   SIGALRM deadline and a soft address-space limit, and one reply per program goes back on the control
   socket. A program that is not closed is answered ``fork`` and the parent sends it as a forked job.
   This saves the fork, the pipes and the temporary directory, which cost far more than a short
   arithmetic step itself.

A forked child has its own copy of everything, so nothing a job does (rebinding ``math.sqrt``,
leaving globals) reaches the next one; an inline program cannot do either (step 5). When the
control socket closes (the parent is gone), the worker kills its job and exits. Only the standard
library is used; the source stays valid for Python 3.8+ because the sandbox interpreter may be
another one than rstar's.
"""

import array
import ast
import builtins
import contextlib
import ctypes
import gc
import importlib
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time

MAX_ERROR_CHARS = 2000
FILENAME = "<program>"
NOBODY = 65534
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
JOB_FDS = 5  # stdin, stdout, stderr, verdict channel, status


def describe(exc):
    """``"<ExceptionType>: <message>"`` (the type alone when the message is empty), no traceback."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:
        message = "<exception message could not be printed>"
    text = f"{name}: {message}" if message else name
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "..."
    return text


class Deadline(BaseException):
    """Raised by SIGALRM in an inline program that ran out of time."""


class OutputLimit(BaseException):
    """Raised by an inline program's output capture once the program printed more than it may."""


def run(source, accept=None):
    """Execute ``source`` REPL-style; return ``(status, error)``, or None when ``accept(tree)`` refuses it."""
    try:
        tree = ast.parse(source, FILENAME, "exec")
        if accept is not None and not accept(tree):
            return None
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        body = compile(tree, FILENAME, "exec")
        tail = compile(last, FILENAME, "eval") if last is not None else None
    except (Deadline, OutputLimit):
        raise
    except MemoryError as exc:
        return "memory", describe(exc)
    except BaseException as exc:  # SyntaxError, or ValueError for NUL bytes
        return "error", describe(exc)

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(body, namespace)
        if tail is not None:
            value = eval(tail, namespace)
            if value is not None:
                print(str(value))
    except (Deadline, OutputLimit):
        raise
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return "ok", ""
        return "error", f"SystemExit: {exc.code}"
    except MemoryError as exc:
        return "memory", describe(exc)
    except BaseException as exc:
        return "error", describe(exc)
    finally:
        namespace.clear()  # frees the program's data before the verdict is written
    return "ok", ""


# --- inline programs (step 5 of the module docstring) ----------------------------------------------

INLINE_IMPORTS = {"math": None, "cmath": None, "fractions": {"Fraction"}}
"""Modules an inline program may import: None = the whole module (it holds no modules and no mutable
state), a set = only these names with ``from``."""
SHARED_STATE_NAMES = frozenset(
    [
        *("eval", "exec", "compile", "open", "input", "breakpoint", "help", "exit", "quit", "globals", "locals"),
        *("vars", "getattr", "setattr", "delattr", "type", "memoryview", "copyright", "credits", "license"),
    ]
)
"""Builtins that reach or change state beyond the program's own objects (or read files, or stop the worker)."""
_REFUSED_NODES = tuple(
    getattr(ast, name)
    for name in ("Yield", "YieldFrom", "Await", "AsyncFunctionDef", "AsyncFor", "AsyncWith", "With", "Match")
    if hasattr(ast, name)
)
RETIRE_GROWTH_BYTES = 256 * 1024 * 1024
"""A worker whose peak resident memory grew by this much since it started asks to be replaced."""


def closed_program(tree):
    """Whether a parsed program provably touches nothing that outlives it (so it may run inline).

    Conservative: a program refused here is simply forked, as every program was before.
    """
    for node in ast.walk(tree):
        kind = type(node)
        if kind is ast.Name:
            if node.id.startswith("_") or node.id in SHARED_STATE_NAMES:
                return False
        elif kind is ast.Attribute:
            if node.attr.startswith("_") or not isinstance(node.ctx, ast.Load):
                return False
        elif kind is ast.Constant:
            if isinstance(node.value, str) and "__" in node.value:
                return False  # e.g. no "{0.__class__}" format field
        elif kind is ast.Import:
            if any(alias.name not in INLINE_IMPORTS or INLINE_IMPORTS[alias.name] is not None for alias in node.names):
                return False
        elif kind is ast.ImportFrom:
            allowed = INLINE_IMPORTS.get(node.module or "", False)
            if node.level or allowed is False:
                return False
            if allowed is not None and any(alias.name not in allowed for alias in node.names):
                return False
        elif kind in (ast.FunctionDef, ast.ClassDef):
            if node.name.startswith("_"):
                return False
        elif kind is ast.arg or kind is ast.keyword:
            if node.arg is not None and node.arg.startswith("_"):
                return False
        elif kind is ast.alias:
            if (node.asname or "").startswith("_"):
                return False
        elif kind is ast.ExceptHandler:
            if (node.name or "").startswith("_"):
                return False
        elif kind is ast.Global or kind is ast.Nonlocal or isinstance(node, _REFUSED_NODES):
            return False
    return True


class Capture:
    """An inline program's ``sys.stdout``: UTF-8 bytes like the forked job's pipe, capped at ``limit``."""

    def __init__(self, limit):
        self.data = bytearray()
        self.limit = limit
        self.overflow = False

    def write(self, text):
        data = text.encode("utf-8", "surrogateescape")
        room = self.limit - len(self.data)
        if len(data) > room:
            self.data += data[:room]
            self.overflow = True
            raise OutputLimit()
        self.data += data
        return len(text)

    def flush(self):
        pass


class InlineClock:
    """The SIGALRM deadline of the inline program running now."""

    expired = False

    @classmethod
    def alarm(cls, _signum, _frame):
        cls.expired = True
        raise Deadline()


PLAIN_PROGRAM = re.compile(
    r"[^\x00-\x7f]|[_.]|import|yield|await|async|with|match|global|nonlocal|" + "|".join(sorted(SHARED_STATE_NAMES))
)
"""A program without any of these (no attribute access, no underscore, ASCII only -- identifiers are
NFKC-normalised, so a full-width ``ｅｖａｌ`` is ``eval``) is closed without walking its syntax tree."""


def accept_closed(source):
    """The acceptance test for an inline program: `closed_program`, after a quick look at the text."""
    return accept_all if PLAIN_PROGRAM.search(source) is None else closed_program


def accept_all(_tree):
    return True


class InlineLimits:
    """The soft address-space limit of inline programs, set once per batch (and again if a job's differs)."""

    def __init__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_AS)
        self.base = mapped_bytes()
        self.memory_mb = None

    def apply(self, memory_mb):
        if memory_mb == self.memory_mb:
            return
        soft, hard = self.saved
        room = self.base + memory_mb * 1024 * 1024 if memory_mb > 0 else soft
        if hard != resource.RLIM_INFINITY:
            room = min(room, hard)
        resource.setrlimit(resource.RLIMIT_AS, (room, hard))
        self.memory_mb = memory_mb

    def restore(self):
        resource.setrlimit(resource.RLIMIT_AS, self.saved)


def run_inline(job, limits):
    """Run one inline job here; return its reply header (a dict) and its output, or None to fork it."""
    capture = Capture(job["max_output_bytes"])
    saved_stdout = sys.stdout
    start = time.monotonic()
    InlineClock.expired = False
    result = None
    try:
        limits.apply(job["memory_mb"])
        sys.stdout = capture
        signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
        result = run(job["program"], accept=accept_closed(job["program"]))
    except (Deadline, OutputLimit):
        pass
    except MemoryError as exc:
        result = ("memory", describe(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout = saved_stdout
    if result is None and not (InlineClock.expired or capture.overflow):
        return None
    if capture.overflow:
        status, error = "output_limit", ""
    elif InlineClock.expired:
        status, error = "timeout", ""
    else:
        status, error = result
    header = {"status": status, "error": error, "duration_s": time.monotonic() - start}
    return header, bytes(capture.data)


def serve_inline(control, jobs, base_rss):
    """Answer each job of an inline batch, in order, with one message: a JSON header line, then the output."""
    limits = InlineLimits()
    try:
        for index, job in enumerate(jobs):
            answer = run_inline(job, limits)
            if answer is None:
                control.send(json.dumps({"i": index, "fork": True}).encode())
                continue
            header, output = answer
            header["i"] = index
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            header["retire"] = peak > base_rss + RETIRE_GROWTH_BYTES
            control.send(json.dumps(header).encode() + b"\n" + output)
    finally:
        limits.restore()


def send(fd, data):
    while data:
        data = data[os.write(fd, data) :]


def prctl(option, value):
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def mapped_bytes():
    """The address space this process has mapped already (VmSize), in bytes."""
    with contextlib.suppress(Exception), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def processes_of(uid):
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat("/proc/" + entry).st_uid == uid:
                    count += 1
    return count


def set_limits(limits, uid):
    """Soft = hard, so the program cannot raise them; one extra CPU second between SIGXCPU and SIGKILL."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits["memory_mb"] > 0:
        room = mapped_bytes() + limits["memory_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (room, room))
    if limits["cpu_s"] > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    if limits["file_mb"] > 0:
        size = limits["file_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    if limits["open_files"] > 0:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    if limits["processes"] > 0:
        # RLIMIT_NPROC counts every process of the user; as nobody that is (almost) only the job's.
        count = limits["processes"] + (0 if uid == NOBODY else processes_of(uid))
        resource.setrlimit(resource.RLIMIT_NPROC, (count, count))


def child_main(config, limits, fds, workdir, closing):
    """The forked job process; never returns."""
    stdin_fd, stdout_fd, stderr_fd, channel, status_fd = fds
    try:
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        os.close(status_fd)
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        for fd in (stdin_fd, stdout_fd, stderr_fd):
            if fd > 2:
                os.close(fd)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(config["env"])
        os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PWD": workdir})
        tempfile.tempdir = None
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="surrogateescape")
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="surrogateescape", write_through=True
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        with io.FileIO(0, "r", closefd=False) as raw:
            source = raw.read().decode("utf-8", "replace")
        uid = os.getuid()
        if uid == 0 and config["drop_root"]:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            uid = NOBODY
        set_limits(limits, uid)
        random.seed()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            with contextlib.suppress(Exception):
                numpy.random.seed()
        pid = os.getpid()
        send(channel, b"ready\n")
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, ("sandbox worker: cannot start the job: " + describe(exc) + "\n").encode())
        os._exit(70)

    status, error = run(source)

    if os.getpid() != pid:  # a child the program forked: only the original process reports
        os._exit(0)
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    try:
        verdict = json.dumps({"status": status, "error": error}).encode("utf-8")
    except BaseException:
        verdict = b'{"status": "memory", "error": "MemoryError"}' if status == "memory" else b'{"status": "error"}'
    try:
        send(channel, verdict + b"\n")
    finally:
        os._exit(0)


def descendants():
    """The pids of every process below this one (orphans of a job are re-parented here: subreaper)."""
    me = os.getpid()
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/" + entry + "/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found = []
    todo = list(children.get(me, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def reap_all():
    """Reap every child that has exited; return ``{pid: exit code}`` (negative: killed by that signal)."""
    ended = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended[pid] = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status


def has_children():
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def kill_everything(job_pid):
    """SIGKILL the job's process group and every descendant, until none is left."""
    with contextlib.suppress(OSError):
        os.killpg(job_pid, signal.SIGKILL)
    for _ in range(200):
        reap_all()
        if not has_children():  # as a subreaper, anything left below would have a live or unreaped child here
            return
        pids = descendants()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        reap_all()


def remove_tree(path):
    """Remove a job's directory, making what the job made read-only writable first; never touches
    anything outside ``path`` (its parent is the shared temporary directory)."""
    root = os.path.abspath(path)

    def make_writable_and_retry(func, target, _exc):
        with contextlib.suppress(OSError):
            parent = os.path.dirname(os.path.abspath(target))
            if parent == root or parent.startswith(root + os.sep):
                os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, stat.S_IRWXU)
            func(target)

    with contextlib.suppress(OSError):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)


class Job:
    def __init__(self, pid, status_fd, workdir):
        self.pid = pid
        self.status_fd = status_fd
        self.workdir = workdir
        self.code = None


def finish(job):
    kill_everything(job.pid)
    with contextlib.suppress(OSError):
        send(job.status_fd, json.dumps({"exit": job.code if job.code is not None else -9}).encode() + b"\n")
    remove_tree(job.workdir)
    os.close(job.status_fd)


def main():
    if sys.argv[1].startswith("/"):  # a Unix socket to connect to (the docker verifier binds its directory in)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control.connect(sys.argv[1])
    else:
        control = socket.socket(fileno=int(sys.argv[1]))
    config = json.loads(sys.argv[2])
    for name in config["preload"]:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # its first seeding is slow (lazy set-up); pay it here, not in every job
        with contextlib.suppress(Exception):
            numpy.random.seed()
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    gc.collect()
    if hasattr(gc, "freeze"):  # the preloaded objects: a job's collections skip them instead of copying their pages
        gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, InlineClock.alarm)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    control.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())

    job = None
    while True:
        readable, _, _ = select.select([control, wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(OSError):
                while os.read(wake_r, 4096):
                    pass
        if job is not None:
            ended = reap_all()
            if job.pid in ended:
                job.code = ended[job.pid]
                finish(job)
                job = None
        else:
            reap_all()
        if control not in readable:
            continue
        fds = array.array("i")
        try:
            data, ancillary, _, _ = control.recvmsg(1 << 20, socket.CMSG_SPACE(JOB_FDS * fds.itemsize))
        except InterruptedError:
            continue
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data:  # the parent is gone
            if job is not None:
                finish(job)
            os._exit(0)
        message = json.loads(data)
        if "inline" in message and job is None:
            serve_inline(control, message["inline"], base_rss)
            continue
        if message.get("kill"):
            if job is not None:
                finish(job)
                job = None
            continue
        if job is not None or len(fds) != JOB_FDS:  # the parent never does this; refuse rather than guess
            for fd in fds:
                os.close(fd)
            continue
        workdir = tempfile.mkdtemp(prefix="rstar-sandbox-")
        if os.getuid() == 0 and config["drop_root"]:
            os.chown(workdir, NOBODY, NOBODY)
        pid = os.fork()
        if pid == 0:
            child_main(config, message, list(fds), workdir, [control.fileno(), wake_r, wake_w])
        for fd in fds[:4]:
            os.close(fd)
        job = Job(pid, fds[4], workdir)
        with contextlib.suppress(OSError):
            send(job.status_fd, json.dumps({"pid": pid, "workdir": workdir}).encode() + b"\n")


if __name__ == "__main__":
    main()
