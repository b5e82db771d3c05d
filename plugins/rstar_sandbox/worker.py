"""The warm worker ("zygote") of the ``subprocess`` verifier; it runs inside the sandbox.

The parent starts ``python -c <this file's source> CONTROL_FD CONFIG_JSON`` (inside bubblewrap when
available; in a container, CONTROL is the path of a Unix socket to connect to). This script

1. gives up every privilege before it runs anything else: started as root, it switches to the
   unprivileged uid the config names (one of its own per worker, so that no limit or file is shared
   with another worker), which drops every capability; it makes itself non-dumpable (its jobs, which
   share its uid, can neither trace it nor write its memory through ``/proc/<pid>/mem``);
2. imports the modules named in the config's ``preload`` (math, fractions, sympy, numpy) once,
   makes itself a child subreaper (orphans of its jobs become its children, so it can end them),
   and sends ``ready`` on the control socket (a Unix ``SOCK_SEQPACKET`` socket; every message on it
   is framed as records of at most `RECORD_BYTES`, see `send_message`);
3. waits for messages on that socket: a job (a JSON header with the limits and, passed as file
   descriptors, the job's stdin, stdout, stderr, verdict channel and status pipe), ``kill``, or a
   batch of ``inline`` jobs (step 6);
4. for each job, forks one child that starts a new session, enters a fresh temporary directory,
   sets its rlimits (address space on top of what the worker already mapped, CPU time, file size,
   open files, processes, no core dumps), reseeds the random generators, reads the program from
   stdin, writes ``ready`` to the verdict channel, runs the program like a notebook cell (the value
   of a trailing expression is printed) and writes one JSON line ``{"status": ..., "error": ...}``
   to the channel;
5. when the child exits (or on ``kill``), kills every process the job left (its whole tree), writes
   ``{"exit": CODE}`` (negative: killed by that signal) to the status pipe, removes the job's
   directory and everything the job left in the sandbox's other writable places (``scratch`` in the
   config: ``/tmp``, ``/dev/shm``, ``/dev/mqueue``, and its System V IPC objects), and closes the
   status pipe: that EOF tells the parent the slot is free again.

6. an ``inline`` batch holds programs that may run without their own fork when they are *closed*:
   `closed_program` accepts a program only when every syntax node, every name and every attribute
   is on an allow-list of what arithmetic steps use (no imports but ``math``, ``cmath`` and
   ``fractions.Fraction``; no name or attribute starting with ``_``; builtins and attributes from
   fixed lists, so no ``format`` traversal, no frames, no ``mro``/``register``). The worker forks ONE
   child per batch, which runs the closed programs one after the other, each in a fresh namespace
   whose builtins hold only the allowed names, with its output captured (and capped), a SIGALRM
   deadline and a soft address-space limit, and sends one answer per program; the worker relays
   them. A program that is not closed is answered ``fork`` and the parent sends it as a forked job.
   This saves a fork, five pipes and a temporary directory per program, which cost far more than a
   short arithmetic step itself; and whatever a batch did dies with its child, so no later batch or
   job of the worker can see it.

7. ``state: fork`` (see "kept states" below): a job sent with ``keep`` may stay, stopped, once its program ran
   ``ok``, as the state a later job forks (``from``) to run only its new lines.

A forked child has its own copy of everything, so nothing a job does (rebinding ``math.sqrt``,
leaving globals) reaches the next one. When the control socket closes (the parent is gone), the
worker kills its job and exits. Only the standard library is used; the source stays valid for
Python 3.8+ because the sandbox interpreter may be another one than rstar's.
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
import keyword
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
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
JOB_FDS = 5  # stdin, stdout, stderr, verdict channel, status
RECORD_BYTES = 32 * 1024
"""Largest record on a control socket; a message is one or more records (see `send_message`)."""


def clean_text(text):
    """``text`` as valid UTF-8: lone surrogates (``"\\ud800"``) become their escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
    return clean_text(text)


class Deadline(BaseException):
    """Raised by SIGALRM in an inline program that ran out of time."""


class OutputLimit(BaseException):
    """Raised by an inline program's output capture once the program printed more than it may."""


RESULT = "__rstar_result__"
"""Where the value of a program's trailing expression is kept, to be printed after it ran."""


