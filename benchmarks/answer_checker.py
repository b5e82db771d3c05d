"""Throughput and latency of the ``math_verify`` answer checker on this machine.

    python benchmarks/answer_checker.py [--pairs 400] [--workers 1 2] [--checker module:Class ...]

A fixed corpus of typical ``(prediction, reference)`` pairs (GSM8K-style numbers, LaTeX fractions and
roots, tuples, answers with units, lists of references; none of them identical strings, so every pair
goes to a worker) is checked by each checker with each worker count. Each row reports the cold start
(the first one-pair check, which spawns the workers), pairs/s over one batch of ``--pairs`` pairs (the
median of 3 batches) and the median latency of a one-pair check (30 calls in one event loop, as a search
checks one finished leaf at a time).

``--checker`` adds another class with the same interface (``Class(Class.Options(workers=..))``,
``await check(pairs)``, ``close()``) to compare against, e.g. an older copy of the checker.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time
from typing import Any

from rich.console import Console
from rich.table import Table

TEMPLATES: list[tuple[str, Any]] = [
    ("{i}.0", "{i}"),
    ("{i},000", "{i}000"),
    ("{i} dollars", "{i}"),
    ("{i}", r"{i} \text{{ dollars}}"),
    ("The answer is ${i}$.", "{i}"),
    ("{i}", "{j}"),
    ("-{i}", "{i}"),
    (r"\frac{{{i}}}{{3}}", "{i}/3"),
    ("{i}.5", r"\frac{{{k}}}{{2}}"),
    ("0.33", r"\frac{{{i}}}{{3}}"),
    (r"{i}\sqrt{{2}}", r"\sqrt{{{m}}}"),
    ("({i},2)", "({i}, 2)"),
    (r"\text{{(A)}}", "A"),
    (r"\frac{{{k}}}{{2}}", ["{j}", "{i}.5"]),
    ("x^2+{d}x+{i}", "(x+{i})^2"),
    (r"\pi/{i}", r"\frac{{\pi}}{{{i}}}"),
]
"""Typical pairs, about half of them equivalent; ``{i}`` varies so that no two batches repeat a pair."""


def typical_pairs(n: int, offset: int = 0) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for number in range(offset, offset + n):
        prediction, reference = TEMPLATES[number % len(TEMPLATES)]
        i = 2 + number // len(TEMPLATES)
        values = {"i": i, "j": i + 1, "k": 2 * i + 1, "m": 2 * i * i, "d": 2 * i}
        if isinstance(reference, list):
            reference = [r.format(**values) for r in reference]
        else:
            reference = reference.format(**values)
        pairs.append((prediction.format(**values), reference))
    return pairs


REPEATS = 3
LATENCY_CALLS = 30


def load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


async def measure(cls: Any, workers: int, pairs: int) -> tuple[float, float, float]:
    checker = cls(cls.Options(workers=workers))
    try:
        start = time.perf_counter()
        await checker.check(typical_pairs(1))
        cold = time.perf_counter() - start
        await checker.check(typical_pairs(len(TEMPLATES) * workers))  # every worker has warmed up
        offset = 10_000
        rates = []
        for _ in range(REPEATS):
            batch = typical_pairs(pairs, offset)
            offset += pairs
            start = time.perf_counter()
            await checker.check(batch)
            rates.append(len(batch) / (time.perf_counter() - start))
        latencies = []
        for pair in typical_pairs(LATENCY_CALLS, offset):
            start = time.perf_counter()
            await checker.check([pair])
            latencies.append(time.perf_counter() - start)
        return cold, statistics.median(rates), statistics.median(latencies)
    finally:
        checker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=400, help="pairs per timed batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--checker", action="append", default=[], help="module:Class to compare against")
    parser.add_argument("--rounds", type=int, default=1, help="measure every row this often, interleaved")
    args = parser.parse_args()

    rows = [
        (spec, workers)
        for spec in ["rstar_mathverify.checker:MathVerifyChecker", *args.checker]
        for workers in args.workers
    ]
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {row: [] for row in rows}
    for _ in range(args.rounds):  # interleaved, so that a change in the machine's load hits every row alike
        for spec, workers in rows:
            results[spec, workers].append(asyncio.run(measure(load(spec), workers, args.pairs)))

    per_row = REPEATS if args.rounds == 1 else f"{REPEATS} x {args.rounds} rounds"
    table = Table(title=f"answer checker: {args.pairs} typical pairs per batch (median of {per_row})")
    for column in ("checker", "workers", "cold start s", "pairs/s", "one-pair p50 ms"):
        table.add_column(column, justify="left" if column == "checker" else "right")
    for (spec, workers), measured in results.items():
        cold, rate, latency = (statistics.median(values) for values in zip(*measured, strict=True))
        table.add_row(spec, str(workers), f"{cold:.2f}", f"{rate:.0f}", f"{latency * 1000:.1f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
