"""A scripted policy with more going on than `rstar.testing.worlds.adder`, so that the viewer's real trees have
every kind of node: for "What is a plus b?" it writes the sum under one of several names and comments, sometimes
slips (``a - b``), sometimes writes code that fails (a name it never defined), sometimes adds a checking step
before printing (so a solution can run past ``max_depth``), then answers with what the code printed.

Used from a recipe as ``policy: {name: scripted, fn: "view_world:varied"}`` with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import random
import re

NAMES = ("result", "total", "answer")
COMMENTS = ("# Step 1: add the two numbers", "# Step 1: combine them", "# Step 1: put the numbers together")


def varied(prompt: str, n: int, seed: int | None = None) -> list[str]:
    question = prompt.rsplit("Question:", 1)[-1]
    partial = question[question.find("<code>") :] if "<code>" in question else ""
    rng = random.Random(f"{seed}:{partial}")
    a, b = ([int(x) for x in re.findall(r"-?\d+", question)] + [0, 0])[:2]
    samples = []
    for _ in range(n):
        roll = rng.random()
        if not partial:
            expr = f"{a} + missing" if roll < 0.15 else f"{a} - {b}" if roll < 0.35 else f"{a} + {b}"
            samples.append(f"<code>\n{rng.choice(COMMENTS)}\n{rng.choice(NAMES)} = {expr}\n<end_of_step>")
        elif "<end_of_output>" not in partial:
            found = re.search(r"^(\w+) = ", partial, re.M)
            name = found.group(1) if found else "result"
            if roll < 0.3:
                samples.append(f"\n# Step 2: check it\nassert isinstance({name}, int), 'not a number'\n<end_of_step>")
            else:
                samples.append(f"\n# Now print the final answer\nprint({name})\n<end_of_code>")
        else:
            value = partial.rsplit("<output>", 1)[-1].split("<end_of_output>")[0].strip()
            samples.append(f"\n<answer>The answer is \\boxed{{{value}}}.<end_of_answer>")
    return samples