def run(source, accept=None, builtins_=builtins, kept=None):
    """Execute ``source`` REPL-style; return ``(status, error)``, or None when ``accept(tree)`` refuses it.

    ``kept`` (``state: fork``, a dict): run in ``kept["namespace"]``, which outlives the program (the state a child
    step forks), the source's first line being line ``kept["line_offset"] + 1`` of the whole program (line numbers
    are then those of the whole program). Filled in: ``display``, the byte length of the printed value of a
    trailing expression (in a child's whole program that expression is no longer the last statement, so its
    children's output starts before it); ``statements``, the source's top-level statements; ``keepable``, whether
    the namespace may serve children (not after ``SystemExit``, which ends the whole program). A source that
    ``kept["from_state"]`` and does not compile on its own (a step continuing its parent's indented block) has
    status ``fallback``: its whole program must run from scratch.
    """
    offset = kept["line_offset"] if kept is not None else 0
    try:
        tree = ast.parse("\n" * offset + source, FILENAME, "exec")
        if accept is not None and not accept(tree):
            return None
        last = tree.body[-1] if tree.body else None
        statements = len(tree.body)
        if isinstance(last, ast.Expr):  # one compilation: the trailing expression becomes an assignment
            target = ast.copy_location(ast.Name(RESULT, ast.Store()), last.value)
            tree.body[-1] = ast.copy_location(ast.Assign([target], last.value), last)
        if kept is not None and kept["from_state"] and tree.body and is_docstring(tree.body[0]):
            tree.body.insert(0, ast.copy_location(ast.Pass(), tree.body[0]))  # in the whole program it is not first
        body = compile(tree, FILENAME, "exec")
    except (Deadline, OutputLimit):
        raise
    except MemoryError as exc:
        return ("fallback", "") if kept is not None and kept["from_state"] else ("memory", describe(exc))
    except BaseException as exc:  # SyntaxError, or ValueError for NUL bytes
        return ("fallback", "") if kept is not None and kept["from_state"] else ("error", describe(exc))

    if kept is not None:
        kept.update(display=0, statements=statements, keepable=False)
    namespace = {"__name__": "__main__", "__builtins__": builtins_} if kept is None else kept["namespace"]
    try:
        exec(body, namespace)
        value = namespace.pop(RESULT, None) if isinstance(last, ast.Expr) else None
        if value is not None:
            text = str(value) if kept is None else quiet_str(value, kept)
            print(text)
            if kept is not None:
                kept["display"] = len((text + "\n").encode("utf-8", "surrogateescape"))
    except (Deadline, OutputLimit):
        raise
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return "ok", ""
        try:
            text = f"SystemExit: {exc.code}"
        except BaseException:  # e.g. an int too long to print
            text = "SystemExit: <exit code could not be printed>"
        return "error", clean_text(text[:MAX_ERROR_CHARS] + ("..." if len(text) > MAX_ERROR_CHARS else ""))
    except MemoryError as exc:
        return "memory", describe(exc)
    except BaseException as exc:
        return "error", describe(exc)
    finally:
        if kept is None:
            namespace.clear()  # frees the program's data before the verdict is written
    if kept is not None:
        kept["keepable"] = not kept.get("printed_in_str")
    return "ok", ""


def is_docstring(node):
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


class WriteProbe:
    """``sys.stdout`` while a trailing value is turned into text: notes whether that printed anything."""

    def __init__(self, stream):
        self.stream = stream
        self.written = False

    def write(self, text):
        self.written = True
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def quiet_str(value, kept):
    """``str(value)`` for the printed value of a trailing expression, in a program whose state may be kept. The
    whole program of a child does not print it (it is no longer the last statement), so its output must not
    include anything ``str`` printed either: if it did, the state is not kept."""
    stream = sys.stdout
    probe = sys.stdout = WriteProbe(stream)
    try:
        return str(value)
    finally:
        if sys.stdout is probe:
            sys.stdout = stream
        kept["printed_in_str"] = probe.written


# --- framing on the control socket ------------------------------------------------------------------


def records(data):
    """``data`` as records of at most `RECORD_BYTES`: each is ``b"+"`` (more follow) or ``b"."`` (the last) and a
    piece of ``data``. A socket's send buffer is smaller than the largest batch or answer, and a
    ``SOCK_SEQPACKET`` record must fit in it whole."""
    size = RECORD_BYTES - 1
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [(b"." if n == len(pieces) - 1 else b"+") + piece for n, piece in enumerate(pieces)]


def send_message(sock, data, fds=None):
    """Send ``data`` as its `records`; file descriptors ride on the first."""
    for n, record in enumerate(records(data)):
        if n == 0 and fds:
            sock.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            sock.sendall(record)


