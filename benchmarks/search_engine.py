"""The engine's own cost: overhead per expanded node and batch sizes, with a policy of fixed cost.

A scripted policy (the ``adder`` world of ``rstar.testing.worlds``) sleeps a fixed time; the verifier
and checker are instant fakes, so everything else the wall clock sees is the framework (the fakes'
own few microseconds included). Each cell runs twice, with two costs of the policy:

* ``per call``: 10 ms per ``generate`` call, however many requests it holds (one batch of an offline
  engine costing as much as one request: the harshest case for the framework);
* ``per request``: 10 ms per request in the call (a step of real generation, unbatched).

It prints, per strategy and number of problems searched at once: expanded nodes, policy calls, mean
batch (requests per call), fill (searches with a request in a call / searches alive when it was sent),
the framework's time per expanded node, and its share of the policy's time under both costs:

    python benchmarks/search_engine.py [--strategies best_of_n mcts] [--call-ms 10] [--problems 1 16 256]

Targets (issue 5): overhead under 5% of policy time at 10 ms per call; mean batch size at 256
problems at least 90% of the problems waiting (the fill).
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
from rstar.types import (
    Budget,
    CodeJob,
    GenerationRequest,
    GenerationResult,
    Problem,
    Reference,
    Tree,
    Verdict,
)


class TimedScriptedPolicy(ScriptedPolicy):
    """Benchmark fake: the adder world, costing ``seconds`` per call (per batch)."""

    def __init__(self, seconds: float, per_request: bool) -> None:
        super().__init__(adder)
        self.seconds = seconds
        self.per_request = per_request
        self.busy = 0.0

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        start = time.perf_counter()
        await asyncio.sleep(self.seconds * (len(requests) if self.per_request else 1))
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


def measure(strategy_name: str, problems: int, call_s: float, samples: int, per_request: bool) -> dict[str, float]:
    policy = TimedScriptedPolicy(call_s, per_request)
    engine = Engine(Components(policy, InstantVerifier(), InstantChecker()), max_in_flight=problems, max_batch=4096)
    strategy = get_registry().build("search", {"name": strategy_name})
    todo = [Problem(str(i), f"What is {i} plus {i + 1}?", str(2 * i + 1)) for i in range(problems)]

    async def timed() -> tuple[list[Tree], float]:  # the event loop's own start and end are not the engine's
        start = time.perf_counter()
        trees = await engine.run(todo, strategy, StepFormat.from_options(), Budget(samples=samples))
        return trees, time.perf_counter() - start

    trees, wall = asyncio.run(timed())
    nodes = sum(len(t.nodes) - 1 for t in trees)
    stats = engine.policy.stats
    return {
        "problems": problems,
        "nodes": nodes,
        "policy_calls": stats.batches,
        "mean_batch": stats.mean_batch,
        "fill": stats.mean_fill,
        "wall_s": wall,
        "policy_s": policy.busy,
        "overhead_pct": 100 * (wall - policy.busy) / policy.busy,
        "overhead_per_node_ms": 1000 * (wall - policy.busy) / max(nodes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=["best_of_n", "mcts"])
    parser.add_argument("--call-ms", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--problems", type=int, nargs="+", default=[1, 16, 256])
    args = parser.parse_args()
    table = Table(title=f"engine overhead, policy {args.call_ms:g} ms per call or per request")
    columns = ("strategy", "problems", "nodes", "policy calls", "mean batch", "fill %", "µs/node")
    for col in (*columns, "overhead % (per call)", "overhead % (per request)"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for strategy in args.strategies:
        for n in args.problems:
            r = measure(strategy, n, args.call_ms / 1000, args.samples, per_request=False)
            q = measure(strategy, n, args.call_ms / 1000, args.samples, per_request=True)
            table.add_row(
                strategy,
                str(n),
                str(r["nodes"]),
                str(r["policy_calls"]),
                f"{r['mean_batch']:.1f}",
                f"{100 * r['fill']:.1f}",
                f"{1000 * r['overhead_per_node_ms']:.0f}",
                f"{r['overhead_pct']:.1f}",
                f"{q['overhead_pct']:.2f}",
            )
        table.add_section()
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
