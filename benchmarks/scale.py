"""Scale-out: problems per second of one search on 1, 2 and 4 Ray workers, and the driver's own cost per tree.

The policy is the scripted ``adder`` world costing a fixed time per call (``time.sleep``, once per request): its
cost is waiting, as with a remote or GPU engine, so on this 2-core machine more workers should help until the
CPUs, not the policy, are what the search waits for. The verifier (subprocess) and the answer checker
(math-verify) are the real ones, one of each per worker, as in a real run. Each row is one search of the same
problems into a fresh run folder; ``in process`` is the same recipe without an executor.

Columns: wall seconds of the search (workers starting included), problems per second on that wall time, the
speed-up over 1 worker and the efficiency (speed-up / workers); the time until the first worker was ready, and
the same three figures after it (the start-up, paid once per search, left out); the driver's own time per tree
(appending it to ``trees.jsonl`` with an fsync, the hooks, the bookkeeping).

    python benchmarks/scale.py [--problems 256] [--cost-ms 50] [--workers 1 2 4] [--strategy greedy]

Target (issue 13): at least 1.8x with 2 workers against 1.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.runner import Runner
from rstar.testing.worlds import adder

COST_S = 0.05
"""What one policy call costs; set from ``--cost-ms`` in the workers through the environment."""


def sleepy_adder(prompt: str, n: int, seed: int | None = None) -> list[str]:
    """The adder world, waiting ``RSTAR_SCALE_COST_S`` (default `COST_S`) seconds first."""
    time.sleep(float(os.environ.get("RSTAR_SCALE_COST_S", COST_S)))
    return adder(prompt, n, seed)


def write_problems(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps({"id": f"p{i}", "question": f"What is {i * 7} plus {i + 3}?", "answer": str(i * 8 + 3)})
            )
            fh.write("\n")


def search(root: Path, problems: Path, strategy: str, executor: dict[str, Any] | None) -> tuple[float, dict[str, Any]]:
    recipe: dict[str, Any] = {
        "output_dir": str(root),
        "seed": 0,
        "dataset": {"name": "jsonl", "path": str(problems)},
        "policy": {"name": "scripted", "fn": "scale:sleepy_adder"},
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "answer_checker": {"name": "math_verify"},
        "search": {"name": strategy},
    }
    if executor is not None:
        recipe["executor"] = executor
    pm = make_plugin_manager()
    runner = Runner(recipe, Registry.from_plugin_manager(pm), pm)
    started = time.perf_counter()
    summary = runner.search().summary
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--cost-ms", type=float, default=COST_S * 1000, help="what one policy call costs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--strategy", default="greedy")
    parser.add_argument("--no-in-process", action="store_true", help="skip the search without an executor")
    args = parser.parse_args()

    import ray
    from rstar_ray.executor import connect
    from rstar_ray.options import RayOptions

    os.environ["RSTAR_SCALE_COST_S"] = str(args.cost_ms / 1000)
    env = {"env_vars": {"RSTAR_SCALE_COST_S": str(args.cost_ms / 1000)}}
    connect(ray, RayOptions(num_cpus=max(args.workers)))
    console = Console(width=160)
    rows: list[tuple[str, float, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        problems = root / "problems.jsonl"
        write_problems(problems, args.problems)
        if not args.no_in_process:
            rows.append(("in process", *search(root / "local", problems, args.strategy, None)))
            console.print(f"in process: {rows[-1][1]:.1f} s")
        for n in args.workers:
            executor = {"name": "ray", "workers": n, "runtime_env": env}
            rows.append(
                (f"{n} worker{'s' if n > 1 else ''}", *search(root / f"ray{n}", problems, args.strategy, executor))
            )
            console.print(f"{n} workers: {rows[-1][1]:.1f} s")
    ray.shutdown()

    one = next(((s, summary) for label, s, summary in rows if label == "1 worker"), None)
    one_steady = args.problems / (one[0] - one[1]["components"]["executor"]["startup_s"]) if one else None
    title = f"{args.problems} problems, {args.strategy}, policy {args.cost_ms:g} ms per call"
    table = Table(title=title)
    columns = ["run", "seconds", "problems/s", "speed-up", "efficiency", "start-up s", "after start: problems/s"]
    columns += ["speed-up", "efficiency", "driver ms/tree"]
    for col in columns:
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, seconds, summary in rows:
        executor = summary.get("components", {}).get("executor")
        if executor is None:
            table.add_row(label, f"{seconds:.1f}", f"{args.problems / seconds:.2f}", *[""] * 7)
            continue
        workers, startup = executor["workers"], executor["startup_s"]
        steady = args.problems / (seconds - startup)
        speedup = one[0] / seconds if one else 0.0
        steady_speedup = steady / one_steady if one_steady else 0.0
        table.add_row(
            label,
            f"{seconds:.1f}",
            f"{args.problems / seconds:.2f}",
            f"{speedup:.2f}x",
            f"{speedup / workers:.0%}",
            f"{startup:.1f}",
            f"{steady:.2f}",
            f"{steady_speedup:.2f}x",
            f"{steady_speedup / workers:.0%}",
            f"{executor['driver_ms_per_tree']:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
