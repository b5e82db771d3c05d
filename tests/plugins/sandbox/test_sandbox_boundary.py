"""The sandbox boundary: hostile programs that try to escape, or to change what other jobs report.

Every class of attack runs on each verifier in each mode: ``subprocess`` (bubblewrap) and ``docker``, each with
inline jobs (closed programs skip their own fork) and with every job forked. Each test asserts the safe verdict
AND that clean victims get their true verdicts: victims in the same batch as the attack, and victims in later
batches of the same worker (``max_workers: 1``, so there is only one). The layers are also tested on their own:
the allow-list gate alone (`closed_program`), and the per-batch process and the unprivileged worker with the
gate switched off (a test-only worker whose gate accepts everything).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import Iterator

import pytest
from helpers import REPO

from rstar.registry import get_registry
from rstar.types import CodeJob, Verdict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="namespaces, rlimits: Linux")


SPECS = [
    pytest.param({"name": "subprocess"}, id="bwrap-inline"),
    pytest.param({"name": "subprocess", "inline": False}, id="bwrap-forked"),
    pytest.param({"name": "docker"}, id="docker-inline", marks=pytest.mark.docker),
    pytest.param({"name": "docker", "inline": False}, id="docker-forked", marks=pytest.mark.docker),
]

# Victims: closed programs (inline where inline is on) whose true verdicts are known.
VICTIMS = [
    (
        "import math\nfrom fractions import Fraction\nprint(math.pi, math.sqrt(16), abs(-3), 2 ** 10)\n"
        "Fraction(0.5) + Fraction(1, 4)",
        "ok",
        "3.141592653589793 4.0 3 1024\n3/4\n",
    ),
    ("values = [1, 2]\nvalues[5]", "error", ""),
    ("x = (", "error", ""),
    ("print('a')\n1 / 0", "error", "a\n"),
]
VICTIM_ERRORS = ["", "IndexError", "SyntaxError", "ZeroDivisionError"]


def build(spec: dict) -> object:
    if spec["name"] == "docker":
        if importlib.util.find_spec("rstar_sandbox.docker_verifier") is None:
            pytest.skip("the docker verifier is not there")
        from rstar_sandbox.docker_verifier import unavailable_reason

        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
    return get_registry().build("verifier", {"max_workers": 1, "timeout_s": 3, **spec})


@pytest.fixture(params=SPECS)
def verifier(request) -> Iterator[object]:
    v = build(request.param)
    yield v
    v.close()


def run(verifier, programs: list[str], **limits) -> list[Verdict]:
    return asyncio.run(verifier.run([CodeJob(p, **limits) for p in programs]))


def assert_victims(verdicts: list[Verdict]) -> None:
    assert len(verdicts) == len(VICTIMS)
    for verdict, (_, status, output), error in zip(verdicts, VICTIMS, VICTIM_ERRORS, strict=True):
        assert (verdict.status, verdict.output) == (status, output), verdict
        assert verdict.error.startswith(error), verdict


def attack(verifier, programs: list[str], **limits) -> list[Verdict]:
    """Run ``programs`` with victims before and after them in the same batch, then victims in a later batch of
    the same worker; assert every victim's true verdict; return the verdicts of ``programs``."""
    victims = [program for program, _, _ in VICTIMS]
    verdicts = run(verifier, [*victims, *programs, *victims], **limits)
    assert_victims(verdicts[: len(victims)])
    assert_victims(verdicts[-len(victims) :])
    assert_victims(run(verifier, victims))
    return verdicts[len(victims) : -len(victims)]


# --- introspection gadgets: frames, generators, format fields, class registries ---------------------------

