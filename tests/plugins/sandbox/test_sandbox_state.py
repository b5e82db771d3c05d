"""``state: fork``: a child step runs in a fork of its parent's stopped process; verdicts equal ``replay``'s.

Every corpus here is a set of programs where some continue others (the parent's program, a line break, the
child's new lines), as the search builds them. Each runs through the verifier twice, with ``state: replay`` and
``state: fork``, parents in earlier batches than their children (as in a search), and the verdicts must be the
same: status, output and error (time aside).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from rstar_sandbox.subprocess_verifier import SubprocessOptions, SubprocessVerifier
from test_sandbox_inline import CLOSED, OPEN

from rstar.registry import get_registry
from rstar.types import CodeJob, Verdict

DATA = Path(__file__).with_name("data")


def chains(*steps_of_each: list[str]) -> list[str]:
    """Every program along each chain of steps: the first step, the first two, ... (joined by line breaks)."""
    programs = []
    for steps in steps_of_each:
        for n in range(1, len(steps) + 1):
            programs.append("\n".join(steps[:n]))
    return programs


def tree(root: str, *branches: list[str]) -> list[str]:
    """A root step and several chains of children below it."""
    return chains(*([root, *branch] for branch in branches))


HAND_WRITTEN = [
    # output printed by earlier steps, and the value of a trailing expression, which a child no longer shows
    *tree("print('first')\nx = 3", ["x * 2", "print(x + 1)"], ["y = x ** 2\ny", "# only a comment", "print(y)"]),
    # an ancestor that raises errs again in every descendant
    *tree("a = 1\nprint('before')", ["b = 1 / 0", "print('after')", "c = 2"], ["a += 1\na"]),
    # seeded random numbers continue from the parent's generator, as the whole program's would
    *tree(
        "import random\nrandom.seed(7)\nprint(random.random())", ["print(random.randint(1, 100))", "random.random()"]
    ),
    *tree(
        "import numpy as np\nrng = np.random.default_rng(3)\nnp.random.seed(5)",
        ["print(rng.integers(0, 99, 3))", "np.random.rand()"],
    ),
    # sympy and numpy, as model-written steps use them
    *tree(
        "import sympy as sp\nx, y = sp.symbols('x y')\neq = sp.Eq(x**2 - 5*x + 6, 0)",
        ["sol = sp.solve(eq, x)\nprint(sol)", "print(sum(sol))", "sp.simplify(sol[0] * sol[1])"],
        ["expr = sp.expand((x + y)**3)\nexpr", "print(expr.subs({x: 1, y: 2}))"],
    ),
    *tree("import numpy as np\nA = np.array([[2, 1], [1, 3]])", ["print(np.linalg.det(A))", "np.linalg.inv(A)"]),
    # functions, globals and mutation across steps
    *tree(
        "def f(n):\n    return n * (n + 1) // 2\ntotal = []",
        ["total.append(f(10))", "total.append(f(4))\nprint(total)"],
    ),
    # a step that continues its parent's indented block: compiled alone it is not the same program
    *tree("for i in range(3):\n    print(i)", ["    print('inside')", "print('after')"]),
    *tree("if True:\n    z = 1", ["else:\n    z = 2", "print(z)"]),
    # syntax errors, SystemExit, exceptions in the middle of a step
    *tree("x = 1", ["y = (", "print(y)"], ["raise SystemExit", "print('unreachable')"], ["raise SystemExit(2)", "x"]),
    *tree(
        "print('a')\nvalues = [1, 2]", ["values[5]"], ["print(values)\nint('x')"], ["import this_module_does_not_exist"]
    ),
    # files written by an earlier step, and a changed directory: such a state is not kept
    *tree("with open('data.txt', 'w') as f:\n    f.write('42')", ["print(open('data.txt').read())"]),
    *tree("import os\nos.makedirs('sub')\nos.chdir('sub')", ["import os\nprint(os.path.basename(os.getcwd()))"]),
    *tree(
        "import tempfile\nt = tempfile.NamedTemporaryFile(delete=False)\nt.write(b'x')\nt.close()",
        ["print(len(t.name) > 0)"],
    ),
    # what forks would share and replays do not: an unlinked temporary file (its offset), shared memory
    *tree("import tempfile\nt = tempfile.TemporaryFile()", ["t.write(b'abc')\nprint(t.tell())"], ["print(t.tell())"]),
    *tree("import mmap\nm = mmap.mmap(-1, 16)", ["m[0] = 7\nprint(m[0])"], ["print(m[0])"]),
    # a thread left running, a __future__ import
    *tree(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(0.2,), daemon=True).start()", ["print(1)"]
    ),
    *tree("from __future__ import annotations\nx: int = 1", ["print(x)"]),
    # unicode, an output that passes the cap in a child, a long output in the parent
    *tree("print('é ∑ 😀')", ["print('∑' * 3)"]),
    *tree("print('x' * 900)", ["print('y' * 200)", "print('z')"]),
]


def run_all(
    options: dict, programs: list[str], batch: int = 16, verifier: str = "subprocess"
) -> tuple[list[Verdict], dict[str, int]]:
    """Run ``programs`` in batches, shortest first (a parent before its children, as a search does)."""
    order = sorted(range(len(programs)), key=lambda i: (len(programs[i]), i))
    verdicts: list[Verdict | None] = [None] * len(programs)
    verifier = get_registry().build("verifier", {"name": verifier, **options})

    async def go() -> None:
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            for i, verdict in zip(chunk, await verifier.run([CodeJob(programs[i]) for i in chunk]), strict=True):
                verdicts[i] = verdict

    try:
        asyncio.run(go())
    finally:
        verifier.close()
    return verdicts, dict(verifier.states.counts)  # type: ignore[return-value]


def assert_same(
    programs: list[str], options: dict | None = None, batch: int = 16, verifier: str = "subprocess"
) -> dict[str, int]:
    options = {"inline": False, "timeout_s": 5, **(options or {})}
    replayed, _ = run_all({**options, "state": "replay"}, programs, batch, verifier)
    forked, counts = run_all({**options, "state": "fork"}, programs, batch, verifier)
    for program, a, b in zip(programs, replayed, forked, strict=True):
        assert seen(b) == seen(a), program
    return counts


def seen(verdict: Verdict) -> tuple[str, str, str]:
    """What a verdict says, memory addresses aside (they differ from one run of a program to the next)."""
    return verdict.status, ADDRESS.sub("0x?", verdict.output), ADDRESS.sub("0x?", verdict.error)


ADDRESS = re.compile(r"0x[0-9a-f]{6,}")


def test_fork_gives_replays_verdicts_on_hand_written_trees():
    counts = assert_same(HAND_WRITTEN, {"max_output_bytes": 1000})
    assert counts["from_state"] >= 20, counts  # most children forked their parent's state


def test_with_inline_batches_on_programs_that_import_fork_their_parents_state():
    """The default verifier (inline batches on): closed programs run inline, the others keep and fork states; a
    worker's runner for the next inline batch is no descriptor of the job's (a state holding one would not be kept)."""
    programs = chains(["import sympy as sp\nx = sp.Symbol('x')", "e = sp.expand((x + 1)**2)", "print(e)", "e"])
    counts = assert_same([*programs, "a = 1", "a = 1\nprint(a + 1)"], {"inline": True}, batch=1)
    assert counts["from_state"] == 3, counts


def test_fork_gives_replays_verdicts_on_the_inline_corpora():
    """Each program of the inline tests as a child of a step, and as a parent of one."""
    programs = []
    for program in CLOSED + OPEN:
        programs += ["n0 = 1", f"n0 = 1\n{program}", program, f"{program}\nprint('next')"]
    counts = assert_same(sorted(set(programs)))
    assert counts["from_state"] >= 20, counts


def test_fork_gives_replays_verdicts_on_real_quickstart_trees():
    programs = json.loads((DATA / "quickstart_programs.json").read_text(encoding="utf-8"))["programs"]
    counts = assert_same(programs[:240])
    assert counts["from_state"] >= 60, counts


@pytest.mark.slow
def test_fork_gives_replays_verdicts_on_every_quickstart_program():
    programs = json.loads((DATA / "quickstart_programs.json").read_text(encoding="utf-8"))["programs"]
    assert_same(programs)


def test_time_limit_counts_the_whole_program():
    """The parent took most of the limit: the child times out as the whole program would."""
    programs = tree("import time\ntime.sleep(0.9)\nprint('slept')", ["time.sleep(0.9)\nprint('again')"])
    counts = assert_same(programs, {"timeout_s": 1.5}, batch=1)
    verdicts, _ = run_all({"inline": False, "timeout_s": 1.5, "state": "fork"}, programs, batch=1)
    assert [v.status for v in verdicts] == ["ok", "timeout"]
    assert verdicts[1].output == "slept\n"
    assert counts.get("from_state", 0) == 1


def test_a_woken_or_signalled_state_is_dropped_and_its_children_run_from_scratch():
    """A job that wakes and signals every stopped process it can see: the states it reached are killed, never
    used."""
    hostile = (
        "import os, signal\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and 'State:\\tT' in open(f'/proc/{p}/status').read():\n"
        "        for s in (signal.SIGCONT, signal.SIGUSR1):\n"
        "            try:\n"
        "                os.kill(int(p), s)\n"
        "            except OSError:\n"
        "                pass"
    )
    programs = ["x = 5", hostile, "x = 5\nprint(x)"]
    verifier = SubprocessVerifier(SubprocessOptions(state="fork", inline=False, max_workers=1))  # one sandbox

    async def go() -> list[Verdict]:
        return [(await verifier.run([CodeJob(p)]))[0] for p in programs]

    try:
        verdicts = asyncio.run(go())
    finally:
        verifier.close()
    assert verdicts[2].output == "5\n"
    assert verifier.states.counts["lost"] == 1 and verifier.states.counts.get("from_state", 0) == 0


def test_a_state_that_made_itself_dumpable_has_its_memory_closed_again():
    """A dumpable process's memory is open to every process of its uid. A program that made itself dumpable is made
    non-dumpable again before it stops as a state: another job cannot open its memory."""
    parent = "import ctypes\nctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\ny = 2"
    peek = (
        "import os\nopened = 0\n"
        "for p in os.listdir('/proc'):\n"
        "    try:\n"
        "        if p.isdigit() and 'State:\\tT' in open(f'/proc/{p}/status').read():\n"
        "            os.close(os.open(f'/proc/{p}/mem', os.O_RDONLY))\n"
        "            opened += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print('opened', opened)"
    )
    verifier = SubprocessVerifier(SubprocessOptions(state="fork", inline=False, max_workers=1))

    async def go() -> list[Verdict]:
        return [(await verifier.run([CodeJob(p)]))[0] for p in (parent, peek, parent + "\nprint(y)")]

    try:
        verdicts = asyncio.run(go())
    finally:
        verifier.close()
    assert verdicts[1].output == "opened 0\n"
    assert verdicts[2].output == "2\n" and verifier.states.counts["from_state"] == 1


def test_states_are_bounded_per_worker():
    """With room for 4 states, the children of the 4 most recent of 12 parents fork; the others run from scratch."""
    verifier = SubprocessVerifier(SubprocessOptions(state="fork", inline=False, states=4, max_workers=1))

    async def go() -> list[Verdict]:
        for i in range(12):
            await verifier.run([CodeJob(f"v = {i}")])
        return await verifier.run([CodeJob(f"v = {i}\nprint(v)") for i in range(12)])

    try:
        verdicts = asyncio.run(go())
    finally:
        verifier.close()
    assert [v.output for v in verdicts] == [f"{i}\n" for i in range(12)]
    assert verifier.states.counts["from_state"] == 4
    assert verifier.states.counts["evicted"] >= 8


def test_too_many_states_for_the_process_limit_is_an_error():
    with pytest.raises(ValueError, match="states"):
        SubprocessOptions(state="fork", states=60, max_processes=64)


@pytest.mark.docker
def test_fork_gives_replays_verdicts_in_docker():
    from rstar_sandbox import docker_verifier

    reason = docker_verifier.unavailable_reason()
    if reason:
        pytest.skip(reason)
    programs = json.loads((DATA / "quickstart_programs.json").read_text(encoding="utf-8"))["programs"]
    counts = assert_same(HAND_WRITTEN + programs[:120], {"max_output_bytes": 1000}, verifier="docker")
    assert counts["from_state"] >= 40, counts


def test_a_job_flooding_its_command_socket_neither_stalls_nor_fills_its_worker():
    """A kept job's command socket carries one short message to the worker; a job that streams records into it
    (as parts of one endless message) is read 256 bytes at a time and gets its own verdict."""
    flood = (
        "import os, stat, time\n"
        "socks = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        if stat.S_ISSOCK(os.fstat(int(fd)).st_mode):\n"
        "            socks.append(int(fd))\n"
        "    except OSError:\n"
        "        pass\n"
        "end = time.monotonic() + 1\n"
        "sent = 0\n"
        "while time.monotonic() < end:\n"
        "    for fd in socks:\n"
        "        try:\n"
        "            os.write(fd, b'+' + b'x' * 30000)\n"
        "            sent += 1\n"
        "        except OSError:\n"
        "            pass\n"
        "print('sent', sent > 0)"
    )
    verdicts, _ = run_all({"state": "fork", "inline": False, "max_workers": 1, "timeout_s": 5}, [flood], batch=1)
    assert (verdicts[0].status, verdicts[0].output) == ("ok", "sent True\n"), verdicts[0]
    after, _ = run_all({"state": "fork", "inline": False, "max_workers": 1}, ["x = 1", "x = 1\nprint(x)"], batch=1)
    assert after[1].output == "1\n"