def receive_message(sock):
    """One message sent by `send_message`: ``(data, fds)``, or ``(None, fds)`` when the socket closed."""
    parts = []
    fds = array.array("i")
    while True:
        data, ancillary, flags, _ = sock.recvmsg(RECORD_BYTES, socket.CMSG_SPACE(JOB_FDS * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or data[:1] not in (b"+", b"."):
            return None, list(fds)
        parts.append(data[1:])
        if data[:1] == b".":
            return b"".join(parts), list(fds)


# --- inline programs (step 6 of the module docstring) ----------------------------------------------

INLINE_IMPORTS = {"math": None, "cmath": None, "fractions": {"Fraction"}}
"""Modules an inline program may import: None = the whole module (it holds no modules and no mutable
state), a set = only these names with ``from``."""
SAFE_BUILTINS = frozenset(
    [
        *("abs", "all", "any", "bin", "bool", "chr", "complex", "dict", "divmod", "enumerate", "filter", "float"),
        *("format", "frozenset", "hex", "int", "isinstance", "iter", "len", "list", "map", "max", "min", "next"),
        *("oct", "ord", "pow", "print", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str"),
        *("sum", "tuple", "zip", "True", "False", "None", "Ellipsis", "NotImplemented"),
        *("ArithmeticError", "AssertionError", "Exception", "IndexError", "KeyError", "LookupError"),
        *("NotImplementedError", "OverflowError", "RecursionError", "RuntimeError", "StopIteration"),
        *("TypeError", "ValueError", "ZeroDivisionError", "SystemExit"),
    ]
)
"""The builtins an inline program may name (and the only ones its namespace holds). ``format(value, spec)``
reads a format spec, never a field name: the traversal of ``str.format`` needs the ``format`` attribute."""
SAFE_ATTRIBUTES = frozenset(
    [
        # numbers, Fraction
        *("real", "imag", "conjugate", "numerator", "denominator", "limit_denominator", "as_integer_ratio"),
        *("is_integer", "bit_length", "bit_count", "from_float", "from_decimal", "hex", "fromhex"),
        # lists, dicts, sets, tuples
        *("append", "extend", "insert", "pop", "remove", "index", "count", "sort", "reverse", "copy", "clear"),
        *("keys", "values", "items", "get", "update", "setdefault", "popitem", "add", "discard", "union"),
        *("intersection", "difference", "symmetric_difference", "issubset", "issuperset", "isdisjoint"),
        *("intersection_update", "difference_update", "symmetric_difference_update", "args"),
        # strings
        *("join", "split", "rsplit", "splitlines", "strip", "lstrip", "rstrip", "replace", "lower", "upper"),
        *("title", "capitalize", "swapcase", "startswith", "endswith", "find", "rfind", "rindex", "isdigit"),
        *("isalpha", "isalnum", "isnumeric", "isdecimal", "isspace", "islower", "isupper", "zfill", "center"),
        *("ljust", "rjust", "partition", "rpartition", "casefold", "removeprefix", "removesuffix", "expandtabs"),
    ]
    + [name for module in ("math", "cmath") for name in dir(importlib.import_module(module)) if name[:1] != "_"]
)
"""Attribute names an inline program may read, on any object: methods of numbers, containers and strings,
and the functions and constants of ``math`` and ``cmath``. None of them leads to a frame, a class's
registry, a module, a code object or a format field."""
BUILTIN_NAMES = frozenset(dir(builtins))
ALLOWED_NODES = frozenset(
    getattr(ast, name)
    for name in (
        *("Module", "Expr", "Assign", "AugAssign", "AnnAssign", "For", "While", "If", "Break", "Continue"),
        *("Pass", "FunctionDef", "Lambda", "Return", "arguments", "arg", "keyword", "Call", "Name", "Load"),
        *("Store", "Del", "Delete", "Constant", "BinOp", "UnaryOp", "BoolOp", "Compare", "IfExp", "Tuple"),
        *("List", "Set", "Dict", "ListComp", "SetComp", "DictComp", "GeneratorExp", "comprehension"),
        *("Subscript", "Slice", "Starred", "JoinedStr", "FormattedValue", "Assert", "Raise", "Try"),
        *("ExceptHandler", "Import", "ImportFrom", "alias", "Attribute", "NamedExpr", "Index"),
        # operators
        *("Add", "Sub", "Mult", "Div", "FloorDiv", "Mod", "Pow", "LShift", "RShift", "BitOr", "BitXor"),
        *("BitAnd", "MatMult", "UAdd", "USub", "Not", "Invert", "And", "Or", "Eq", "NotEq", "Lt", "LtE"),
        *("Gt", "GtE", "Is", "IsNot", "In", "NotIn"),
    )
    if hasattr(ast, name)
)
"""Syntax an inline program may use: no class, generator function, ``with``, ``async``, ``match``,
``global``/``nonlocal``."""


def allowed_name(name):
    """A name an inline program may bind or read: not private, and not a builtin outside `SAFE_BUILTINS`."""
    return name[:1] != "_" and (name in SAFE_BUILTINS or name not in BUILTIN_NAMES)


def closed_program(tree):
    """Whether a parsed program may run inline: every node, name and attribute is on an allow-list.

    Conservative: a program refused here is simply forked, as every program was before.
    """
    for node in ast.walk(tree):
        kind = type(node)
        if kind not in ALLOWED_NODES:
            return False
        if kind is ast.Name:
            if not allowed_name(node.id):
                return False
        elif kind is ast.Attribute:
            if node.attr not in SAFE_ATTRIBUTES or type(node.ctx) is not ast.Load:
                return False
        elif kind is ast.Import:
            if any(alias.name not in INLINE_IMPORTS or INLINE_IMPORTS[alias.name] is not None for alias in node.names):
                return False
        elif kind is ast.ImportFrom:
            allowed = INLINE_IMPORTS.get(node.module or "", False)
            if node.level or allowed is False:
                return False
            if allowed is not None and any(alias.name not in allowed for alias in node.names):
                return False
        elif kind is ast.alias:
            if not allowed_name(node.asname or node.name.split(".")[0]) and node.name != "*":
                return False
        elif kind is ast.FunctionDef or kind is ast.ExceptHandler:
            if node.name is not None and not allowed_name(node.name):
                return False
        elif (kind is ast.arg or kind is ast.keyword) and (node.arg or "")[:1] == "_":
            return False
    return True


def inline_import(name, globals=None, locals=None, fromlist=(), level=0):
    """The ``__import__`` of inline programs: the modules of `INLINE_IMPORTS`, already loaded by the worker."""
    allowed = INLINE_IMPORTS.get(name, False)
    if level or allowed is False or (allowed is not None and not set(fromlist or ()) <= allowed):
        raise ImportError(f"import of {name!r} is not allowed here")
    return importlib.import_module(name)


INLINE_BUILTINS = {name: getattr(builtins, name) for name in SAFE_BUILTINS if hasattr(builtins, name)}
INLINE_BUILTINS["__import__"] = inline_import


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


WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
QUICK_REFUSAL = re.compile(r"[^\x00-\x7f]|[_.@]|def\s+[A-Za-z0-9]+\s*\[")
QUICK_PATH = sys.version_info < (3, 14)
"""The quick look at the text knows the syntax up to Python 3.13 (``def f[T]`` is refused by the pattern);
newer versions always walk the syntax tree."""
PLAIN_WORDS = frozenset(
    [
        *("and", "or", "not", "in", "is", "if", "elif", "else", "for", "while", "break", "continue", "pass"),
        *("def", "return", "lambda", "del", "assert", "raise"),
    ]
)
"""Keywords of the syntax `closed_program` allows (``import`` and ``from`` are left to the full check)."""
REFUSED_WORDS = frozenset(
    (set(keyword.kwlist) | BUILTIN_NAMES | {"match", "case", "type"}) - SAFE_BUILTINS - PLAIN_WORDS
)


def accept_closed(source):
    """The acceptance test for an inline program: `closed_program`, unless a look at the text shows that it
    has no attribute, no underscore, no non-ASCII identifier (they are NFKC-normalised: a full-width
    ``ｅｖａｌ`` is ``eval``) and no word that is a refused keyword or builtin, which proves it closed."""
    if QUICK_PATH and QUICK_REFUSAL.search(source) is None and REFUSED_WORDS.isdisjoint(WORD.findall(source)):
        return accept_all
    return closed_program


def accept_all(_tree):
    return True


class InlineLimits:
    """The soft address-space limit of inline programs, set before each (when it differs from the last)."""

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


def run_inline(job, limits):
    """Run one inline job here; return its answer ``(header, output)``, or None to fork it."""
    capture = Capture(job["max_output_bytes"])
    saved_stdout = sys.stdout
    start = time.monotonic()
    InlineClock.expired = False
    result = None
    try:
        limits.apply(job["memory_mb"])
        sys.stdout = capture
        signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
        result = run(job["program"], accept=accept_closed(job["program"]), builtins_=INLINE_BUILTINS)
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
    return {"status": status, "error": error, "duration_s": time.monotonic() - start}, bytes(capture.data)


FLUSH_S = 0.002
"""An inline batch's answers go out together, at least this often (and after any program that took longer)."""


class Answers:
    """Answers of an inline batch not sent yet. A message holds a JSON line with one header per answer (its
    output's length in ``n``; ``{"fork": true}`` for a program to fork), then the outputs one after another."""

    def __init__(self, channel):
        self.channel = channel
        self.headers = []
        self.outputs = []
        self.sent = time.monotonic()

    def add(self, answer):
        header, output = answer if answer is not None else ({"fork": True}, b"")
        header["n"] = len(output)
        self.headers.append(header)
        self.outputs.append(output)

    def flush(self, force=False):
        if self.headers and (force or time.monotonic() - self.sent >= FLUSH_S):
            send_message(self.channel, json.dumps(self.headers).encode() + b"\n" + b"".join(self.outputs))
            self.headers, self.outputs = [], []
            self.sent = time.monotonic()


INLINE_GROWTH_BYTES = 64 * 1024 * 1024
"""A batch's process that has grown by this much (memory a program kept, in cycles the namespace's clearing
does not free) stops after that program; the rest of the batch goes on in a fresh one."""
RENEW_EXIT = 75
"""The exit code of a batch's process that stopped early for that reason (no program can exit with it)."""


def mapped_pages(statm):
    """The pages this process has mapped (VmSize), from an open ``/proc/self/statm``."""
    return int(os.pread(statm, 64, 0).split(None, 1)[0])


def inline_child(channel, closing):
    """The child forked for one inline batch: wait for it on ``channel``, answer each job in order; never returns."""
    code = 0
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        limits = InlineLimits()
        run_inline(WARM_UP, limits)  # copies the pages a program touches while the worker is idle, not in a batch
        statm = os.open("/proc/self/statm", os.O_RDONLY)
        most = mapped_pages(statm) + INLINE_GROWTH_BYTES // resource.getpagesize()
        data, _ = receive_message(channel)
        if data is None:
            return
        answers = Answers(channel)
        for job in json.loads(data)["inline"]:
            answers.flush()
            answers.add(run_inline(job, limits))
            if mapped_pages(statm) > most:  # no program after this one may find less room than in a fresh process
                code = RENEW_EXIT
                break
        answers.flush(force=True)
    finally:
        os._exit(code)


WARM_UP = {"program": "x = 1\nprint(x + 1.5)\nx", "timeout_s": 1.0, "memory_mb": 0, "max_output_bytes": 64}


LIVING_RUNNERS = set()
"""The pids of inline runners not yet reaped: a job's clean-up spares these and nothing else. A pid leaves the
set the moment it is reaped (`reap_all`, `InlineRunner.end`), before the kernel can give it to another process."""


class InlineRunner:
    """A child forked from the worker ahead of its batch (the fork is paid while the worker is idle), holding
    nothing but what the worker holds; it runs one batch and exits."""

    def __init__(self, control, closing):
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            self.channel.close()
            inline_child(theirs, [control.fileno(), *closing])
        theirs.close()
        LIVING_RUNNERS.add(self.pid)
        self.code = None

    def alive(self):
        return self.pid in LIVING_RUNNERS

    def end(self):
        """Kill it (if it still runs) and reap it; return its exit code (negative: killed by that signal)."""
        self.channel.close()
        if self.pid in LIVING_RUNNERS:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                self.code = exit_code(os.waitpid(self.pid, 0)[1])
            LIVING_RUNNERS.discard(self.pid)
        return self.code


def serve_inline(control, runner, jobs, data, closing, retire_above):
    """Hand an inline batch (``jobs``, encoded as ``data``) to ``runner`` and relay its answers (see `Answers`);
    then ``{"done": ...}``. A runner that stopped because it grew goes on in a fresh one; a runner that died
    otherwise before answering every job: the jobs it did not answer are to be forked, each on its own (which
    one killed it is not known, answers going in groups)."""
    answered = 0
    try:
        while True:
            answered += relay(runner, data, control, len(jobs) - answered)
            if answered >= len(jobs) or runner.end() != RENEW_EXIT:
                break
            runner = InlineRunner(control, closing)
            data = json.dumps({"inline": jobs[answered:]}).encode()
        if answered < len(jobs):
            send_message(control, json.dumps([{"fork": True, "n": 0}] * (len(jobs) - answered)).encode() + b"\n")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        send_message(control, json.dumps({"done": True, "retire": peak > retire_above}).encode())
    finally:
        runner.end()  # after "done": its exit (unmapping what it inherited) costs a millisecond


def relay(runner, data, control, most):
    """Send ``data`` to ``runner`` and relay its answers to ``control`` until ``most`` came or it ended; how many."""
    answered = 0
    try:
        send_message(runner.channel, data)
        while answered < most:
            answer, _ = receive_message(runner.channel)
            if answer is None:
                break
            send_message(control, answer)
            answered += answer[: answer.find(b"\n")].count(b'"n":')
    except OSError:
        pass
    return answered


RETIRE_GROWTH_BYTES = 256 * 1024 * 1024
"""A worker whose peak resident memory grew by this much since it started asks to be replaced."""


def exit_code(status):
    """A wait status as an exit code (negative: killed by that signal)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def send(fd, data):
    while data:
        data = data[os.write(fd, data) :]


def prctl(option, value):
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def mapped_bytes():
    """The address space this process has mapped already (VmSize), in bytes."""
    with contextlib.suppress(Exception):
        statm = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            return mapped_pages(statm) * resource.getpagesize()
        finally:
            os.close(statm)
    return 0


def processes_of(uid):
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat("/proc/" + entry).st_uid == uid:
                    count += 1
    return count


def set_limits(limits, uid, states=0):
    """Soft = hard, so the program cannot raise them; one extra CPU second between SIGXCPU and SIGKILL.

    ``states``: the states the worker may keep (``state: fork``). They are processes of the uid, made after a job
    starts, and a job forked from a state inherits the state's process limit (it cannot be raised): so every job
    of such a worker gets the same limit, ``max_processes`` plus room for the worker, its states, an inline runner
    and the two processes a state's fork makes."""
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
        # RLIMIT_NPROC counts every process of the uid (in its user namespace): with a uid of its own per
        # worker, that is the worker and this job.
        count = limits["processes"] + (states + 4 if states else processes_of(uid))
        resource.setrlimit(resource.RLIMIT_NPROC, (count, count))


def child_main(config, limits, fds, workdir, closing, cmd=None):
    """The forked job process; never returns. ``cmd``: the command socket of a job whose state may be kept."""
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
        set_limits(limits, os.getuid(), config.get("states", 0))
        random.seed()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            with contextlib.suppress(Exception):
                numpy.random.seed()
        pid = os.getpid()
        send(channel, b"ready\n")
    except BaseException as exc:
        cannot_start(exc)

    if cmd is None:
        status, error = run(source)
        report(pid, channel, status, error)
    # state: fork. A kept job becomes a state, and each job forked from it comes back here, so that `run` is called
    # from this frame for the whole program and for every later step: the depth of the program's frames is the
    # same as replay's (a recursion limit hits at the same depth).
    kept = {"namespace": {"__name__": "__main__", "__builtins__": builtins}, "line_offset": 0, "from_state": False}
    while True:
        status, error = run(source, kept=kept)
        if status == "fallback":
            status, error = whole_program_error(source, kept)
        report(pid, channel, status, error, kept)
        request, fds, state_cmd, middle = become_state(cmd, channel, workdir, kept["namespace"])
        kept = {"namespace": kept["namespace"], "line_offset": request["line_offset"], "from_state": True}
        whole, channel, cmd, workdir = start_step(request, fds, state_cmd, workdir, middle)
        source, kept["whole"] = whole[request["skip"] :], whole
        pid = os.getpid()


def cannot_start(exc):
    """A job's set-up failed (before it said ``ready``): say why on its stderr and exit 70."""
    with contextlib.suppress(BaseException):
        os.write(2, ("sandbox worker: cannot start the job: " + describe(exc) + "\n").encode())
    os._exit(70)


def report(pid, channel, status, error, kept=None):
    """Send the verdict on the channel, then exit, unless the verdict is ok and ``kept`` (`run`) says keepable."""
    if os.getpid() != pid:  # a child the program forked: only the original process reports
        os._exit(0)
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    try:
        keys = ("display", "statements", "whole_error")
        counts = {key: kept[key] for key in keys if key in kept} if kept is not None else {}
        verdict = json.dumps({"status": status, "error": error, **counts}).encode("utf-8")
    except BaseException:
        verdict = b'{"status": "memory", "error": "MemoryError"}' if status == "memory" else b'{"status": "error"}'
    try:
        send(channel, verdict + b"\n")
    except BaseException:
        os._exit(0)
    if not (kept is not None and kept.get("keepable") and status == "ok"):
        os._exit(0)


# --- kept states (``state: fork``) ---------------------------------------------------------------------
#
# A job sent with a command socket may keep its state: once its program ran ``ok``, it reports its verdict,
# gives up its output pipes and working directory, says ``state`` on that socket and stops itself (SIGSTOP).
# The worker keeps it (`keep_state`) only if it is alone (no other process of the job), single-threaded, left
# no file behind, and the worker holds fewer than its ``states`` cap. A later job of a program that starts with
# that one goes to the state (`start_from_state`): the worker hands it the job's pipes, continues it, and the
# state forks twice (the job is then an orphan, which the worker, a subreaper, adopts as its own child) and
# stops again. The job runs only the new step, in the state's namespace.
#
# A stopped state runs no code. Before it is used, and whenever a job ended, the worker checks that it is
# still stopped, still single-threaded, has no pending signal and has not run since it stopped (its context
# switches and run time); a state that fails (a job signalled it, say) is killed, and its children's programs
# run from scratch. A state thus never runs while another job does.

STATES = {}
"""The kept states: id -> `State`."""


class State:
    def __init__(self, pid, cmd):
        self.pid = pid
        self.cmd = cmd  # the worker's end of its command socket
        self.seen = None  # its `fingerprint` when it last stopped


def fingerprint(pid):
    """What changes when a process runs or is signalled: its /proc status lines and run time; None if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    keep = (b"State:", b"Threads:", b"SigPnd:", b"ShdPnd:", b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")
    found = tuple(line for line in lines if line.startswith(keep))
    with contextlib.suppress(OSError), open(f"/proc/{pid}/schedstat", "rb") as f:
        found += (f.read().split()[0],)
    try:  # a process's /proc files are its uid's only while it is dumpable (then its memory is open to its uid)
        found += (b"Owner: %d" % os.stat(f"/proc/{pid}/mem").st_uid,)
    except OSError:
        return None
    return found


def idle(found):
    """A fingerprint of a stopped, single-threaded process with no pending signal."""
    if found is None:
        return False
    fields = dict(line.split(None, 1) for line in found if b":" in line and len(line.split(None, 1)) == 2)
    pending = int(fields.get(b"SigPnd:", b"1"), 16) | int(fields.get(b"ShdPnd:", b"1"), 16)
    stopped = fields.get(b"State:", b"").startswith(b"T") and fields.get(b"Threads:") == b"1" and pending == 0
    # Dumpable (it may have made itself so), its memory would be open to every job of the worker; root is open anyway.
    return stopped and (os.getuid() == 0 or fields.get(b"Owner:") != str(os.getuid()).encode())


def wait_stopped(pid, seconds=2.0):
    """Wait until ``pid`` is stopped; its fingerprint then, or None when it did not stop in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = fingerprint(pid)
        if found is None:
            return None
        if idle(found):
            return found
        time.sleep(0.0002)
    return None


def drop_state(state_id):
    state = STATES.pop(state_id, None)
    if state is not None:
        with contextlib.suppress(OSError):
            os.kill(state.pid, signal.SIGKILL)
        state.cmd.close()


def audit_states():
    """Kill every state that ran, or was signalled, since it stopped."""
    for state_id, state in list(STATES.items()):
        if fingerprint(state.pid) != state.seen:
            drop_state(state_id)


def state_pids():
    return {state.pid for state in STATES.values()}


def become_state(cmd_fd, channel, workdir, namespace):
    """After a kept job's ``ok`` verdict: wait, stopped, to fork the job of each child step. Returns only in such a
    job: ``(request, fds, the state's command socket, the pid of the process between)``."""
    try:
        if os.path.realpath(os.getcwd()) != os.path.realpath(workdir):
            os._exit(0)  # the program changed directory: its children would not start where replay starts them
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.close(channel)
        if shares_with_children(cmd_fd):
            os._exit(0)
        set_oom_score(1000)  # out of memory, a stopped state goes first, not a running job (start_step resets it)
        os.chdir("/")
        cmd = socket.socket(fileno=cmd_fd)
        send_message(cmd, b'{"state": true}')
    except BaseException:
        os._exit(0)
    while True:
        os.kill(os.getpid(), signal.SIGSTOP)
        try:
            data, fds = receive_message(cmd)
        except BaseException:
            os._exit(0)
        if data is None or len(fds) != JOB_FDS:
            os._exit(0)
        generator = random.getstate()  # os.fork reseeds `random` in the child (its at-fork hook); the job continues it
        first = os.fork()
        if first == 0:
            middle = os.getpid()
            second = os.fork()
            if second == 0:
                random.setstate(generator)
                try:
                    return json.loads(data), fds, cmd, middle
                except BaseException:
                    os._exit(70)
            with contextlib.suppress(BaseException):
                send_message(cmd, json.dumps({"pid": second}).encode())
            os._exit(0)
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(first, 0)


def set_oom_score(value):
    """Write this process's ``oom_score_adj``. A non-dumpable process's /proc files belong to root, so it is
    dumpable for that moment, when no other job runs."""
    prctl(PR_SET_DUMPABLE, 1)
    try:
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    finally:
        prctl(PR_SET_DUMPABLE, 0)


def shares_with_children(cmd_fd):
    """Whether this process holds what its forks would share, unlike replays of its program: an open file (an
    unlinked temporary file, say: forks share its offset) or writable shared memory (``mmap``): then it keeps no
    state."""
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) not in (0, 1, 2, cmd_fd) and os.path.exists(f"/proc/self/fd/{fd}"):
            return True  # (the listing's own descriptor is closed by now)
    with open("/proc/self/maps") as maps:
        return any(len(f) > 1 and f[1][1:2] == "w" and f[1][3:4] == "s" for f in (line.split() for line in maps))


def start_step(request, fds, state_cmd, state_workdir, middle):
    """Set up a job forked from a state (adopted by the worker, its pipes, a fresh directory, lowered limits);
    returns ``(its whole program, verdict channel, command socket, directory)``."""
    stdin_fd, stdout_fd, stderr_fd, channel, cmd = fds
    try:
        deadline = time.monotonic() + 2.0
        while os.getppid() == middle and time.monotonic() < deadline:  # until the worker adopted it
            time.sleep(0.0002)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != request["worker"]:
            os._exit(70)
        os.setsid()
        state_cmd.close()
        for fd, target in ((stdin_fd, 0), (stdout_fd, 1), (stderr_fd, 2)):
            os.dup2(fd, target)
            os.close(fd)
        workdir = request["workdir"]
        os.chdir(workdir)
        for key in ("HOME", "TMPDIR", "PWD"):
            if os.environ.get(key) == state_workdir:
                os.environ[key] = workdir
        if tempfile.tempdir == state_workdir:
            tempfile.tempdir = None
        set_oom_score(0)  # a job again (see become_state)
        with io.FileIO(0, "r", closefd=False) as raw:
            whole = raw.read().decode("utf-8", "replace")
        lower_limits(request)
        send(channel, b"ready\n")
    except BaseException as exc:
        cannot_start(exc)
    return whole, channel, cmd, workdir


def whole_program_error(whole, kept):
    """New lines that do not compile on their own: the whole program's syntax error if it has one (nothing ran,
    nothing was printed), else ``fallback`` (the whole program runs from scratch)."""
    try:
        compile(kept.get("whole", whole), FILENAME, "exec", ast.PyCF_ONLY_AST)
    except (SyntaxError, ValueError) as exc:
        kept["whole_error"] = 1
        return "error", describe(exc)
    except BaseException:
        pass
    return "fallback", ""


def lower_limits(request):
    """A job forked from a state gets what its whole program would have left of its CPU time. (Its process limit
    is the state's: every job of a worker keeping states has the same one, see `set_limits`.)"""
    value = request["cpu_s"]
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if value > 0 and (hard == resource.RLIM_INFINITY or value < hard):
            resource.setrlimit(resource.RLIMIT_CPU, (value, value + 1))


def start_from_state(message, fds, workdir, cmd_end, scratch):
    """Hand a job to the state it forks from; the job's pid, or None when the state is gone or misbehaved (the
    state is then killed, and the job's program runs from scratch)."""
    state_id = message["from"]
    state = STATES.get(state_id)
    if state is None or fingerprint(state.pid) != state.seen or not idle(state.seen):
        drop_state(state_id)
        return None
    request = {
        "workdir": workdir,
        "line_offset": message["line_offset"],
        "skip": message["skip"],
        "cpu_s": message["cpu_s"],
        "processes": message["processes"],
        "worker": os.getpid(),
    }
    try:
        send_message(state.cmd, json.dumps(request).encode(), [*fds[:4], cmd_end])
        os.kill(state.pid, signal.SIGCONT)
        readable, _, _ = select.select([state.cmd], [], [], 2.0)
        pid = int(json.loads(short_message(state.cmd) if readable else b"")["pid"])
        state.seen = wait_stopped(state.pid)
        if state.seen is None or pid in state_pids() or pid in LIVING_RUNNERS:
            raise ValueError("the state misbehaved")
        deadline = time.monotonic() + 2.0
        while parent_of(pid) != os.getpid():  # adopted once the intermediate process exited
            if time.monotonic() > deadline:
                raise ValueError("the job was not adopted")
            reap_all()
            time.sleep(0.0002)
        return pid
    except BaseException:
        # The job may have been forked already and be running: nothing it or the state started may outlive this.
        drop_state(state_id)
        kill_below()
        wipe_scratch(scratch, os.getuid())
        return None


def short_message(sock):
    """One record from a job or a state, at most 256 bytes, never file descriptors: what they send the worker
    (``state``, a pid) is short, and reading more would let them fill the worker's memory."""
    data = sock.recv(256)
    return data[1:] if data[:1] == b"." else b""


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def keep_state(job, scratch, cap):
    """A kept job said ``state``: keep it if it is alone, idle, left no file and there is room; else end it."""
    found = wait_stopped(job.pid)
    others = [pid for pid in descendants() if pid != job.pid and pid not in LIVING_RUNNERS and pid not in state_pids()]
    files = os.listdir(job.workdir) if os.path.isdir(job.workdir) else ["?"]
    left = [path for place in scratch for path in owned_by(place, os.getuid()) if path != job.workdir]
    if found is None or others or files or left or len(STATES) >= cap:
        job.code = 0  # its program finished and reported its verdict; only its state is not kept
        job.cmd.close()
        finish(job, scratch)
        return
    state_id = next_state_id()
    state = State(job.pid, job.cmd)
    state.seen = found
    STATES[state_id] = state
    remove_tree(job.workdir)
    with contextlib.suppress(OSError):
        send(job.status_fd, json.dumps({"exit": 0, "state": state_id}).encode() + b"\n")
    os.close(job.status_fd)
    audit_states()


_state_ids = iter(range(1, 2**62))


def next_state_id():
    return next(_state_ids)


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
        ended[pid] = exit_code(status)
        LIVING_RUNNERS.discard(pid)
        for state_id, state in list(STATES.items()):
            if state.pid == pid:
                drop_state(state_id)


def has_children():
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def kill_everything(job_pid):
    """SIGKILL the job's process group and every descendant but the inline runner waiting for its batch and the kept
    states, until none is left."""
    with contextlib.suppress(OSError):
        os.killpg(job_pid, signal.SIGKILL)
    kill_below()


def kill_below():
    """SIGKILL every descendant but the inline runner waiting for its batch and the kept states, until none is
    left."""
    for _ in range(200):
        reap_all()
        if not has_children():  # as a subreaper, anything left below would have a live or unreaped child here
            return
        kept = state_pids()
        pids = [pid for pid in descendants() if pid not in LIVING_RUNNERS and pid not in kept]
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

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError:
        pass
    except RecursionError:  # folders nested deeper than the recursion limit: coreutils walk any depth
        import subprocess

        for command in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--", path]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)


IPC_REMOVE = (("shm", "shmid", "shmctl"), ("msg", "msqid", "msgctl"), ("sem", "semid", "semctl"))
IPC_RMID = 0


def wipe_scratch(places, uid):
    """Remove everything ``uid`` owns in the writable ``places`` (``/tmp``, ``/dev/shm``, ``/dev/mqueue``) and
    every System V IPC object: what a job left there is gone before the next job. Only called in a sandbox (its
    own ``/tmp``, IPC namespace and uid), never with ``isolation: none``. False when something is left (the
    worker then retires: a new sandbox starts empty)."""
    if not places:
        return True
    for place in places:
        for path in owned_by(place, uid):
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    remove_tree(path)
                else:
                    os.unlink(path)
            except OSError:
                pass
    libc = None
    for kind, id_column, call in IPC_REMOVE:
        try:
            with open("/proc/sysvipc/" + kind) as f:
                header, *rows = f.read().splitlines()
        except OSError:
            continue
        columns = header.split()
        for row in rows:
            fields = row.split()  # every object: the IPC namespace is the sandbox's, and an owner can give one away
            if libc is None:
                libc = ctypes.CDLL(None, use_errno=True)
            with contextlib.suppress(Exception):
                getattr(libc, call)(int(fields[columns.index(id_column)]), 0 if call == "semctl" else IPC_RMID, 0)
    return not any(owned_by(place, uid) for place in places)


def owned_by(place, uid):
    """The paths of the entries of folder ``place`` that ``uid`` owns."""
    try:
        names = os.listdir(place)
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(place, name)
        with contextlib.suppress(OSError):
            if os.lstat(path).st_uid == uid:
                found.append(path)
    return found


class Job:
    def __init__(self, pid, status_fd, workdir, cmd=None):
        self.pid = pid
        self.status_fd = status_fd
        self.workdir = workdir
        self.code = None
        self.cmd = cmd  # the worker's end of the command socket of a job whose state may be kept


def finish(job, scratch):
    if job.cmd is not None:
        job.cmd.close()
    kill_everything(job.pid)
    remove_tree(job.workdir)
    clean = wipe_scratch(scratch, os.getuid())
    with contextlib.suppress(OSError):
        send(job.status_fd, json.dumps({"exit": job.code if job.code is not None else -9}).encode() + b"\n")
    os.close(job.status_fd)
    if not clean:  # what the job left could not be removed: no later job may see it
        os._exit(0)
    audit_states()


def give_up_privileges(uid):
    """Switch to ``uid`` (from root; that drops every capability) and become non-dumpable, so that the jobs,
    which run under the same uid, can neither trace this process nor read or write its memory."""
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    prctl(PR_SET_DUMPABLE, 0)


def main():
    if sys.argv[1].startswith("/"):  # a Unix socket to connect to (the docker verifier binds its directory in)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control.connect(sys.argv[1])
    else:
        control = socket.socket(fileno=int(sys.argv[1]))
    config = json.loads(sys.argv[2])
    give_up_privileges(config.get("uid"))
    scratch = config.get("scratch", [])
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
    retire_above = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    retire_above += config.get("retire_growth_bytes", RETIRE_GROWTH_BYTES)
    spare = InlineRunner(control, [wake_r, wake_w]) if config.get("inline") else None
    send_message(control, json.dumps({"ready": True, "pid": os.getpid(), "uid": os.getuid()}).encode())

    job = None
    cap = config.get("states", 0)
    while True:
        watched = [control, wake_r] if job is None or job.cmd is None else [control, wake_r, job.cmd]
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            with contextlib.suppress(OSError):
                while os.read(wake_r, 4096):
                    pass
        if job is not None:
            ended = reap_all()
            if job.pid in ended:
                job.code = ended[job.pid]
                finish(job, scratch)
                job = None
            elif job.cmd is not None and job.cmd in readable:
                with contextlib.suppress(OSError):
                    if short_message(job.cmd) == b'{"state": true}':
                        keep_state(job, scratch, cap)
                        job = None
        else:
            reap_all()
        if control not in readable:
            continue
        try:
            data, fds = receive_message(control)
        except InterruptedError:
            continue
        if data is None:  # the parent is gone (or broke the framing)
            if job is not None:
                finish(job, scratch)
            os._exit(0)
        message = json.loads(data)
        if "inline" in message and job is None:
            runner = spare if spare is not None and spare.alive() else InlineRunner(control, [wake_r, wake_w])
            serve_inline(control, runner, message["inline"], data, [wake_r, wake_w], retire_above)
            spare = InlineRunner(control, [wake_r, wake_w])  # the next batch's, forked while this one's are read
            continue
        if message.get("kill"):
            if job is not None:
                finish(job, scratch)
                job = None
            continue
        if "drop" in message:
            for state_id in message["drop"]:
                drop_state(state_id)
            continue
        if job is not None or len(fds) != JOB_FDS:  # the parent never does this; refuse rather than guess
            for fd in fds:
                os.close(fd)
            continue
        workdir = tempfile.mkdtemp(prefix="rstar-sandbox-")
        ours = theirs = None
        if (message.get("keep") or "from" in message) and cap:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if "from" in message:
            pid = start_from_state(message, fds, workdir, theirs.fileno(), scratch) if theirs is not None else None
            if pid is None:
                for fd in fds[:4]:
                    os.close(fd)
                for end in (ours, theirs):
                    if end is not None:
                        end.close()
                remove_tree(workdir)
                with contextlib.suppress(OSError):
                    send(fds[4], b'{"lost": true}\n{"exit": 0}\n')
                os.close(fds[4])
                continue
        else:
            pid = os.fork()
            if pid == 0:
                closing = [control.fileno(), wake_r, wake_w, *(c.cmd.fileno() for c in STATES.values())]
                if ours is not None:
                    closing.append(ours.fileno())
                if spare is not None and spare.channel.fileno() >= 0:  # the next inline batch's runner: not the job's
                    closing.append(spare.channel.fileno())
                child_main(config, message, list(fds), workdir, closing, theirs.fileno() if theirs else None)
        if theirs is not None:
            theirs.close()
        for fd in fds[:4]:
            os.close(fd)
        job = Job(pid, fds[4], workdir, ours)
        with contextlib.suppress(OSError):
            send(job.status_fd, json.dumps({"pid": pid, "workdir": workdir}).encode() + b"\n")


if __name__ == "__main__":
    main()
