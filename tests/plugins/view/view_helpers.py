"""Trees for the viewer's tests: a real compare folder made by ``rstar compare`` with the scripted world, and a
large generated tree with every kind of node."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import yaml
from helpers import RSTAR, adder_problems

from rstar.steps import TOO_MANY_ERRORS, TOO_MANY_STEPS

HERE = Path(__file__).parent

CELLS = {
    "greedy@1": "cells/greedy/samples_1/search",
    "vote@4": "cells/vote/samples_4/search",
    "beam@4": "cells/beam/samples_4/search",
    "mcts@8": "cells/mcts/samples_8/search",
}
"""The cells of `make_compare_folder`: label → trees folder."""


def make_compare_folder(root: Path) -> Path:
    """``rstar compare`` over six adder problems with a scripted policy (`view_world.varied`) and the subprocess
    verifier: greedy, best-of-N with a majority vote, beam (scored by the scripted reward model) and MCTS. Returns
    the output folder; its cells are `CELLS`."""
    data = root / "adds.jsonl"
    data.write_text(
        "".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n" for p in adder_problems(6))
    )
    recipe = {
        "output_dir": str(root / "cmp"),
        "seed": 1,
        "dataset": {"name": "jsonl", "path": str(data)},
        "policy": {"name": "scripted", "fn": "view_world:varied"},
        "verifier": {"name": "subprocess"},
        "search": {"name": "best_of_n", "vote": "majority"},
        "budget": {"samples": 4, "max_depth": 4},
        "compare": {
            "budgets": [4],
            "bootstrap": 50,
            "strategies": {
                "greedy": {"search": {"name": "greedy"}, "budgets": [1]},
                "vote": {},
                "beam": {
                    "search": {"name": "beam", "expand_samples": 2},
                    "reward_model": {"name": "scripted", "fn": "rstar.testing.worlds:prefers_short"},
                },
                "mcts": {"search": {"name": "mcts", "expand_samples": 3}, "budgets": [8]},
            },
        },
    }
    path = root / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([RSTAR, "compare", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "cmp"


def read_trees(path: Path) -> dict[str, dict[str, Any]]:
    """The trees of a trees.jsonl by problem id, as plain JSON."""
    return {t["id"]: t for t in map(json.loads, path.read_text().splitlines()) if t}


def big_tree(size: int = 5000, seed: int = 0, problem: str = "big") -> dict[str, Any]:
    """An MCTS-shaped tree of ``size`` nodes: steps with code (some failing), answers right and wrong, too many
    steps and too many errors, open leaves; visits and Q-values falling with depth. The chosen answer is the
    answer node with the highest Q."""
    rng = random.Random(seed)
    nodes: list[dict[str, Any]] = [_node("0", None, 0, "", visits=size)]
    frontier = [nodes[0]]
    while len(nodes) < size:
        parent = (
            frontier.pop(0) if rng.random() < 0.35 or len(frontier) < 4 else frontier.pop(rng.randrange(len(frontier)))
        )
        for k in range(1, rng.randint(2, 4) + 1):
            if len(nodes) >= size:
                break
            depth = parent["depth"] + 1
            node_id = f"{parent['id']}.{k}"
            roll = rng.random()
            visits = max(1, parent["visits"] // rng.randint(2, 5))
            q = round(rng.uniform(-1, 1), 4)
            if roll < 0.08 and depth > 1:
                value = rng.randint(1, 99)
                correct = value % 3 == 0
                node = _node(
                    node_id,
                    parent["id"],
                    depth,
                    f"\n<answer>The answer is \\boxed{{{value}}}.<end_of_answer>",
                    visits=visits,
                    q=q,
                    terminal=True,
                    final_answer=str(value),
                    correct=correct,
                )
            elif roll < 0.12:
                node = _node(
                    node_id,
                    parent["id"],
                    depth,
                    f"\nprint(x{depth} / 0)\n<end_of_code>\n<output>ZeroDivisionError: division by zero<end_of_output>",
                    output="ZeroDivisionError: division by zero",
                    visits=1,
                    q=-1.0,
                    terminal=True,
                    final_answer=TOO_MANY_ERRORS,
                )
            elif roll < 0.15 and depth > 6:
                node = _node(
                    node_id,
                    parent["id"],
                    depth,
                    f"\n# Step {depth}: keep going\nx{depth} = x{depth - 1} + 1\n<end_of_step>",
                    visits=1,
                    q=-1.0,
                    terminal=True,
                    final_answer=TOO_MANY_STEPS,
                )
            else:
                output = "NameError: name 'y' is not defined" if roll < 0.2 else None
                node = _node(
                    node_id,
                    parent["id"],
                    depth,
                    f"\n# Step {depth}: add {k} to the total\n"
                    f"x{depth} = {'y' if output else f'x{depth - 1}'} + {k}\n<end_of_step>",
                    output=output,
                    visits=visits,
                    q=q,
                )
                frontier.append(node)
            nodes.append(node)
    answers = [n for n in nodes if n["final_answer"] not in (None, TOO_MANY_ERRORS, TOO_MANY_STEPS)]
    best = max(answers, key=lambda n: n["q_value"])
    best["q_value"] = 1.0
    return {
        "id": problem,
        "question": f"A generated tree of {size} nodes: what is the total?",
        "answer": "3",
        "strategy": "mcts",
        "prediction": best["final_answer"],
        "correct": best["correct"],
        "usage": {"policy_calls": size // 3, "generated_tokens": size * 20, "verifier_jobs": size // 2},
        "nodes": nodes,
    }


def _node(node_id: str, parent: str | None, depth: int, text: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "parent": parent,
        "depth": depth,
        "text": text,
        "output": fields.get("output"),
        "visits": fields.get("visits", 0),
        "q_value": fields.get("q", 0.0),
        "value": fields.get("q"),
        "terminal": fields.get("terminal", False),
        "final_answer": fields.get("final_answer"),
        "correct": fields.get("correct"),
    }
