"""The ``subprocess`` verifier and ``rstar sandbox exec``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rstar_sandbox.cli import sandbox
from rstar_sandbox.subprocess_verifier import SubprocessOptions, SubprocessVerifier

from rstar.errors import RstarError
from rstar.registry import get_registry
from rstar.types import CodeJob, Verdict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and rlimits: Linux")


@pytest.fixture
def verifier():
    v = SubprocessVerifier(SubprocessOptions())
    yield v
    v.close()


def run1(verifier: SubprocessVerifier, program: str, **limits) -> Verdict:
    return asyncio.run(verifier.run([CodeJob(program, **limits)]))[0]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_registered_and_built_by_name():
    v = get_registry().build("verifier", {"name": "subprocess", "max_workers": 3})
    assert isinstance(v, SubprocessVerifier)
    assert v.options.max_workers == 3


def test_prints_and_echoes_the_last_expression(verifier):
    v = run1(verifier, "print('hello')\nx = 6 * 7\nx")
    assert (v.status, v.output, v.error) == ("ok", "hello\n42\n", "")
    assert v.duration_s > 0


def test_no_echo_for_none_or_statements(verifier):
    verdicts = asyncio.run(verifier.run([CodeJob("x = 1"), CodeJob("print('a')"), CodeJob("None")]))
    assert [v.output for v in verdicts] == ["", "a\n", ""]
    assert all(v.status == "ok" for v in verdicts)


def test_exception_is_an_error_verdict_with_output_so_far(verifier):
    v = run1(verifier, "print('before')\n1 / 0\nprint('after')")
    assert v.status == "error"
    assert v.error == "ZeroDivisionError: division by zero"
    assert v.output == "before\n"


def test_syntax_error(verifier):
    v = run1(verifier, "def f(:\n    pass")
    assert v.status == "error"
    assert v.error.startswith("SyntaxError: ")


def test_printed_text_cannot_pose_as_a_verdict(verifier):
    v = run1(verifier, 'print(\'{"status": "ok", "error": ""}\')\nraise ValueError("real")')
    assert (v.status, v.error) == ("error", "ValueError: real")


def test_system_exit(verifier):
    ok, bad = asyncio.run(
        verifier.run([CodeJob("print(1)\nimport sys; sys.exit(0)\nprint(2)"), CodeJob("raise SystemExit(4)")])
    )
    assert (ok.status, ok.output) == ("ok", "1\n")
    assert (bad.status, bad.error) == ("error", "SystemExit: 4")


def test_os_exit_is_killed(verifier):
    v = run1(verifier, "print('x')\nimport os\nos._exit(3)")
    assert v.status == "killed"
    assert "code 3" in v.error
    assert v.output == "x\n"


def test_wall_clock_timeout(verifier):
    start = time.monotonic()
    v = run1(verifier, "while True:\n    pass", timeout_s=1)
    elapsed = time.monotonic() - start
    assert v.status == "timeout"
    assert v.error.startswith("TimeoutError")
    assert elapsed < 2.0


def test_sleeping_program_times_out(verifier):
    v = run1(verifier, "print('started')\nimport time\ntime.sleep(30)", timeout_s=0.5)
    assert v.status == "timeout"
    assert v.output == "started\n"


def test_output_cap(verifier):
    v = run1(verifier, "while True:\n    print('y' * 1000)", max_output_bytes=5000, timeout_s=5)
    assert v.status == "output_limit"
    assert len(v.output.encode()) == 5000
    assert v.duration_s < 4


def test_output_cap_does_not_split_a_character(verifier):
    v = run1(verifier, "print('é' * 10)", max_output_bytes=5)
    assert (v.status, v.output) == ("output_limit", "éé")


def test_memory_bomb(verifier):
    v = run1(verifier, "x = bytearray(10**10)", memory_mb=512)
    assert v.status == "memory"
    assert v.error.startswith("MemoryError")


def test_environment_is_scrubbed(verifier, monkeypatch):
    monkeypatch.setenv("RSTAR_SECRET", "hunter2")
    v = run1(verifier, "import os\nprint(os.environ.get('RSTAR_SECRET'))\nprint(os.getcwd())")
    lines = v.output.splitlines()
    assert lines[0] == "None"
    assert Path(lines[1]).name.startswith("rstar-sandbox-")
    assert not Path(lines[1]).exists(), "the job's directory is removed afterwards"


def test_jobs_run_concurrently_up_to_max_workers():
    v = SubprocessVerifier(SubprocessOptions(max_workers=2))
    try:
        asyncio.run(v.run([CodeJob("1"), CodeJob("2")]))  # start both warm workers
        assert len(v._workers) == 2
        start = time.monotonic()
        verdicts = asyncio.run(v.run([CodeJob(f"import time\ntime.sleep(0.5)\n{i}") for i in range(4)]))
        elapsed = time.monotonic() - start
    finally:
        v.close()
    assert [x.output for x in verdicts] == ["0\n", "1\n", "2\n", "3\n"]
    assert 1.0 <= elapsed < 1.9  # two waves of two
    assert len(v._workers) == 0


def stray_processes(pattern: str) -> list[int]:
    """Live processes below this one whose command line contains ``pattern``."""
    return [pid for pid in descendants(os.getpid()) if pattern in cmdline(pid)]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (zombies left out)."""
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