WALK_FRAMES = """
def tamper(frame):
    while frame is not None:
        names = frame.f_globals
        for name in ("run", "run_inline", "closed_program", "describe", "send_message"):
            if name in names:
                names[name] = lambda *args, **kwargs: ("ok", "")
        if "answers" in frame.f_locals:
            for _ in range(8):
                frame.f_locals["answers"].add(({"status": "ok", "error": ""}, b"forged\\n"))
        frame.f_builtins["abs"] = max
        frame = frame.f_back
"""
GADGETS = {
    "running-generator-frame": WALK_FRAMES + "g = (g.gi_frame.f_back for _ in [1])\ntamper(next(g))\nprint('done')",
    "generator-frame-builtins": "g = (x for x in [1])\nb = g.gi_frame.f_builtins\nb['print'] = None\nprint('done')",
    "exception-traceback": WALK_FRAMES + "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
    "    tamper(e.__traceback__.tb_frame)\nprint('done')",
    "format-field-walk": "def f():\n    pass\nfield = '{0.' + '_' * 2 + 'globals' + '_' * 2 + '}'\n"
    "print(len(field.format(f)) > 0)",
    "format-attribute": "print('{0.real}'.format(1))",
    "abc-registry": "from fractions import Fraction\nFraction.mro()[1].register(float)\nprint('done')",
    "class-attribute": "import math\nmath.pi = 3.0\nprint('done')",
    "builtins-rebinding": "import builtins\nbuiltins.abs = max\nprint('done')",
    "sys-modules": "import sys\nsys.modules['math'].sqrt = lambda x: 0\nprint('done')",
}


@pytest.mark.parametrize("gadget", list(GADGETS), ids=list(GADGETS))
def test_introspection_gadgets_change_nothing_for_other_jobs(verifier, gadget):
    before = dict(verifier.counts)
    (verdict,) = attack(verifier, [GADGETS[gadget]])
    assert verdict.status in ("ok", "error")
    if verifier.options.inline:  # the gate sent it to a fork of its own, and only the victims ran inline
        assert verifier.counts["inline"] - before.get("inline", 0) == 3 * len(VICTIMS)


# --- forged verdicts, replaced runners, cross-job files and memory -----------------------------------------

CROSS_JOB = {
    "tmp-file": "open('/tmp/rstar-left-behind', 'w').write('x')\nprint('wrote')",
    "workdir-escape": "import os\nos.makedirs('/tmp/dir/sub', exist_ok=True)\nopen('/tmp/dir/sub/f', 'w').write('x')",
    "dev-shm": "try:\n    open('/dev/shm/left', 'w').write('x')\nexcept OSError as exc:\n    print(type(exc).__name__)",
    "posix-mqueue": "import ctypes, os\nrt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
    "print(rt.mq_open(b'/rstar-left', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0)",
    "sysv-shm": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.shmget(4242, 4096, 0o1600) >= 0)",
    "parent-memory": "import os\ntry:\n    open(f'/proc/{os.getppid()}/mem', 'r+b')\n    print('opened')\n"
    "except OSError as exc:\n    print(type(exc).__name__)",
    "signal-parent": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nprint('stopped')",
    "sysv-shm-given-away": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "shmid = libc.shmget(4243, 4096, 0o1600)\nbuf = ctypes.create_string_buffer(256)\nif shmid >= 0:\n"
    "    libc.shmctl(shmid, 2, buf)\n    ctypes.c_uint.from_buffer(buf, 4).value = 0\n"
    "    print(libc.shmctl(shmid, 1, buf))",
    "replace-runner-in-fork": "import sys\nm = sys.modules['__main__']\nm.run = lambda *a, **k: ('ok', '')\n"
    "print('done')",
}
LEFT_BEHIND = (
    "import ctypes, os\nrt = ctypes.CDLL('librt.so.1', use_errno=True)\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "found = [p for p in ('/tmp/rstar-left-behind', '/tmp/dir', '/dev/shm/left') if os.path.exists(p)]\n"
    "found += ['mqueue'] if rt.mq_open(b'/rstar-left', os.O_RDWR, 0, None) >= 0 else []\n"
    "found += [key for key in (4242, 4243) if libc.shmget(key, 4096, 0) >= 0]\n"
    "print(found)"
)


@pytest.mark.parametrize("attack_name", list(CROSS_JOB), ids=list(CROSS_JOB))
def test_nothing_a_job_leaves_reaches_a_later_job(verifier, attack_name):
    (verdict,) = attack(verifier, [CROSS_JOB[attack_name]])
    if attack_name == "parent-memory":
        assert verdict.output in ("PermissionError\n", "FileNotFoundError\n"), verdict
    (left,) = run(verifier, [LEFT_BEHIND])
    assert (left.status, left.output) == ("ok", "[]\n"), left


