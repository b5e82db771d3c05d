"""Small scripted worlds: deterministic policies and reward functions for tests and examples.

``adder`` answers questions that contain two integers ("What is 12 plus 30?") with a three-step
code-augmented solution. With a seed it sometimes slips (writes ``a - b``), so votes and searches
have something to do. Use it from a recipe as ``policy: {name: scripted, fn: "rstar.testing.worlds:adder"}``.
"""

from __future__ import annotations

import random
import re

from rstar.steps import ANSWER, ANSWER_END, CODE, CODE_END, OUTPUT_END, STEP_END

SLIP_RATE = 0.3


def _operands(prompt: str) -> tuple[int, int]:
    question = prompt.rsplit("Question:", 1)[-1] if "Question:" in prompt else prompt
    numbers = [int(x) for x in re.findall(r"-?\d+", question)[:2]]
    while len(numbers) < 2:
        numbers.append(0)
    return numbers[0], numbers[1]


def _partial(prompt: str) -> str:
    """The solution written so far: everything after the last ``Question:`` line's first ``<code>``."""
    tail = prompt.rsplit("Question:", 1)[-1]
    return tail[tail.find(CODE) :] if CODE in tail else ""


def adder(prompt: str, n: int, seed: int | None = None) -> list[str]:
    """The next step of a solution to "what is a plus b", for each of ``n`` samples."""
    rng = random.Random(seed)
    a, b = _operands(prompt)
    partial = _partial(prompt)
    out = []
    for _ in range(n):
        slip = rng.random() < SLIP_RATE
        if not partial:
            op = "-" if slip else "+"
            out.append(f"{CODE}\n# Step 1: combine the two numbers\nresult = {a} {op} {b}\n{STEP_END}")
        elif OUTPUT_END not in partial:
            out.append(f"\n# Now print the final answer\nprint(result)\n{CODE_END}")
        else:
            value = partial.split("<output>")[-1].split(OUTPUT_END)[0].strip()
            out.append(f"\n{ANSWER}The answer is \\boxed{{{value}}}.{ANSWER_END}")
    return out


def prefers_short(text: str) -> float:
    """A reward function: shorter solutions score higher (in (0, 1])."""
    return 1.0 / (1.0 + len(text) / 1000.0)
