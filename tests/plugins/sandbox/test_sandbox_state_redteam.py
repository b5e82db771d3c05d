"""Red-team tests of ``state: fork``: what a job (a model-written program) can do with kept states that it cannot
do with ``state: replay``, and programs whose verdict differs between the two modes.

Each test is an attack or a program a red-team review of ``state: fork`` found; the first six failed before their
fixes (a job forked from a state that then failed its check ran on unsupervised; one tree's states cut another's
process limit; stopped states' memory got a running job OOM-killed; a step's leading string became ``__doc__``;
each state generation ran its steps two frames deeper; ``str`` of a trailing value printed into a child's output),
the others show an attack that was stopped from the start.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from rstar_sandbox.isolation import Cgroup
from rstar_sandbox.subprocess_verifier import SubprocessOptions, SubprocessVerifier
from test_sandbox_state import run_all, seen, tree

from rstar.types import CodeJob, Verdict


def sequence(options: dict, batches: list[list[str]]) -> tuple[list[list[Verdict]], dict[str, int]]:
    """Run each batch of programs after the previous one, on one verifier; every batch's verdicts."""
    verifier = SubprocessVerifier(SubprocessOptions(**{"inline": False, "max_workers": 1, **options}))

    async def go() -> list[list[Verdict]]:
        return [await verifier.run([CodeJob(p) for p in batch]) for batch in batches]

    try:
        verdicts = asyncio.run(go())
    finally:
        verifier.close()
    return verdicts, dict(verifier.states.counts)


def both(programs: list[str], options: dict | None = None) -> tuple[list[Verdict], list[Verdict], dict[str, int]]:
    """Every program run alone (batches of one, parents first) with ``replay`` and with ``fork``."""
    options = {"inline": False, "timeout_s": 5, "max_workers": 1, **(options or {})}
    replayed, _ = run_all({**options, "state": "replay"}, programs, batch=1)
    forked, counts = run_all({**options, "state": "fork"}, programs, batch=1)
    return replayed, forked, counts


# --- 1. a job that outlives its supervision ----------------------------------------------------------------

# The parent step registers an at-fork hook that, in the state process only, sleeps longer than the worker waits
# for the state to stop again (`wait_stopped`, 2 s) after it forked the child's job. The worker then gives up
# (`start_from_state` raises "the state misbehaved", kills the state and answers ``lost``), but the child's job
# process was already forked and adopted by the worker: it runs the new lines, and nothing supervises, limits in
# wall time, or kills it (no `kill_everything` on that path) until some later job's clean-up. Meanwhile the worker
# runs the next job, of another tree.
DELAYING_PARENT = (
    "import os, time\n"
    "state_pid = os.getpid()\n"
    "os.register_at_fork(after_in_parent=lambda: os.getpid() == state_pid and time.sleep(2.5))"
)
PLANTING_CHILD = (
    DELAYING_PARENT + "\n"
    "if os.getpid() != state_pid:  # forked from the state (run from scratch, it does nothing)\n"
    "    mine = os.getcwd()\n"
    "    end = time.monotonic() + 6\n"
    "    while time.monotonic() < end:\n"
    "        for name in os.listdir('/tmp'):\n"
    "            if name.startswith('rstar-sandbox-') and '/tmp/' + name != mine:\n"
    "                try:\n"
    "                    open('/tmp/' + name + '/planted.py', 'w').write('print(\"forged\")')\n"
    "                except OSError:\n"
    "                    pass\n"
    "        time.sleep(0.002)"
)
VICTIM = "import os, time\ntime.sleep(0.4)\nprint(sorted(os.listdir('.')))"


def test_a_state_that_fails_its_check_after_forking_leaves_no_job_running():
    options = {"state": "fork", "timeout_s": 8}
    (_, (attack, victim)), counts = sequence(options, [[DELAYING_PARENT], [PLANTING_CHILD, VICTIM]])
    assert counts.get("lost") == 1, counts  # the attack took the path it aims at
    assert attack.status == "ok"
    assert victim.output == "[]\n", victim  # replay's verdict: another tree's job sees nothing of the attacker


def test_the_same_attack_under_replay_cannot_reach_another_job():
    (_, (attack, victim)), _ = sequence(
        {"state": "replay", "timeout_s": 8}, [[DELAYING_PARENT], [PLANTING_CHILD, VICTIM]]
    )
    assert attack.status == "ok"
    assert victim.output == "[]\n", victim


# --- 2. the process limit of a forked child ------------------------------------------------------------------

# RLIMIT_NPROC counts every process of the worker's uid. A job from scratch gets max_processes on top of the
# processes that exist when it starts (kept states included). A child forked from a state can only lower the
# state's limit (`lower_limits`), which counted the processes of when the state was made: states kept since
# (by any tree) eat its room. Here 15 threads start in replay and from scratch, only ~8 in the fork.
THREADS_CHILD = (
    "import threading\n"
    "ev = threading.Event()\n"
    "threads = [threading.Thread(target=ev.wait) for _ in range(15)]\n"
    "started = 0\n"
    "try:\n"
    "    for t in threads:\n"
    "        t.start()\n"
    "        started += 1\n"
    "finally:\n"
    "    ev.set()\n"
    "print(started)"
)


