"""The PPM's tokens computed per node against depth, with and without path caching (issue 17).

    python benchmarks/ppm_prefix.py [--depth 10] [--children 4] [--threads 1]

Workload, shaped like MCTS scoring deep paths: ``--trees`` searches in flight, each on its own question (a
prompt of ~220 tokens: a few-shot example all share, the question, the code block's first lines); at each
depth, one call scores the ``--children`` candidate steps of every search's current node, which was scored
in the call before (MCTS scores a node's children when it expands it; rstar's engine batches the requests of
concurrent searches into one call), and each search goes on below its first candidate. The steps are
synthetic but shaped like model-written ones: a comment line and two lines of Python using sympy and numpy,
ending in ``<end_of_step>``, ~55 tokens each. The model is the ``hf`` reward model on a
tiny random Llama (``rstar.testing.models.build_tiny_llama``: 2 layers, hidden size 32, its tokenizer trained
on this workload's text), built in a temporary folder in about a second; its scores are noise, and only its
token counts and the relative cost of its calls mean anything.

Modes: ``off``: ``path_cache_tokens: 0`` (what the ``hf`` reward model did before path caching: the
prefix a call's texts share, here the parent's path, runs once per call, and the prompt's prefix is kept
across calls); ``on``: path caching with its default bound (each child continues from its parent's stored
keys and values).

Per depth and mode: the new step's tokens (mean over the children), the tokens scored per node (the whole
text, as ``score_with_tokens`` reports them), the tokens computed per node (the model's ``tokens_computed``
over the call, divided by the children), their ratio to the new step's tokens (issue 17's target: at most
1.5), and the call's seconds. ``measure`` returns the rows; ``main`` prints them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FEW_SHOT = (
    "<question>\nfind the derivative of x**3 + 2*x at x = 1.\n</question>\n<code>\n"
    "# Step 1: define the function with sympy\nimport sympy as sp\nx = sp.symbols('x')\n"
    "f = x**3 + 2*x\n<end_of_step>\n# Step 2: differentiate and evaluate\nprint(sp.diff(f, x).subs(x, 1))\n"
    "<end_of_code>\n<output>5<end_of_output>\n<answer>the answer is \\boxed{5}.<end_of_answer>\n"
)
"""What every scored text starts with: a few-shot example."""


def prompt(tree: int) -> str:
    """The prompt of the ``tree``-th search: the few-shot example, its question and the code block's first lines."""
    return (
        f"{FEW_SHOT}<question>\nlet f(x) = sin({tree + 1}*x) * exp(x). what is the mean of f' on "
        f"{tree + 20} points of [0, 1]?\n</question>\n<code>\nimport numpy as np\nimport sympy as sp\n"
        f"x = sp.symbols('x')\nf0 = sp.sin({tree + 1}*x) * sp.exp(x)\n"
    )


OPERATIONS = (
    ("differentiate", "sp.diff"),
    ("integrate", "sp.integrate"),
    ("simplify", "sp.simplify"),
    ("expand", "sp.expand"),
    ("factor", "sp.factor"),
    ("find the series of", "sp.series"),
)


def step_text(depth: int, child: int) -> str:
    """A synthetic step at ``depth`` (1-based), the ``child``-th candidate: a comment line, then sympy and numpy."""
    verb, call = OPERATIONS[(depth + child) % len(OPERATIONS)]
    name = f"f{depth}"
    return (
        f"# Step {depth + 2}: {verb} it\n{name} = {call}(f{depth - 1} + {child + 1}*x**{depth % 3 + 2}, x)\n"
        f"print(np.round(float({name}.subs(x, {child + 1})), {depth % 4 + 2}))\n<end_of_step>\n"
    )


@dataclass(frozen=True)
class Row:
    """One depth of one mode: mean tokens per scored node, and the call's seconds."""

    mode: str
    depth: int
    new_tokens: float
    scored_tokens: float
    computed_tokens: float
    seconds: float

    @property
    def ratio(self) -> float:
        """Tokens computed per node over the new step's tokens (issue 17's target: at most 1.5)."""
        return self.computed_tokens / self.new_tokens


MODES = {"off": {"path_cache_tokens": 0}, "on": {}}
"""Reward model options per mode (on top of ``device: cpu, transform: identity``)."""


