"""Search at the speed of the step: the verifier (``state: replay`` vs ``fork``) and the PPM (path caching off vs
on) on deep trees, per depth (issue 17).

    python benchmarks/step_speed.py [--verifier subprocess|docker] [--skip-ppm]
    python benchmarks/step_speed.py --record      # rewrite benchmarks/data/deep_trees.json

**Corpus** (``benchmarks/data/deep_trees.json``, made by ``--record`` from a fixed seed, then kept as is): 6
trees shaped like MCTS trees, one code block deep: a path of 10 steps, and at each depth from 2 to 10 the path's
node has 2 children (one of them goes on), so 19 nodes per tree, 6 at depth 1 and 12 at each depth after. The
steps are written like the policy's steps on MATH problems: a ``# Step k:`` comment and a few lines of
sympy and numpy (solving, factoring, integrating, linear algebra, number theory), each building on names the
first step defined; each depth has each of the 12 step templates once, so depths cost the same to run alone.
They are generated from templates, not sampled from a model: no model on this machine writes deep sympy
programs. The step texts are in the step format, and each node's program is what the search
builds (`rstar.steps.StepFormat.program` over its path).

**Verifier.** For each mode, a fresh verifier with one worker (so its time is the jobs' time, one after the
other) runs the trees level by level, all nodes of a depth in one call, as a search's waves do. Per depth: the
verifier's CPU seconds per node (the worker's process tree: its reaped jobs' CPU time and that of the live
states), wall seconds per node, and the peak memory (PSS, summed over the worker's processes, states
included). Then jobs/s over the whole run, and the whole trees' cost to depth 8. Targets: ``fork``'s cost per
node flat in depth (depth 10 within 1.5x of depth 2) and at least 3x less verifier time than ``replay`` over a
whole depth-8 tree.

**PPM.** `benchmarks/ppm_prefix.py`'s ``measure`` (the ``hf`` reward model on a tiny random model, 4 searches
in flight, 4 children per node): tokens computed per node against the new step's tokens, with path caching
off and on. Target: at most 1.5x the new step's tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rstar.registry import get_registry
from rstar.steps import StepFormat, StepFormatOptions
from rstar.types import CodeJob

CORPUS = Path(__file__).with_name("data") / "deep_trees.json"
DEPTH = 10
CHILDREN = 2
TREES = 6

FIRST = "import sympy as sp\nimport numpy as np\nx, y = sp.symbols('x y')"
TEMPLATES = [
    ("find the roots of the quadratic", "roots = sp.solve(x**2 - {s}*x + {p}, x)\nprint(roots)"),
    ("factor the expanded polynomial", "poly = sp.expand((x + {a})**3 * (x - {b}))\nprint(sp.factor(poly))"),
    ("compute the determinant", "A = np.array([[{a}, {b}], [{c}, {d}]])\nprint(round(float(np.linalg.det(A)), 3))"),
    ("sum the squares", "total = sum(k**2 for k in range(1, {n} + 1))\nprint(total)"),
    ("check whether the number is prime", "candidate = {big}\nprint(sp.isprime(candidate), sp.factorint(candidate))"),
    ("add the fractions", "frac = sp.Rational({a}, {b}) + sp.Rational({c}, {d})\nprint(frac)"),
    ("integrate the polynomial", "area = sp.integrate(x**{e} + {a}*x, (x, 0, {b}))\nprint(area)"),
    ("solve the linear system", "sol = sp.solve([x + y - {a}, x - y - {b}], [x, y])\nprint(sol)"),
    ("gcd and lcm", "g, l = sp.gcd({a}, {b}), sp.lcm({a}, {b})\nprint(g, l)"),
    ("differentiate and evaluate", "d = sp.diff(sp.sin(x) * x**{e}, x)\nprint(sp.simplify(d.subs(x, 0)))"),
    ("the mean of sample points", "vals = np.linspace(0, {a}, {n})\nprint(round(float(vals.mean()), 4))"),
    ("simplify the trigonometric expression", "expr = sp.simplify(sp.sin(x)**2 + sp.cos(x)**2 + {a})\nexpr"),
]


# --- the corpus -------------------------------------------------------------------------------------


def record(seed: int = 17) -> dict[str, Any]:
    """Make the corpus: ``TREES`` trees of nodes ``{"id", "parent", "depth", "text"}`` in the step format."""
    rng = random.Random(seed)

    # Each depth draws every template the same number of times (a shuffled deck per depth), so that the cost per
    # node compares depths, not templates.
    decks = {
        depth: rng.sample(TEMPLATES * (TREES * CHILDREN // len(TEMPLATES)), TREES * CHILDREN)
        for depth in range(2, DEPTH + 1)
    }

    def step(k: int) -> str:
        title, code = decks[k].pop()
        a, b, c, d = (rng.randint(2, 30) for _ in range(4))
        s = rng.randint(3, 20)
        values = {"a": a, "b": b, "c": c, "d": d, "s": s, "p": rng.randint(1, s * s // 4), "n": rng.randint(5, 60)}
        values |= {"e": rng.randint(2, 6), "big": rng.randint(10**8, 10**9)}
        return f"\n# Step {k}: {title}\n{code.format(**values)}\n<end_of_step>"

    trees = []
    for t in range(TREES):
        nodes = [
            {"id": f"{t}.1", "parent": None, "depth": 1, "text": f"<code>\n# Step 1: set up\n{FIRST}\n<end_of_step>"}
        ]
        on_path = nodes[0]
        for depth in range(2, DEPTH + 1):
            children = [
                {"id": f"{t}.{depth}.{i}", "parent": on_path["id"], "depth": depth, "text": step(depth)}
                for i in range(CHILDREN)
            ]
            nodes += children
            on_path = children[0]
        trees.append(nodes)
    return {"seed": seed, "about": __doc__.split("**Corpus**")[1].split("**Verifier")[0].strip(), "trees": trees}


def programs(corpus: dict[str, Any]) -> dict[int, list[str]]:
    """Each node's program, as the search builds it, by depth."""
    fmt = StepFormat.from_config(StepFormatOptions())
    by_depth: dict[int, list[str]] = {}
    for nodes in corpus["trees"]:
        by_id = {n["id"]: n for n in nodes}
        for node in nodes:
            path = []
            parent = node["parent"]
            while parent is not None:
                path.append(by_id[parent]["text"])
                parent = by_id[parent]["parent"]
            by_depth.setdefault(node["depth"], []).append(fmt.program(path[::-1], node["text"]))
    return by_depth