def test_a_forked_child_may_start_as_many_processes_as_replay():
    batches = [["x = 1"], *([f"v = {i}"] for i in range(10)), ["x = 1\n" + THREADS_CHILD]]
    options = {"max_processes": 20, "states": 11}
    replayed, _ = sequence({**options, "state": "replay"}, batches)
    forked, counts = sequence({**options, "state": "fork"}, batches)
    assert counts.get("from_state") == 1, counts
    assert seen(replayed[-1][0]) == ("ok", "15\n", "")
    assert seen(forked[-1][0]) == seen(replayed[-1][0])


# --- 3. memory held by stopped states ------------------------------------------------------------------------


# Each kept state holds the memory its program left (up to memory_mb), and up to `states` of them stay per worker.
# Where the worker has a memory cgroup, their memory counts in it: another tree's job that fits its own limit is
# then killed by the cgroup's OOM killer (the states are each smaller than it, so it is the one picked). In replay
# no job's memory outlives it. Without a cgroup, a worker's states may hold states * memory_mb of host memory.
def test_memory_kept_by_states_does_not_kill_another_trees_job():
    probe = Cgroup.create(64) if os.geteuid() == 0 else None
    if probe is None:
        pytest.skip("no memory cgroup here (needs root and a writable memory controller)")
    probe.remove()
    hogs = [[f"b = b'{i}' * (50 * 2**20)"] for i in range(10)]
    victim = ["b = b'v' * (250 * 2**20)\nprint(len(b) >> 20)"]
    options = {"memory_mb": 400, "worker_memory_mb": 700, "preload": ["math"]}
    replayed, _ = sequence({**options, "state": "replay"}, [*hogs, victim])
    forked, counts = sequence({**options, "state": "fork"}, [*hogs, victim])
    assert counts.get("kept", 0) >= 10, counts
    assert seen(replayed[-1][0]) == ("ok", "250\n", "")
    assert seen(forked[-1][0]) == seen(replayed[-1][0])


# --- 4. verdicts that differ from replay's (not listed in the docs) --------------------------------------------


def test_a_step_starting_with_a_string_does_not_set_the_docstring():
    programs = tree("x = 1", ["'Step 2: the answer'\nprint(__doc__ == 'Step 2: the answer')"])
    replayed, forked, counts = both(programs)
    assert counts.get("from_state") == 1, counts
    assert seen(replayed[1]) == ("ok", "False\n", "")
    assert seen(forked[1]) == seen(replayed[1])


def test_recursion_depth_is_the_whole_programs():
    parent = "import sys\nsys.setrecursionlimit(60)\ndef f(n):\n    return 0 if n == 0 else 1 + f(n - 1)"
    programs = tree(parent, ["print(f(53))", "print(f(53))", "print(f(53))"])
    replayed, forked, counts = both(programs)
    assert counts.get("from_state") == 3, counts
    assert [seen(v) for v in replayed[1:]] == [("ok", "53\n" * n, "") for n in (1, 2, 3)]
    assert [seen(v) for v in forked] == [seen(v) for v in replayed]


def test_a_trailing_values_str_side_effects_do_not_reach_the_child():
    parent = "class A:\n    def __str__(self):\n        print('side effect')\n        return 'A'\nA()"
    programs = tree(parent, ["print(1)"])
    replayed, forked, counts = both(programs)
    assert counts.get("from_state", 0) == 0, counts  # the parent's str() printed: no state, the child replays
    assert seen(replayed[1]) == ("ok", "1\n", "")
    assert seen(forked[1]) == seen(replayed[1])


# --- 5. attacks that are stopped ------------------------------------------------------------------------------

RESTOP_EVERY_STATE = (
    "import os, signal, time\n"
    "for p in os.listdir('/proc'):\n"
    "    try:\n"
    "        if p.isdigit() and 'State:\\tT' in open(f'/proc/{p}/status').read():\n"
    "            os.kill(int(p), signal.SIGCONT)\n"
    "            os.kill(int(p), signal.SIGSTOP)\n"
    "    except OSError:\n"
    "        pass\n"
    "time.sleep(0.05)"
)


def test_a_state_woken_and_stopped_again_is_dropped():
    """SIGCONT then SIGSTOP at once leaves the state stopped with nothing pending, but it ran: its context
    switches changed, and the worker drops it."""
    (_, _, (child,)), counts = sequence(
        {"state": "fork"}, [["secret = 5"], [RESTOP_EVERY_STATE], ["secret = 5\nprint(secret)"]]
    )
    assert seen(child) == ("ok", "5\n", "")
    assert counts.get("from_state", 0) == 0 and counts.get("lost") == 1, counts


