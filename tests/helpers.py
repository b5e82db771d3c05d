"""Helpers shared by tests in several folders: the repository root, the ``rstar`` command, toy problems."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from rstar.types import Problem

REPO = Path(__file__).resolve().parents[1]
"""The repository's root folder."""

RSTAR = shutil.which("rstar", path=str(Path(sys.executable).parent)) or "rstar"


def rstar(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``rstar`` command of this environment (`in_session`)."""
    return in_session(RSTAR, *args, cwd=cwd, timeout=timeout)


def in_session(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; its output is captured as text. It runs in a session of its own, ended whole on a timeout or
    when the test is stopped (pytest-timeout): an engine process it started (vLLM's) does not outlive the test."""
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def adder_problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"What is {i * 7} plus {i + 3}?", answer=str(i * 8 + 3)) for i in range(n)]


def adder_recipe(tmp_path: Path, problems: Path, **over: object) -> dict:
    """A search recipe over the scripted ``adder`` world (best-of-3, the real subprocess verifier), written to
    ``tmp_path/run``; ``over`` replaces top-level keys."""
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 1,
        "dataset": {"name": "jsonl", "path": str(problems)},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "search": {"name": "best_of_n"},
        "budget": {"samples": 3},
        **over,
    }