def build_ppm(folder: Path, max_depth: int, children: int, trees: int) -> Path:
    """A tiny random one-label classifier whose tokenizer knows this workload's text, in ``folder``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rstar.testing.models import CORPUS, build_tiny_llama

    texts = [prompt(t) for t in range(trees)] + [
        step_text(d, c) for d in range(1, max_depth + 1) for c in range(children)
    ]
    lm = build_tiny_llama(folder / "lm", context=2048, corpus=(*CORPUS, *texts), vocab_size=400)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(lm, num_labels=1)
    model.save_pretrained(folder / "ppm")
    AutoTokenizer.from_pretrained(lm).save_pretrained(folder / "ppm")
    return folder / "ppm"


def measure(
    depths: Iterable[int] = range(1, 11),
    *,
    children: int = 4,
    trees: int = 4,
    modes: Sequence[str] = ("off", "on"),
    threads: int = 1,
    model: str | Path | None = None,
) -> list[Row]:
    """Score ``trees`` chains of ``max(depths)`` steps as MCTS does, per mode; one row per depth and mode.

    Each call scores the ``children`` candidates of every tree's current node (``trees`` searches in flight,
    each on its own question, batched together as rstar's engine batches them); the search goes on below the
    first candidate. ``model``: a PPM checkpoint folder to use instead of the tiny one built here (in a
    temporary folder, removed afterwards).
    """
    wanted = sorted(set(depths))
    with tempfile.TemporaryDirectory(prefix="ppm_prefix_") as tmp:
        source = model if model is not None else build_ppm(Path(tmp), wanted[-1], children, trees)
        return [row for mode in modes for row in _run_mode(str(source), mode, wanted, children, trees, threads)]


def _run_mode(source: str, mode: str, depths: list[int], children: int, trees: int, threads: int) -> list[Row]:
    from rstar_hf.reward import HFRewardModel, HFRewardOptions

    from rstar.types import RewardRequest

    options = {"device": "cpu", "dtype": "float32", "transform": "identity", "threads": threads, **MODES[mode]}
    ppm = HFRewardModel(HFRewardOptions(model=source, **options))  # type: ignore[arg-type]
    try:
        rows, paths, nodes = [], [""] * trees, trees * children
        for depth in range(1, depths[-1] + 1):
            items = [
                RewardRequest(prompt(t), paths[t] + step_text(depth, c)) for t in range(trees) for c in range(children)
            ]
            before, started = ppm.tokens_computed, time.perf_counter()
            read = [n for _, n in ppm.score_with_tokens_sync(items)]
            seconds = time.perf_counter() - started
            if depth in depths:
                parents = [len(_ids(ppm, prompt(t) + paths[t])) for t in range(trees) for _ in range(children)]
                new = sum(len(_ids(ppm, i.prompt + i.solution)) - n for i, n in zip(items, parents, strict=True))
                computed = (ppm.tokens_computed - before) / nodes
                rows.append(Row(mode, depth, new / nodes, sum(read) / nodes, computed, seconds))
            paths = [items[t * children].solution for t in range(trees)]
        return rows
    finally:
        ppm.close()


def _ids(ppm: Any, text: str) -> list[int]:
    ids: list[int] = ppm.token_ids([text])[0]
    return ids


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=10, help="deepest depth scored")
    parser.add_argument("--children", type=int, default=4, help="candidate steps scored per node")
    parser.add_argument("--trees", type=int, default=4, help="searches in flight, scored in the same calls")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    rows = measure(range(1, args.depth + 1), children=args.children, trees=args.trees, threads=args.threads)
    by = {(r.mode, r.depth): r for r in rows}
    title = f"PPM tokens per node: {args.trees} trees x {args.children} children per call (tiny random Llama, CPU)"
    table = Table(title=title)
    for column in ("depth", "new step", "scored"):
        table.add_column(column, justify="right")
    for mode in MODES:
        for column in ("computed", "ratio", "s"):
            table.add_column(f"{column} ({mode})", justify="right")
    for depth in range(1, args.depth + 1):
        off, on = by[("off", depth)], by[("on", depth)]
        cells = [str(depth), f"{on.new_tokens:.1f}", f"{on.scored_tokens:.1f}"]
        for r in (off, on):
            cells += [f"{r.computed_tokens:.1f}", f"{r.ratio:.2f}", f"{r.seconds:.3f}"]
        table.add_row(*cells)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