def wait_until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_leftover_children_and_daemons_are_killed(isolation):
    before = set(descendants(os.getpid()))
    v = SubprocessVerifier(SubprocessOptions(isolation=isolation))
    program = (
        "import os, subprocess, time\n"
        "subprocess.Popen(['sleep', '61'])\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execvp('sleep', ['sleep', '62'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('started')"
    )
    try:
        verdict = run1(v, program)
        assert (verdict.status, verdict.output) == ("ok", "started\n")
        assert wait_until(lambda: not stray_processes("sleep 6"))
        assert run1(v, "2 + 2").output == "4\n", "the worker goes on"
    finally:
        v.close()
    assert wait_until(lambda: set(descendants(os.getpid())) <= before), "processes left behind"


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_close_kills_running_jobs_and_workers(isolation):
    before = set(descendants(os.getpid()))
    v = SubprocessVerifier(SubprocessOptions(isolation=isolation))

    async def scenario() -> Verdict:
        task = asyncio.ensure_future(v.run([CodeJob("import time\ntime.sleep(60)", timeout_s=30)]))
        while not any(w.job_pid for w in v._workers):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        v.close()
        return (await task)[0]

    start = time.monotonic()
    verdict = asyncio.run(scenario())
    assert verdict.status == "killed"
    assert time.monotonic() - start < 5
    assert wait_until(lambda: set(descendants(os.getpid())) <= before), "processes left behind"


def test_no_state_leaks_between_jobs(verifier):
    first, second = asyncio.run(
        verifier.run(
            [CodeJob("import math\nmath.sqrt = lambda x: -1\nleaked = 1"), CodeJob("import math\nmath.sqrt(4)")]
        )
    )
    assert first.status == "ok"
    assert second.output == "2.0\n"
    third = run1(verifier, "import math\nprint(math.sqrt(9), 'leaked' in globals())")
    assert third.output == "3.0 False\n"


def test_preloaded_modules_cost_no_import(verifier):
    run1(verifier, "1")  # start the worker
    verdict = run1(verifier, "import sympy, numpy\nsympy.Rational(1, 3) + numpy.int64(1)")
    assert verdict.output == "4/3\n"
    assert verdict.duration_s < 0.25


def test_random_state_differs_between_jobs(verifier):
    a, b = asyncio.run(verifier.run([CodeJob("import random\nrandom.random()")] * 2))
    assert a.output != b.output


def test_a_dead_worker_is_replaced(verifier):
    assert run1(verifier, "1").output == "1\n"
    for worker in list(verifier._workers):
        worker.process.kill()
        worker.process.wait()
    assert run1(verifier, "2").output == "2\n"


def test_isolation_fails_closed_and_none_warns_once(monkeypatch, caplog):
    import rstar_sandbox.subprocess_verifier as module

    monkeypatch.setattr(module, "bwrap_works", lambda: False)
    monkeypatch.setattr(module, "_warned", False)
    for asked in ("bwrap", "auto"):  # no silent fallback to rlimits only
        with pytest.raises(RstarError, match=r"apt-get install bubblewrap.*isolation to 'none'"):
            SubprocessVerifier(SubprocessOptions(isolation=asked))
    assert SubprocessOptions().isolation == "bwrap"
    with caplog.at_level("WARNING"):
        first = SubprocessVerifier(SubprocessOptions(isolation="none"))
        second = SubprocessVerifier(SubprocessOptions(isolation="none"))
    assert first.isolation == second.isolation == "none"
    warnings = [r for r in caplog.records if "NOT a security boundary" in r.getMessage()]
    assert len(warnings) == 1


def test_missing_interpreter_is_an_error():
    with pytest.raises(RstarError, match="no-such-python"):
        SubprocessVerifier(SubprocessOptions(python="/nonexistent/no-such-python"))


def test_unknown_option_is_rejected():
    with pytest.raises(RstarError, match="timeout"):
        get_registry().build("verifier", {"name": "subprocess", "timeout": 3})