# --- the host: files, sockets, privileges ---------------------------------------------------------------

HOST = """
import os, socket
seen = {}
seen["uid"] = os.getuid() != 0 and os.geteuid() != 0
seen["caps"] = [line.split()[1] for line in open('/proc/self/status') if line.startswith(('CapEff', 'CapPrm'))]
for path in ('/etc/shadow', '/root/.bashrc', REPO + '/pyproject.toml'):
    try:
        open(path).read(1)
        seen[path] = 'read'
    except OSError as exc:
        seen[path] = type(exc).__name__
for path in ('/var/run/docker.sock', '/run/docker.sock', '/run/containerd/containerd.sock'):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        seen[path] = 'connected'
    except OSError as exc:
        seen[path] = type(exc).__name__
    finally:
        s.close()
seen['run'] = os.path.isdir('/run') and sorted(os.listdir('/run'))
print(seen)
"""


def test_a_job_sees_no_host_secret_socket_or_privilege(verifier):
    (verdict,) = attack(verifier, [f"REPO = {str(REPO)!r}\n{HOST}"])
    assert verdict.status == "ok", verdict
    seen = eval(verdict.output)  # the printed dict of what the job could reach
    assert seen["uid"] is True
    assert seen["caps"] == ["0000000000000000", "0000000000000000"]
    for key, value in seen.items():
        assert value not in ("read", "connected"), (key, value)


BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
THREADS = (
    "import threading, time\ntime.sleep(0.5)\nthreads = [threading.Thread(target=time.sleep, args=(0.2,))"
    " for _ in range(8)]\nfor t in threads:\n    t.start()\nfor t in threads:\n    t.join()\nprint('ok')"
)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2]])
def test_a_fork_bomb_in_one_worker_leaves_the_others_alone(spec):
    v = build({**spec, "max_workers": 2, "max_processes": 16})
    try:
        verdicts = asyncio.run(v.run([CodeJob(BOMB, timeout_s=4), *[CodeJob(THREADS, timeout_s=4)] * 3]))
        assert verdicts[0].status == "timeout"
        assert [x.output for x in verdicts[1:]] == ["ok\n"] * 3, verdicts
    finally:
        v.close()


def test_the_private_tmp_is_bounded_and_emptied_after_each_job(verifier):
    fill = (
        "import os\nwritten = 0\ntry:\n    for i in range(64):\n        with open(f'/tmp/fill{i}', 'wb') as f:\n"
        "            for _ in range(32):\n                f.write(b'x' * 2**20)\n                written += 1\n"
        "except OSError as exc:\n    print(type(exc).__name__, exc.errno, written <= 300)"
    )
    (verdict,) = attack(verifier, [fill], timeout_s=20)
    assert verdict.output == "OSError 28 True\n", verdict  # ENOSPC well before 1 GiB reached host memory
    again = "with open('/tmp/again', 'wb') as f:\n    for _ in range(48):\n        f.write(b'x' * 2**20)\nprint('ok')"
    (verdict,) = run(verifier, [again], timeout_s=20)
    assert verdict.output == "ok\n", verdict  # the space came back: the first job's files were removed


# --- transport: sizes, surrogates ---------------------------------------------------------------------------


def test_oversized_batches_and_answers_are_framed_not_taken_for_a_dead_worker(verifier):
    step = "total = 0\n" + "".join(f"# step {i}: add {i}\ntotal = total + {i}\n" for i in range(160)) + "total"
    assert len(step) > 3000
    big_program = "x = 1\n" + "# " + "y" * 228_000 + "\nx"
    big_answer = "print('z' * 1_500_000)"
    started = verifier.counts["workers_started"]
    verdicts = asyncio.run(
        verifier.run([CodeJob(step)] * 128 + [CodeJob(big_program), CodeJob(big_answer, max_output_bytes=2_000_000)])
    )
    assert [v.output for v in verdicts[:128]] == [f"{sum(range(160))}\n"] * 128
    assert (verdicts[128].status, verdicts[128].output) == ("ok", "1\n")
    assert (verdicts[129].status, len(verdicts[129].output)) == ("ok", 1_500_001)
    assert verifier.counts["workers_started"] - started <= 1  # no worker was killed and restarted
    assert_victims(run(verifier, [p for p, _, _ in VICTIMS]))