TOUCH_STATES = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "me = os.getpid()\n"
    "results = set()\n"
    "for p in os.listdir('/proc'):\n"
    "    try:\n"
    "        if not p.isdigit() or int(p) == me or 'State:\\tT' not in open(f'/proc/{p}/status').read():\n"
    "            continue\n"
    "    except OSError:\n"
    "        continue\n"
    "    try:\n"
    "        os.close(os.open(f'/proc/{p}/mem', os.O_RDWR))\n"
    "        results.add('mem open')\n"
    "    except OSError:\n"
    "        results.add('mem refused')\n"
    "    if libc.ptrace(16, int(p), 0, 0) == 0:  # PTRACE_ATTACH\n"
    "        results.add('traced')\n"
    "    else:\n"
    "        results.add('ptrace refused')\n"
    "    buf = ctypes.create_string_buffer(8)\n"
    "    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)\n"
    "    remote = (ctypes.c_void_p * 2)(0x400000, 8)\n"
    "    if libc.process_vm_readv(int(p), local, 1, remote, 1, 0) > 0:\n"
    "        results.add('read')\n"
    "    try:\n"
    "        os.listdir(f'/proc/{p}/fd')\n"
    "        results.add('fds listed')\n"
    "    except OSError:\n"
    "        pass\n"
    "print(sorted(results))"
)


def test_a_job_can_neither_open_trace_nor_read_a_states_memory():
    (_, (probe,), (child,)), counts = sequence(
        {"state": "fork"}, [["secret = 'hunter2'"], [TOUCH_STATES], ["secret = 'hunter2'\nprint(len(secret))"]]
    )
    assert seen(probe) == ("ok", "['mem refused', 'ptrace refused']\n", ""), probe
    assert seen(child) == ("ok", "7\n", "")
    assert counts.get("from_state") == 1, counts  # looking cost the state nothing


def test_a_state_that_makes_itself_dumpable_when_woken_is_not_used():
    """A SIGCONT handler installed by the parent step runs when the worker continues the state: it makes the state
    dumpable (its memory then open to every job of the uid). The worker sees it and runs the child from scratch."""
    parent = (
        "import ctypes, signal\nsignal.signal(signal.SIGCONT, lambda *_: ctypes.CDLL(None).prctl(4, 1, 0, 0, 0))\ny = 3"
    )
    (_, (child,)), counts = sequence({"state": "fork"}, [[parent], [parent + "\nprint(y)"]])
    assert seen(child) == ("ok", "3\n", "")
    assert counts.get("lost") == 1 and counts.get("from_state", 0) == 0, counts


def test_a_job_passing_file_descriptors_on_its_command_socket_gets_its_own_verdict():
    """A kept job's command socket is read without ancillary data: file descriptors sent on it are dropped, and a
    job that claims ``state`` early (before its verdict, not stopped) is not kept."""
    program = (
        "import os, socket, stat, array\n"
        "r, w = os.pipe()\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        if stat.S_ISSOCK(os.fstat(int(fd)).st_mode):\n"
        "            s = socket.socket(fileno=os.dup(int(fd)))\n"
        "            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r, w]))]\n"
        "            s.sendmsg([b'.{\"state\": true}'], rights)\n"
        "            s.close()\n"
        "    except OSError:\n"
        "        pass\n"
        "os.close(r)\n"
        "os.close(w)\n"
        "print('done')"
    )
    ((verdict,), (after,)), _ = sequence({"state": "fork"}, [[program], ["z = 1\nprint(z)"]])
    assert verdict.status in ("ok", "killed"), verdict
    assert seen(after) == ("ok", "1\n", "")


# --- 6. a program that reaches the worker's own frames -----------------------------------------------------

FORGE_COUNTS = (
    "import sys\n"
    "f = sys._getframe()\n"
    "while f is not None:\n"
    "    kept = f.f_locals.get('kept')\n"
    "    if isinstance(kept, dict):\n"
    "        kept['display'] = 10 ** 9\n"
    "        kept['statements'] = 0\n"
    "    f = f.f_back\n"
    "v = 1"
)
CLOSE_COMMAND_SOCKET = (
    "import os, sys\n"
    "f = sys._getframe()\n"
    "while f is not None:\n"
    "    if isinstance(f.f_locals.get('cmd'), int):\n"
    "        os.close(f.f_locals['cmd'])\n"
    "    f = f.f_back\n"
    "v = 2"
)


def test_counts_forged_through_the_workers_frames_mislead_only_the_programs_own_children():
    """A step can walk up to the worker's frame in its own process and forge what its state reports (the length of
    its trailing value's text, its statement count). That changes only its own children's output; rstar clamps
    the count to what was printed, and another program on the same worker gets its own verdict."""
    (_, (child,), (other,)), _ = sequence(
        {"state": "fork"}, [[FORGE_COUNTS], [FORGE_COUNTS + "\nprint(v)"], ["w = 3\nprint(w)"]]
    )
    assert child.status == "ok" and "1\n" in child.output
    assert seen(other) == ("ok", "3\n", "")


def test_a_step_that_closes_its_command_socket_keeps_no_state_and_its_child_replays():
    (_, (child,)), counts = sequence({"state": "fork"}, [[CLOSE_COMMAND_SOCKET], [CLOSE_COMMAND_SOCKET + "\nprint(v)"]])
    assert seen(child) == ("ok", "2\n", "")
    assert counts.get("from_state", 0) == 0
