"""Scripted policies for the Ray executor's tests: the ``adder`` world, slowed down or made to kill its process.

The workers import this module by name (``fn: "ray_worlds:slow_adder"``): with ``address: local`` the executor
hands them this process's ``sys.path``, which holds this folder under pytest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rstar.testing.worlds import adder

STEP_S = 0.05
"""What each policy request costs: long enough that a worker can be killed while it holds problems."""
FATAL_QUESTION = "What is 35 plus 8?"
"""The question of problem p5 of `helpers.adder_problems`."""


def slow_adder(prompt: str, n: int, seed: int | None = None) -> list[str]:
    time.sleep(STEP_S)
    return adder(prompt, n, seed)


def fragile_adder(prompt: str, n: int, seed: int | None = None) -> list[str]:
    """``slow_adder``, except that the process dies at once (as if killed for its memory) on problem p5 while the
    file named by the environment variable RSTAR_TEST_FATAL exists."""
    flag = os.environ.get("RSTAR_TEST_FATAL")
    if flag and Path(flag).exists() and FATAL_QUESTION in prompt.rsplit("Question:", 1)[-1]:
        os._exit(9)
    return slow_adder(prompt, n, seed)