@pytest.mark.parametrize(
    "program",
    ["raise ValueError('\\ud800 lone')", "raise SystemExit('\\udcff')", "print('\\ud800')", "x = '\\udfff'\n{x: 1}[0]"],
)
def test_every_verdict_string_is_valid_utf8(verifier, program):
    (verdict,) = attack(verifier, [program])
    assert verdict.status == "error"
    verdict.error.encode("utf-8")
    verdict.output.encode("utf-8")


# --- each layer on its own ----------------------------------------------------------------------------------


def test_the_gate_refuses_every_gadget_and_accepts_plain_steps():
    import ast

    from rstar_sandbox.worker import accept_closed

    def accepted(program: str) -> bool:
        tree = ast.parse(program)
        return accept_closed(program)(tree)

    for name, program in {**GADGETS, **CROSS_JOB}.items():
        assert not accepted(program), name
    for program, _, _ in VICTIMS[:2]:
        assert accepted(program)


def _gateless(spec: dict) -> object:
    """Test-only: a verifier whose workers run EVERY program inline (the gate accepts anything)."""
    v = build({**spec, "max_workers": 1})
    v._worker_source = v._worker_source.replace(
        "def accept_closed(source):\n", "def accept_closed(source):\n    return accept_all\n", 1
    )
    assert "return accept_all\n" in v._worker_source
    return v


ESCAPE = (
    "g = (g.gi_frame.f_back for _ in [1])\nframe = next(g)\nwhile 'importlib' not in frame.f_globals:\n"
    "    frame = frame.f_back\nreal = frame.f_globals['importlib'].import_module('builtins')\n"
)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2]])
def test_without_the_gate_an_escaped_inline_program_has_a_forked_jobs_power_and_dies_with_its_batch(spec):
    v = _gateless(spec)
    try:
        # The frame walk reaches the worker's modules and real builtins: as strong as a forked job, no stronger.
        marker = uuid.uuid4().hex
        escaped = ESCAPE + (
            f"real.exec({HOST!r}, {{'__builtins__': real, 'REPO': {str(REPO)!r}}})\n"
            "frame.f_globals['sys'].modules['math'].pi = 3.0\n"
            "frame.f_globals['run'] = lambda *a, **k: ('ok', '')\n"
            f"print({marker!r})"
        )
        (verdict,) = run(v, [escaped])
        assert v.counts["inline"] == 1 and v.counts["forked"] == 0
        assert verdict.output.endswith(marker + "\n"), verdict
        seen = eval(verdict.output.splitlines()[0])
        assert seen["uid"] is True and seen["caps"] == ["0000000000000000", "0000000000000000"]
        assert all(value not in ("read", "connected") for value in seen.values()), seen
        # Whatever it changed died with its batch's process: a later batch of the same worker is clean.
        assert_victims(run(v, [p for p, _, _ in VICTIMS]))
        assert v.counts["workers_started"] == 1
    finally:
        v.close()


def test_without_the_gate_inline_builtins_still_hold_only_the_allowed_names():
    v = _gateless({"name": "subprocess"})
    try:
        verdicts = run(v, ["open('/etc/passwd')", "__import__('os')", "import os", "getattr(1, 'real')"])
        assert [x.error.split(":")[0] for x in verdicts] == ["NameError", "ImportError", "ImportError", "NameError"]
    finally:
        v.close()


def test_a_worker_asking_to_retire_is_replaced():
    v = get_registry().build("verifier", {"name": "subprocess", "max_workers": 1})
    v._retire_growth_bytes = -1  # every worker asks after its first batch
    try:
        for _ in range(3):
            assert run(v, ["6 * 7"])[0].output == "42\n"
        assert v.counts["workers_started"] == 3
    finally:
        v.close()


def test_a_worker_that_cannot_take_a_job_is_given_up_on_after_a_bounded_number_of_tries(monkeypatch):
    from rstar_sandbox import inline as module

    v = get_registry().build("verifier", {"name": "subprocess", "max_workers": 1})

    async def refuse(worker, jobs, batch, queue, verdicts):  # test stand-in: every worker dies on the batch
        worker.kill()
        queue.extendleft(reversed(batch))
        return "refused"

    monkeypatch.setattr(module, "run_batch", refuse)
    try:
        verdicts = run(v, ["1 + 1", "2 + 2"])
        assert [x.status for x in verdicts] == ["error", "error"]
        assert "3 sandbox workers in a row died" in verdicts[0].error
        assert v.counts["workers_started"] <= 2 * module.WORKER_TRIES + 1
    finally:
        v.close()


