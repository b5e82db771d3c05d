"""The ``docker`` verifier against a real engine: same verdicts as ``subprocess``, warm containers, clean-up."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from click.testing import CliRunner

from rstar.registry import get_registry
from rstar.types import CodeJob

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux containers"),
]

PROGRAMS = [
    "print('hello')\nx = 6 * 7\nx",
    "import sympy\nx = sympy.Symbol('x')\nsympy.solve(x**2 - 5*x + 6, x)",
    "import numpy as np\nnp.arange(6).reshape(2, 3).sum(axis=0)",
    "from fractions import Fraction\nFraction(1, 3) + Fraction(1, 6)",
    "1 / 0",
    "import math\nmath.sqrt = None\nleaked = 1",
    "import math\nprint(math.sqrt(16), 'leaked' in globals())",
    "while True:\n    pass",
    "x = bytearray(10**10)",
    "print('é' * 100000)",
    "import os\nos._exit(3)",
    "raise SystemExit(2)",
    "def f(:\n    pass",
]


@pytest.fixture(scope="module")
def docker_verifier():
    from rstar_sandbox import docker_verifier

    reason = docker_verifier.unavailable_reason()
    if reason:
        pytest.skip(reason)
    v = get_registry().build("verifier", {"name": "docker"})
    yield v
    v.close()


def containers() -> list:
    import docker
    from rstar_sandbox.docker_verifier import LABEL

    return docker.from_env().containers.list(all=True, filters={"label": LABEL})


def jobs() -> list[CodeJob]:
    return [CodeJob(p, timeout_s=2, memory_mb=512, max_output_bytes=1000) for p in PROGRAMS]


def test_same_verdicts_as_the_subprocess_verifier(docker_verifier):
    local = get_registry().build("verifier", {"name": "subprocess"})
    try:
        expected = asyncio.run(local.run(jobs()))
    finally:
        local.close()
    got = asyncio.run(docker_verifier.run(jobs()))
    assert [(v.status, v.output, v.error) for v in got] == [(v.status, v.output, v.error) for v in expected]


def test_containers_are_warm_and_locked_down(docker_verifier):
    asyncio.run(docker_verifier.run([CodeJob("1")] * 4))
    verdicts = asyncio.run(docker_verifier.run([CodeJob("import sympy\nsympy.Rational(1, 3)")] * 8))
    assert all(v.output == "1/3\n" for v in verdicts)
    assert max(v.duration_s for v in verdicts) < 1.0
    for container in containers():
        config = container.attrs["HostConfig"]
        assert config["NetworkMode"] == "none"
        assert config["ReadonlyRootfs"] is True
        assert config["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in config["SecurityOpt"]
        assert config["PidsLimit"] > 0 and config["Memory"] > 0 and config["NanoCpus"] > 0


def test_a_dead_container_is_replaced(docker_verifier):
    asyncio.run(docker_verifier.run([CodeJob("1")]))
    for container in containers():
        container.kill()
    assert asyncio.run(docker_verifier.run([CodeJob("2 + 2")]))[0].output == "4\n"


def test_close_removes_every_container():
    from rstar_sandbox import docker_verifier

    if docker_verifier.unavailable_reason():
        pytest.skip(docker_verifier.unavailable_reason())
    before = {c.id for c in containers()}
    v = get_registry().build("verifier", {"name": "docker", "max_workers": 2})
    asyncio.run(v.run([CodeJob("import time\ntime.sleep(0.3)")] * 2))
    assert len({c.id for c in containers()} - before) == 2
    v.close()
    assert {c.id for c in containers()} <= before


def test_cli_exec_with_the_docker_verifier(tmp_path, docker_verifier):
    from rstar_sandbox.cli import sandbox

    program = tmp_path / "a.py"
    program.write_text("x = 6 * 7\nx\n")
    result = CliRunner().invoke(sandbox, ["exec", "--verifier", "docker", str(program)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["output"] == "42\n"
