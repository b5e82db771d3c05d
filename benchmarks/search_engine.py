"""The engine's own cost: overhead per expanded node and batch sizes, with a policy of fixed cost.

A scripted policy (the ``adder`` world of ``rstar.testing.worlds``) sleeps a fixed time per call
(one call = one batch, as for an offline engine); the verifier and checker are instant fakes, so
everything else the wall clock sees is the framework. Prints a table:

    python benchmarks/search_engine.py [--strategy best_of_n] [--call-ms 10] [--problems 1 16 256]

Targets (issue 5): overhead under 5% of policy time at 10 ms per call; mean batch size at 256
problems at least 90% of the problems waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from rstar.engine import Components, Engine
from rstar.registry import get_registry
from rstar.steps import StepFormat
from rstar.testing.scripted import ScriptedPolicy
from rstar.testing.worlds import adder
from rstar.types import Budget, CodeJob, GenerationRequest, GenerationResult, Problem, Reference, Verdict


class TimedScriptedPolicy(ScriptedPolicy):
    """Benchmark fake: the adder world, costing ``seconds`` per call (per batch)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(adder)
        self.seconds = seconds
        self.busy = 0.0

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        start = time.perf_counter()
        await asyncio.sleep(self.seconds)
        results = await super().generate(requests)
        self.busy += time.perf_counter() - start
        return results


class InstantVerifier:
    """Benchmark fake: every program "prints" the value of the adder world's sum, instantly."""

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        out = []
        for job in jobs:
            expr = next(
                (line.split("=", 1)[1] for line in job.program.splitlines() if line.startswith("result =")), "0"
            )
            out.append(Verdict("ok", f"{eval(expr)}\n" if "print" in job.program else ""))
        return out


class InstantChecker:
    """Benchmark fake: exact string equality."""

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        return [str(ref).strip() == pred.strip() for pred, ref in pairs]


def measure(strategy_name: str, problems: int, call_s: float, samples: int) -> dict[str, float]:
    policy = TimedScriptedPolicy(call_s)
    engine = Engine(Components(policy, InstantVerifier(), InstantChecker()), max_in_flight=problems, max_batch=4096)
    strategy = get_registry().build("search", {"name": strategy_name})
    todo = [Problem(str(i), f"What is {i} plus {i + 1}?", str(2 * i + 1)) for i in range(problems)]
    start = time.perf_counter()
    trees = asyncio.run(engine.run(todo, strategy, StepFormat.from_options(), Budget(samples=samples)))
    wall = time.perf_counter() - start
    nodes = sum(len(t.nodes) - 1 for t in trees)
    stats = engine.policy.stats
    return {
        "problems": problems,
        "nodes": nodes,
        "policy_calls": stats.batches,
        "mean_batch": stats.mean_batch,
        "wall_s": wall,
        "policy_s": policy.busy,
        "overhead_pct": 100 * (wall - policy.busy) / policy.busy,
        "overhead_per_node_ms": 1000 * (wall - policy.busy) / max(nodes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", default="best_of_n")
    parser.add_argument("--call-ms", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--problems", type=int, nargs="+", default=[1, 16, 256])
    args = parser.parse_args()
    table = Table(title=f"engine overhead: {args.strategy}, policy {args.call_ms:g} ms per call")
    for col in ("problems", "nodes", "policy calls", "mean batch", "wall s", "policy s", "overhead %", "ms/node"):
        table.add_column(col, justify="right")
    for n in args.problems:
        r = measure(args.strategy, n, args.call_ms / 1000, args.samples)
        table.add_row(
            str(n),
            str(r["nodes"]),
            str(r["policy_calls"]),
            f"{r['mean_batch']:.1f}",
            f"{r['wall_s']:.3f}",
            f"{r['policy_s']:.3f}",
            f"{r['overhead_pct']:.1f}",
            f"{r['overhead_per_node_ms']:.3f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
