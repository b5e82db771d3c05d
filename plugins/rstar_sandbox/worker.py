"""The program run inside each sandbox process of the ``subprocess`` verifier.

The parent starts ``python -c <this file's source> CHANNEL_FD MEMORY_MB CPU_S`` in a fresh session
and temporary directory, sends the untrusted program on stdin and closes it. This script

1. reads the whole program (so the program itself sees an empty stdin),
2. limits its own address space (``RLIMIT_AS``), CPU time (``RLIMIT_CPU``) and core dumps,
3. writes ``ready`` to the result channel (an inherited pipe, separate from stdout),
4. runs the program like a notebook cell: every statement is executed and, when the last top-level
   statement is an expression whose value is not None, ``str(value)`` is printed,
5. writes one JSON line ``{"status": ..., "error": ...}`` to the channel and exits at once (threads
   the program started do not keep it alive).

The program's stdout goes to the parent untouched; the parent enforces the wall-clock deadline and
the output cap. Only the standard library is used, and the source stays valid for Python 3.8+
because the sandbox interpreter may be another one than rstar's.
"""

import ast
import builtins
import contextlib
import json
import os
import resource
import sys

MAX_ERROR_CHARS = 2000
FILENAME = "<program>"


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


def set_limits(memory_mb, cpu_s):
    """Soft = hard for memory so the program cannot raise it; one extra CPU second between SIGXCPU and SIGKILL."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))


def run(source):
    """Execute ``source`` REPL-style; return ``(status, error)``."""
    try:
        tree = ast.parse(source, FILENAME, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        body = compile(tree, FILENAME, "exec")
        tail = compile(last, FILENAME, "eval") if last is not None else None
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


def send(fd, data):
    while data:
        data = data[os.write(fd, data) :]


def main():
    channel = int(sys.argv[1])
    memory_mb = int(sys.argv[2])
    cpu_s = int(sys.argv[3])
    source = sys.stdin.buffer.read().decode("utf-8", "replace")
    set_limits(memory_mb, cpu_s)
    pid = os.getpid()
    send(channel, b"ready\n")

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


if __name__ == "__main__":
    main()