# --- measuring the verifier ---------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _cpu_and_pss(root: int) -> tuple[float, int]:
    """CPU seconds of ``root``'s process tree (live processes, and the children they reaped) and its PSS bytes."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, pss = 0.0, 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            cpu += sum(int(v) for v in fields[11:15]) / ticks  # utime, stime, cutime, cstime
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return cpu, pss


def measure_verifier(by_depth: dict[int, list[str]], name: str, state: str) -> list[dict[str, float]]:
    verifier = get_registry().build("verifier", {"name": name, "state": state, "max_workers": 1, "timeout_s": 30})
    rows = []

    async def go() -> None:
        await verifier.run([CodeJob("print('warm')")])  # start the worker outside the measurement
        worker = next(iter(verifier._workers))
        root = worker.process.pid if worker.process is not None else None
        peak = 0
        for depth in sorted(by_depth):
            jobs = [CodeJob(p) for p in by_depth[depth]]
            cpu0 = _cpu_and_pss(root)[0] if root else time.process_time()
            start = time.perf_counter()
            verdicts = await verifier.run(jobs)
            wall = time.perf_counter() - start
            cpu1, pss = _cpu_and_pss(root) if root else (time.process_time(), 0)
            peak = max(peak, pss)
            bad = [v for v in verdicts if v.status != "ok"]
            if bad:
                raise SystemExit(f"{state}: a corpus program failed: {bad[0]}")
            rows.append(
                {
                    "depth": depth,
                    "nodes": len(jobs),
                    "cpu": (cpu1 - cpu0) / len(jobs),
                    "wall": wall / len(jobs),
                    "total_wall": wall,
                    "total_cpu": cpu1 - cpu0,
                    "peak_mb": peak / 2**20,
                }
            )

    try:
        asyncio.run(go())
    finally:
        counts = dict(verifier.states.counts)
        verifier.close()
    rows[-1]["counts"] = counts  # type: ignore[assignment]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", default="subprocess", choices=["subprocess", "docker"])
    parser.add_argument("--skip-ppm", action="store_true")
    parser.add_argument("--record", action="store_true", help="rewrite the corpus file and stop")
    args = parser.parse_args()
    if args.record:
        CORPUS.parent.mkdir(exist_ok=True)
        CORPUS.write_text(json.dumps(record(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {CORPUS}")
        return
    by_depth = programs(json.loads(CORPUS.read_text(encoding="utf-8")))
    console = Console(width=140)
    results = {state: measure_verifier(by_depth, args.verifier, state) for state in ("replay", "fork")}

    table = Table(title=f"verifier ({args.verifier}, 1 worker): per node, by depth")
    for column in ("depth", "nodes", "replay CPU ms", "fork CPU ms", "replay wall ms", "fork wall ms", "fork/replay"):
        table.add_column(column, justify="right")
    for r, f in zip(results["replay"], results["fork"], strict=True):
        table.add_row(
            str(r["depth"]),
            str(r["nodes"]),
            f"{r['cpu'] * 1e3:.1f}",
            f"{f['cpu'] * 1e3:.1f}",
            f"{r['wall'] * 1e3:.1f}",
            f"{f['wall'] * 1e3:.1f}",
            f"{f['wall'] / r['wall']:.2f}",
        )
    console.print(table)

    summary = Table(title="whole run")
    for column in (
        "mode",
        "jobs/s",
        "CPU s to depth 8",
        "wall s to depth 8",
        "all CPU s",
        "peak MiB",
        "forked a state",
    ):
        summary.add_column(column, justify="right")
    for state, rows in results.items():
        to8 = [row for row in rows if row["depth"] <= 8]
        summary.add_row(
            state,
            f"{sum(r['nodes'] for r in rows) / sum(r['total_wall'] for r in rows):.1f}",
            f"{sum(r['total_cpu'] for r in to8):.2f}",
            f"{sum(r['total_wall'] for r in to8):.2f}",
            f"{sum(r['total_cpu'] for r in rows):.2f}",
            f"{max(r['peak_mb'] for r in rows):.0f}",
            f"{rows[-1].get('counts', {}).get('from_state', 0)} of {sum(r['nodes'] for r in rows)}",
        )
    console.print(summary)
    fork, replay = results["fork"], results["replay"]
    at = {r["depth"]: r for r in fork}
    flat = at[DEPTH]["cpu"] / at[2]["cpu"]
    gain = sum(r["total_cpu"] for r in replay if r["depth"] <= 8) / sum(r["total_cpu"] for r in fork if r["depth"] <= 8)
    console.print(
        f"fork: CPU per node at depth {DEPTH} / depth 2 = {flat:.2f} (target <= 1.5); "
        f"replay / fork CPU over the trees to depth 8 = {gain:.1f}x (target >= 3)"
    )

    if not args.skip_ppm:
        sys.path.insert(0, str(Path(__file__).parent))
        from ppm_prefix import main as ppm_main

        sys.argv = [sys.argv[0]]
        ppm_main()


if __name__ == "__main__":
    main()