# --- what one program does to its batch-mates when it crashes or hangs its batch's process ------------------

STACK_CRASH = "x = iter([1])\nfor i in range(1000000):\n    x = map(abs, x)\nnext(x)"
CATCHES_THE_ALARM = "while True:\n    try:\n        while True:\n            pass\n    except:\n        pass"


@pytest.mark.parametrize("culprit", [STACK_CRASH, CATCHES_THE_ALARM], ids=["c-stack-crash", "catches-the-alarm"])
def test_a_batch_mate_that_kills_or_hangs_the_batch_process_is_the_only_one_blamed(verifier, culprit):
    victims = [p for p, _, _ in VICTIMS]
    verdicts = run(verifier, [*victims, culprit, *victims], timeout_s=2)
    assert_victims(verdicts[: len(victims)])
    assert_victims(verdicts[-len(victims) :])
    assert verdicts[len(victims)].status == ("killed" if culprit == STACK_CRASH else "timeout")


def test_a_forged_verdict_does_not_survive_a_crash(verifier):
    forge = (
        'import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b\'\\n{"status": "ok"}\\n\')\n'
        "    except OSError:\n        pass\nos.kill(os.getpid(), 11)"
    )
    (verdict,) = attack(verifier, [forge])
    assert verdict.status == "killed" and "SIGSEGV" in verdict.error, verdict


def test_a_lone_surrogate_in_the_program_text_gives_the_same_verdict_inline_and_forked(verifier):
    (verdict,) = attack(verifier, ["x = '\ud800'\nlen(x)"])
    assert (verdict.status, verdict.output) == ("ok", "1\n")


def test_bubblewrap_jobs_get_no_memory_outside_their_limits_and_no_namespaces():
    # seccomp: System V IPC, POSIX queues and memfds would hold memory outside RLIMIT_AS (and outlive a job); a
    # user namespace would let a job mount a tmpfs of its own, without a size.
    program = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nrt = ctypes.CDLL('librt.so.1')\nrefused = []\n"
        "refused.append(libc.shmget(0, 2**27, 0o1600) == -1)\nrefused.append(libc.msgget(0, 0o1600) == -1)\n"
        "refused.append(libc.semget(0, 1, 0o1600) == -1)\n"
        "refused.append(rt.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o600, None) == -1)\n"
        "refused.append(libc.unshare(0x10000000) == -1)\nrefused.append(libc.unshare(0x00020000) == -1)\n"
        "try:\n    os.memfd_create('m')\n    refused.append(False)\nexcept PermissionError:\n    refused.append(True)\n"
        # the same calls by their x32 numbers, clone3 (whose flags a filter cannot read), io_uring, userfaultfd
        "refused.append(libc.syscall(0x40000000 + 29, 0, 4096, 0o1600) == -1)\n"
        "refused.append(libc.syscall(0x40000000 + 272, 0x10000000) == -1)\n"
        "refused.append(libc.syscall(435, 0, 0) == -1)\nrefused.append(libc.syscall(425, 8, 0) == -1)\n"
        "refused.append(libc.syscall(323, 0) == -1)\n"
        "print(all(refused), refused)"
    )
    for inline in (True, False):
        v = build({"name": "subprocess", "inline": inline})
        try:
            (verdict,) = run(v, [program])
            assert verdict.status == "ok" and verdict.output.startswith("True "), verdict
        finally:
            v.close()


def test_the_seccomp_program_is_well_formed():
    from rstar_sandbox.isolation import SECCOMP_DENIED, seccomp_program

    program = seccomp_program()
    if program is None:
        pytest.skip("the filter is written for x86-64")
    assert len(program) % 8 == 0 and len(program) // 8 == 14 + 2 * len(SECCOMP_DENIED)