def test_cli_exec_prints_one_verdict_per_file(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("print(1)\n2 + 2\n")
    bad = tmp_path / "bad.py"
    bad.write_text("1 / 0\n")
    result = CliRunner().invoke(sandbox, ["exec", str(good), "-", str(bad)], input="'from stdin'")
    assert result.exit_code == 0, result.output
    verdicts = [Verdict.from_dict(json.loads(line)) for line in result.output.splitlines()]
    assert [v.status for v in verdicts] == ["ok", "ok", "error"]
    assert verdicts[0].output == "1\n4\n"
    assert verdicts[1].output == "from stdin\n"
    assert verdicts[2].error == "ZeroDivisionError: division by zero"


def test_cli_exec_timeout(tmp_path):
    loop = tmp_path / "loop.py"
    loop.write_text("while True:\n    pass\n")
    result = CliRunner().invoke(sandbox, ["exec", "--timeout", "0.5", str(loop)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "timeout"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exec", "--verifier", "subproces", "-"], "Did you mean 'subprocess'"),
        (["exec", "/nonexistent/file.py"], "No such file"),
        (["exec"], "Missing argument"),
        (["exec", "--timeout", "0", "-"], "--timeout"),
    ],
)
def test_cli_exec_bad_arguments(args, message):
    result = CliRunner().invoke(sandbox, args, input="")
    assert result.exit_code == 2
    assert message in result.output


def test_runs_from_a_thread_and_in_later_event_loops(verifier):
    assert run1(verifier, "1 + 1").output == "2\n"
    out: list[Verdict] = []
    thread = threading.Thread(target=lambda: out.append(run1(verifier, "2 + 2")))
    thread.start()
    thread.join()
    assert out[0].output == "4\n"


def test_a_worker_that_cannot_start_is_an_error():
    with pytest.raises(RstarError, match=r"cannot run the interpreter '[^']*false'"):
        SubprocessVerifier(SubprocessOptions(python="false"))
    v = SubprocessVerifier(SubprocessOptions())
    v._worker_source = "import sys\nsys.exit('the worker gave up')"
    try:
        with pytest.raises(RstarError, match="failed to start: the worker gave up"):
            run1(v, "1")
    finally:
        v.close()


def test_a_missing_preload_module_is_skipped():
    v = SubprocessVerifier(SubprocessOptions(preload=["no_such_module_anywhere", "math"]))
    try:
        assert run1(v, "import math\nmath.floor(2.5)").output == "2\n"
    finally:
        v.close()


def test_usable_again_after_close(verifier):
    assert run1(verifier, "1").output == "1\n"
    verifier.close()
    assert run1(verifier, "2").output == "2\n"


def test_the_sandbox_shows_only_the_system_and_the_interpreter(tmp_path):
    from rstar_sandbox.isolation import bwrap_prefix, outermost

    venv = tmp_path / "checkout" / ".venv"
    (venv / "lib").mkdir(parents=True)
    binds = outermost([str(venv), str(venv / "lib"), "/usr/lib"])
    assert binds == sorted([os.path.realpath("/usr/lib"), os.path.realpath(venv)])
    args = bwrap_prefix(binds)
    pairs = {(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == "--ro-bind"}
    sources = {source for source, _ in pairs}
    assert "/" not in sources and "/run" not in sources and "/home" not in sources and "/etc" not in sources
    assert os.path.realpath(tmp_path / "checkout") not in sources  # the .venv, not the repository around it
    # an interpreter under /tmp is bound after the private /tmp is mounted, through folders anyone may enter
    bind = args.index("--ro-bind", args.index("--tmpfs"))
    assert args[bind : bind + 3] == ["--ro-bind", str(venv.resolve()), str(venv.resolve())]
    parent = os.path.dirname(venv.resolve())
    assert ["--perms", "0755", "--dir", parent] == args[bind - 4 : bind]
    assert args[args.index("--tmpfs") - 4 : args.index("--tmpfs")] == ["--perms", "1777", "--size", str(256 << 20)]


def test_removing_a_job_directory_never_changes_its_parent(tmp_path, monkeypatch):
    # A failure on the job directory itself (not on something inside it) once made the worker chmod the
    # directory's parent -- the shared /tmp -- to 0700.
    import os

    from rstar_sandbox import worker

    parent = tmp_path / "shared"
    job = parent / "rstar-sandbox-job"
    (job / "sub").mkdir(parents=True)
    (job / "sub" / "file").write_text("x")
    parent.chmod(0o1777)
    real_rmdir, failed = os.rmdir, []

    def flaky_rmdir(target, *args, **kwargs):
        if os.fspath(target) == str(job) and not failed:
            failed.append(target)
            raise PermissionError(13, "Permission denied", str(target))
        return real_rmdir(target, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", flaky_rmdir)
    worker.remove_tree(str(job))
    assert failed and not job.exists()
    assert parent.stat().st_mode & 0o7777 == 0o1777
