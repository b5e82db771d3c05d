"""Throughput and latency of the step verifiers on this machine, all measured in one run.

    python benchmarks/sandbox.py [--jobs 1000] [--skip-docker]

A fixed corpus of step programs (short arithmetic, sympy solving, numpy, erroring code, timeouts) goes
through: one fresh ``python -c`` per job (the naive baseline, sequential), in-process ``exec`` (the
unsafe upper bound the original used), the ``subprocess`` verifier with ``isolation: none``, with
bubblewrap, and with bubblewrap but every job forked (``inline: false``), and the ``docker`` verifier
(when its SDK, an engine and its image are there). Each cell reports jobs/s (the median of 5
repetitions, or one where a repetition takes over a second) and p50/p99 latency; the last columns
are ratios to the naive baseline and to ``exec``. Targets (issue 3): ``subprocess`` at least 10x the
naive baseline on sympy programs and within 5x of ``exec`` on short arithmetic; ``docker`` at least
100 jobs/s on short arithmetic.

A second table gives the latency of one small call (1, 4 and 16 short arithmetic jobs, as a search hands the
verifier a node's children at a time): the median of 30 calls in one event loop, 10 ms apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from rstar.registry import get_registry
from rstar.types import CodeJob

CORPUS = {
    "arithmetic": "x = 6 * 7\ny = x ** 2 - 5\ny",
    "sympy": "import sympy\nx = sympy.Symbol('x')\nsympy.solve(x**2 - 5*x + 6, x)",
    "numpy": "import numpy as np\na = np.arange(12).reshape(3, 4)\nint(a.sum(axis=0).max())",
    "error": "values = [1, 2, 3]\nvalues[10]",
    "timeout": "while True:\n    pass",
}
TIMEOUT_S = 0.5  # the timeout programs' limit; the others finish well within it
REPEATS = 5


def jobs_for(kind: str, n: int) -> int:
    return max(2, n // 20) if kind == "timeout" else n


def summarize(latencies: list[float], elapsed: float) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(latencies) / elapsed, statistics.median(ordered), p99


def repeated(once: Callable[[], tuple[list[float], float]]) -> tuple[float, float, float]:
    """Run a cell ``REPEATS`` times, or once if that already took more than a second (slow cells):
    the median rate of the repetitions, and the latencies of all of them."""
    rates, latencies, spent = [], [], 0.0
    while len(rates) < REPEATS and (not rates or spent < 1.0):
        lat, elapsed = once()
        rates.append(len(lat) / elapsed)
        latencies += lat
        spent += elapsed
    _, p50, p99 = summarize(latencies, 1.0)
    return statistics.median(rates), p50, p99


def naive(program: str, n: int) -> tuple[float, float, float]:
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=TIMEOUT_S, check=False)
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, time.perf_counter() - start)


def in_process(program: str, n: int) -> tuple[float, float, float] | None:
    if "while True" in program:
        return None  # exec cannot stop it

    def once() -> tuple[list[float], float]:
        latencies = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
                exec(program, {"__name__": "__main__"})
            latencies.append(time.perf_counter() - t)
        return latencies, time.perf_counter() - start

    return repeated(once)


def verifier(spec: dict[str, object], program: str, n: int) -> tuple[float, float, float]:
    v = get_registry().build("verifier", {**spec, "timeout_s": TIMEOUT_S})

    async def batch() -> tuple[list[float], float]:  # timed inside the event loop, not its start and end
        start = time.perf_counter()
        verdicts = await v.run([CodeJob(program)] * n)
        return [x.duration_s for x in verdicts], time.perf_counter() - start

    try:
        asyncio.run(v.run([CodeJob("1")] * 4))  # start the warm workers
        return repeated(lambda: asyncio.run(batch()))
    finally:
        v.close()


def call_latency(spec: dict[str, object], sizes: tuple[int, ...]) -> list[float]:
    """Median milliseconds of one ``run`` call with each of ``sizes`` arithmetic jobs."""
    v = get_registry().build("verifier", {**spec, "timeout_s": TIMEOUT_S})

    async def measure() -> list[float]:
        await v.run([CodeJob("1")] * 4)  # start the warm workers
        medians = []
        for size in sizes:
            times = []
            for _ in range(30):
                start = time.perf_counter()
                await v.run([CodeJob(CORPUS["arithmetic"])] * size)
                times.append(time.perf_counter() - start)
                await asyncio.sleep(0.01)
            medians.append(statistics.median(times) * 1000)
        return medians

    try:
        return asyncio.run(measure())
    finally:
        v.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per cell (timeouts: a twentieth)")
    parser.add_argument("--skip-docker", action="store_true")
    args = parser.parse_args()

    contenders: dict[str, object] = {
        "naive python -c": naive,
        "in-process exec": in_process,
        "subprocess (none)": {"name": "subprocess", "isolation": "none"},
        "subprocess (bwrap)": {"name": "subprocess", "isolation": "bwrap"},
        "subprocess (bwrap, forked)": {"name": "subprocess", "isolation": "bwrap", "inline": False},
    }
    from rstar_sandbox.isolation import bwrap_works

    if not bwrap_works():
        del contenders["subprocess (bwrap)"], contenders["subprocess (bwrap, forked)"]
    if not args.skip_docker:
        from rstar_sandbox.docker_verifier import unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"docker left out: {reason}", file=sys.stderr)
        else:
            contenders["docker"] = {"name": "docker"}

    table = Table(title=f"step verifiers, {args.jobs} jobs per cell")
    for column in ("corpus", "runner", "jobs/s", "p50 ms", "p99 ms", "x naive", "/ exec"):
        table.add_column(column, justify="left" if column in ("corpus", "runner") else "right")
    for kind, program in CORPUS.items():
        n = jobs_for(kind, args.jobs)
        results = {}
        for name, how in contenders.items():
            if callable(how):
                runs = max(2, n // 10) if how is naive else n
                results[name] = how(program, runs)
            else:
                results[name] = verifier(how, program, n)  # type: ignore[arg-type]
        base = results["naive python -c"]
        upper = results["in-process exec"]
        for name, result in results.items():
            if result is None:
                table.add_row(kind, name, "-", "-", "-", "-", "-")
                continue
            rate, p50, p99 = result
            over_naive = f"{rate / base[0]:.1f}" if base else "-"
            under_exec = f"{upper[0] / rate:.1f}" if upper else "-"
            table.add_row(kind, name, f"{rate:.1f}", f"{p50 * 1000:.1f}", f"{p99 * 1000:.1f}", over_naive, under_exec)
        table.add_section()
    Console(width=120).print(table)

    sizes = (1, 4, 16)
    latency = Table(title="one call of short arithmetic jobs: median ms")
    latency.add_column("runner")
    for size in sizes:
        latency.add_column(f"{size} job{'s' if size > 1 else ''}", justify="right")
    for name, how in contenders.items():
        if not callable(how):
            latency.add_row(name, *(f"{ms:.2f}" for ms in call_latency(how, sizes)))  # type: ignore[arg-type]
    Console(width=120).print(latency)


if __name__ == "__main__":
    main()