def test_a_job_with_many_processes_stays_within_the_workers_memory():
    from rstar_sandbox.isolation import cgroup_base

    if cgroup_base() is None:
        pytest.skip("no memory cgroup can be made here (needs root and a writable memory controller)")
    hog = (
        "import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
        "        b = bytearray(200 * 2**20)\n        time.sleep(1)\n        os._exit(0)\n    kids.append(pid)\n"
        "print(sum(os.waitpid(p, 0)[1] != 0 for p in kids) > 0)"
    )
    for spec in ({"name": "subprocess"}, {"name": "subprocess", "isolation": "none"}):
        v = build({**spec, "worker_memory_mb": 600})
        try:
            (verdict,) = run(v, [hog], timeout_s=8, memory_mb=256)
            assert verdict.output == "True\n", verdict  # 6 x 200 MiB, each within RLIMIT_AS: some were killed
            assert_victims(run(v, [p for p, _, _ in VICTIMS]))
        finally:
            v.close()


# --- found by a second red-team pass --------------------------------------------------------------------------

KEEPS_MEMORY = (
    "a = []\na.append(a)\nfor i in range(30000):\n    c = [i]\nn = 100000000\nwhile n > 100:\n    try:\n"
    "        while True:\n            a.append(' ' * n)\n    except:\n        pass\n    n = n // 10\n"
    "print('kept', len(a) > 1)"
)


def test_memory_a_program_keeps_in_its_batch_leaves_its_batch_mates_their_limits(verifier):
    # A cycle the namespace's clearing does not free would take the room of every later program of the batch.
    # First in its batch, so that no collection of older objects that other programs set off frees it.
    verdicts = run(verifier, [KEEPS_MEMORY, *(p for p, _, _ in VICTIMS)], memory_mb=512)
    assert verdicts[0].status == "ok", verdicts[0]
    assert_victims(verdicts[1:])
    (verdict,) = attack(verifier, [KEEPS_MEMORY], memory_mb=512)
    assert verdict.status == "ok", verdict


def test_a_reaped_inline_runner_is_no_longer_spared_by_the_clean_up():
    # A job could kill the runner waiting for the next batch and, once the pid comes round again, give it to a
    # process of its own, which the clean-up would spare. The pid is spared only until the runner is reaped.
    import os
    import signal

    from rstar_sandbox import worker

    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    worker.LIVING_RUNNERS.add(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if pid in worker.reap_all():
                break
            __import__("time").sleep(0.01)
        assert pid not in worker.LIVING_RUNNERS
    finally:
        worker.LIVING_RUNNERS.discard(pid)


def test_folders_nested_past_the_recursion_limit_are_removed_without_losing_the_worker(verifier):
    deep = "import os\nos.chdir('/tmp')\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')"
    run(verifier, ["1"])
    started = verifier.counts["workers_started"]
    (verdict,) = attack(verifier, [deep])
    assert (verdict.status, verdict.output) == ("ok", "deep\n"), verdict
    (left,) = run(verifier, ["import os\nprint(os.path.exists('/tmp/d'))"])
    assert left.output == "False\n"
    assert verifier.counts["workers_started"] == started


def test_an_exit_code_too_long_to_print_is_an_error_verdict(verifier):
    (verdict,) = attack(verifier, ["raise SystemExit(10 ** 5000)"])
    assert (verdict.status, verdict.error) == ("error", "SystemExit: <exit code could not be printed>"), verdict
    (long_text,) = run(verifier, ["raise SystemExit('x' * 10**6)"])
    assert long_text.status == "error" and len(long_text.error) < 3000, long_text


JUNK_EVERY_FD = """
import os
for fd in range(3, 256):
    try:
        os.fstat(fd)
        os.write(fd, b"\\x00" * 65536)
        os.close(fd)
    except OSError:
        pass
print("done")
"""


def test_junk_written_to_every_inherited_descriptor_hurts_only_its_own_job(verifier):
    """A job that floods and closes every descriptor it holds (its worker's socket to the parent among them, the
    one the pool passes on by number) breaks only its own channel: it ends as a failure of its own, never as
    another job's verdict, and the victims around it and after it get their true verdicts."""
    (verdict,) = attack(verifier, [JUNK_EVERY_FD], timeout_s=5)
    assert verdict.status != "ok" or verdict.output == "done\n", verdict
