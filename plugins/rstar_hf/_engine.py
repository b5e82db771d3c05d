"""The batched decoding loop of the ``hf`` policy (imports torch: loaded only with a model).

One call of :meth:`Engine.run` turns requests into rows (one per sample), sorts them by prompt
length, and decodes them in groups of at most ``max_batch_rows`` rows:

1. prefill: the prefix that all distinct prompts of the group share (at least
   :data:`~rstar_hf.kv.MIN_SHARED_PREFIX` tokens: the few-shot part of a tree search's prompts) is
   computed once, with a batch of one, or taken from the :class:`~rstar_hf.kv.PrefixCache` of earlier calls; the
   rest of each distinct prompt is prefilled after it (left padding, position ids from the mask,
   logits of the last position only);
2. the KV cache of each distinct prompt is copied to its ``n`` rows, into buffers with room to grow;
3. one forward pass per token for the whole group, reusing the KV cache; finished rows leave the
   batch, and padding columns that no remaining row needs are trimmed.

On CPU the shared prefix is not copied into every row: the attention of :mod:`rstar_hf._attention`
reads it once per step for all rows.

Measured against ``transformers``' ``generate`` (``benchmarks/hf_engine.py``, 2026-12-05, a 2-core Xeon VM
shared with other jobs, 1-minute load average 3.2-3.7, float32, one torch thread): SmolLM2-135M, 4 problems x
n=4 (16 rows) of the ~680-token few-shot prompt, at most 64 new tokens, stop strings. The baseline prefills the
few-shot prefix once into a ``DynamicCache`` and deep-copies it into every call's batch. This engine: 59.6 useful
tokens/s against 28.7 (2.07x; 2.10x and 1.96x in other runs, 2.46x with 32 rows), first token after 0.71 s
against 2.50 s, 155 against 347 ms per decoding step, 101 against 593 MiB peak memory. Each part, switched off in
the same run (the ratio is what it adds): the shared-prefix attention 1.19x tokens/s (1.20-1.24x in three other
runs, 16 and 32 rows) and 5.4x less memory (1520 MiB against 169 with 32 rows); the growable KV buffers 1.28x
(1.13-1.32x) when the prefix is copied into the rows (no shared-prefix attention: GPUs, other model types), 1.01x
(0.95-1.04x) under the shared-prefix attention; the prefix cache across calls 3.2x sooner first token (2.3 s to
0.71 s; 2.4-4.3x in other runs) and 1.05-1.22x tokens/s. With all three off the engine is as fast as ``generate``
(28.4 against 27.9 tokens/s). Not measured on a GPU.

Batch invariance: every row samples with its own uniforms, drawn from a ``torch.Generator`` seeded
from ``(request.seed, sample index)``, and the sampling arithmetic works row by row, so a request's
samples do not depend on the other requests of the batch, up to floating-point rounding: batched
matrix products of other shapes (and a different split between shared prefix and own tokens) may
round differently. In float32 that changes a token only at near-ties; in bfloat16 (the GPU default)
it happens often enough that samples of a request can differ with the batch it is in.

"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rstar.backends import LongPrompts, PromptPlan, find_stop, fit_ids, report_long_prompts, skipped_result
from rstar.types import FinishReason, GenerationRequest, GenerationResult, Sample
from rstar_hf import _attention
from rstar_hf import kv as _kv
from rstar_hf._text import IncrementalText

log = logging.getLogger("rstar_hf")

SEED_STRIDE = 1_000_003
"""Row ``i`` of a request with seed ``s`` uses generator seed ``s * SEED_STRIDE + i``."""
GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily (argmax)."""
UNIFORM_CHUNK = 64
"""Uniforms are drawn in chunks of this size, so a row's first k draws do not depend on max_tokens."""
PREFILL_TOKENS = 16384
"""Most (padded) prompt tokens of one prefill forward pass; more distinct prompts are prefilled in parts."""
GROW_STEP = 256
"""Decoding positions the KV cache reserves at a time."""


def row_seed(seed: int | None, index: int) -> int:
    """The generator seed of sample ``index`` of a request (random when ``seed`` is None)."""
    if seed is None:
        return random.SystemRandom().getrandbits(63)
    return (seed * SEED_STRIDE + index) % (1 << 63)


def row_uniforms(seed: int, count: int) -> torch.Tensor:
    """``count`` uniforms in [0, 1) for one row (one per generated token), from its own generator."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    chunks = max(1, math.ceil(count / UNIFORM_CHUNK))
    draws = [torch.rand(UNIFORM_CHUNK, generator=gen) for _ in range(chunks)]
    return torch.cat(draws)[:count]


def choose_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    greedy: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """One token per row: argmax where ``greedy``, else inverse-CDF sampling with ``uniform``.

    Sampling rows divide their logits by their temperature, then (when ``top_p < 1``) keep the
    smallest set of most likely tokens whose probability reaches ``top_p``. Every operation is
    row-wise, so a row's token depends only on its own logits and uniform.
    """
    out = logits.argmax(dim=-1)
    sampled = (~greedy).nonzero().squeeze(1)
    if sampled.numel() == 0:
        return out
    vocab = logits.shape[-1]
    probs = torch.softmax(logits.index_select(0, sampled).float() / temperature.index_select(0, sampled)[:, None], -1)
    u = uniform.index_select(0, sampled)
    p = top_p.index_select(0, sampled)
    nucleus = p < 1.0
    chosen = torch.empty_like(sampled)
    plain = (~nucleus).nonzero().squeeze(1)
    if plain.numel():
        cdf = probs.index_select(0, plain).cumsum(-1)
        threshold = (u.index_select(0, plain) * cdf[:, -1])[:, None]
        idx = torch.searchsorted(cdf, threshold, right=True).squeeze(1).clamp_(max=vocab - 1)
        chosen[plain] = idx
    filtered = nucleus.nonzero().squeeze(1)
    if filtered.numel():
        sorted_probs, order = probs.index_select(0, filtered).sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs
        keep = before < p.index_select(0, filtered)[:, None]
        keep[:, 0] = True
        cdf = (sorted_probs * keep).cumsum(-1)
        threshold = (u.index_select(0, filtered) * cdf[:, -1])[:, None]
        pos = torch.searchsorted(cdf, threshold, right=True).clamp_(max=vocab - 1)
        chosen[filtered] = order.gather(1, pos).squeeze(1)
    out[sampled] = chosen
    return out


@dataclass
class _Row:
    request: int
    index: int
    prompt: tuple[int, ...]
    max_new: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    seed: int
    text: IncrementalText
    num_tokens: int = 0
    finish: FinishReason | None = None
    stop: str | None = None
    final_text: str = ""


def _decoder(tokenizer: Any) -> Callable[[list[list[int]]], list[str]]:
    """Batch decoding that keeps special tokens and spaces exactly as the tokens spell them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "decode_batch"):
        return lambda seqs: backend.decode_batch(seqs, skip_special_tokens=False)
    return lambda seqs: [
        tokenizer.decode(s, skip_special_tokens=False, clean_up_tokenization_spaces=False) for s in seqs
    ]


class Engine:
    """Generates for a loaded causal LM and its tokenizer (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, max_batch_rows: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_rows = max_batch_rows
        self.decode_batch = _decoder(tokenizer)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.max_context: int | None = getattr(model.config, "max_position_embeddings", None)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = _kv.cache_keyword(model.forward)
        self._logits_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = next(iter(sorted(self.eos_ids)), 0)
        self.pad_id = int(pad)
        bos = getattr(tokenizer, "bos_token", None)
        self._bos_text: str | None = bos if isinstance(bos, str) and bos else None
        fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.pad_id
        self._empty_prompt = [int(fallback)]
        self._bos_id: int | None = tokenizer.bos_token_id
        self.long_prompts: LongPrompts = "truncate"
        self._layers_api = _kv.supports_layers(self._new_cache())
        self.shared_attention_supported = self._layers_api and _attention.eligible(model) and _attention.register()
        # Keep a shared prompt prefix once (batch of one) and attend to it with rstar_hf._attention: on CPU,
        # where reading every row's copy of the prefix bounds decoding speed; not on GPUs, where the split
        # attention's many small kernels cost more than the memory traffic they save.
        self.shared_attention = self.shared_attention_supported and device.type == "cpu"
        self.min_shared_prefix = _kv.MIN_SHARED_PREFIX
        self.prefill_tokens = PREFILL_TOKENS
        self.grow_step = GROW_STEP
        self.prefix_cache = _kv.PrefixCache()

    # --- tokens ---------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a raw prompt; the tokenizer's BOS is added unless the prompt already starts with it."""
        special = not (self._bos_text is not None and prompt.startswith(self._bos_text))
        ids = list(self.tokenizer(prompt, add_special_tokens=special)["input_ids"])
        return ids or list(self._empty_prompt)

    def _plan(self, ids: list[int], max_tokens: int) -> PromptPlan:
        """Fit a prompt into the model's context (`rstar.backends.fit_ids`, the rule of every backend)."""
        if not self.max_context:
            return PromptPlan(ids, max_tokens, len(ids))
        return fit_ids(ids, max_tokens, self.max_context, self.long_prompts, self._bos_id)

    # --- generation -----------------------------------------------------------------------------

    def run(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        encoded: dict[str, list[int]] = {}
        rows_by_request: list[list[_Row]] = []
        plans: list[PromptPlan] = []
        for r, req in enumerate(requests):
            _check(req)
            if req.prompt not in encoded:
                encoded[req.prompt] = self.encode(req.prompt)
            plan = self._plan(encoded[req.prompt], req.max_tokens)
            plans.append(plan)
            if not isinstance(plan.prompt, list):  # skipped: too long for the context
                rows_by_request.append([])
                continue
            ids, cap = plan.prompt, plan.max_tokens
            stops = tuple(s for s in req.stop if s)
            prompt = tuple(ids)
            rows_by_request.append(
                [
                    _Row(
                        r,
                        i,
                        prompt,
                        cap,
                        req.temperature,
                        req.top_p,
                        stops,
                        row_seed(req.seed, i),
                        IncrementalText(ids),
                    )
                    for i in range(req.n)
                ]
            )
        todo: list[_Row] = []
        order = sorted(
            range(len(requests)), key=lambda k: -len(rows_by_request[k][0].prompt) if rows_by_request[k] else 0
        )
        for k in order:
            for row in rows_by_request[k]:
                if row.max_new <= 0:
                    row.finish = "length"
                else:
                    todo.append(row)
        with torch.inference_mode(), self._attention_mode():
            for start in range(0, len(todo), self.max_batch_rows):
                self._run_group(todo[start : start + self.max_batch_rows])
        report_long_prompts("hf", plans, self.max_context)
        return [
            GenerationResult(
                tuple(Sample(row.final_text, row.finish or "length", row.stop, row.num_tokens) for row in rows),
                prompt_tokens=plans[k].prompt_tokens or 0,
            )
            if rows or requests[k].n == 0
            else skipped_result(requests[k], plans[k])
            for k, rows in enumerate(rows_by_request)
        ]

    @contextlib.contextmanager
    def _attention_mode(self) -> Iterator[None]:
        """Switch the model to the shared-prefix attention while generating (when it is used)."""
        if not self.shared_attention:
            yield
            return
        config = self.model.config
        previous = config._attn_implementation
        config._attn_implementation = _attention.NAME
        try:
            yield
        finally:
            config._attn_implementation = previous

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        prefix: _kv.KV | None = None,
    ) -> torch.Tensor:
        """Logits of the last position. ``mask`` covers the cache's positions after this pass.

        With the shared-prefix attention, ``prefix`` is the shared prefix the cache does not hold;
        otherwise the cache and ``mask`` include it.
        """
        kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if self._logits_kw is not None:
            kwargs[self._logits_kw] = 1
        if self.shared_attention:
            kwargs[_attention.KWARG] = _attention.AttentionBatch(prefix, mask.bool())
            out = self.model(input_ids=input_ids, position_ids=positions, **kwargs)
        else:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _new_cache(self) -> Any:
        return _kv.new_cache(self.model.config)

    def _prefix_kv(self, tokens: tuple[int, ...]) -> Any:
        """Keys and values of a shared prompt prefix (batch of one), from the prefix cache or computed."""
        known, kv = self.prefix_cache.lookup(tokens)
        if known == len(tokens):
            return kv
        cache = self._new_cache()
        ids = torch.tensor([tokens[known:]], dtype=torch.long, device=self.device)
        positions = torch.arange(known, len(tokens), device=self.device)[None]
        if self.shared_attention:
            mask = torch.ones((1, len(tokens) - known), dtype=torch.long, device=self.device)
            self._forward(ids, mask, positions, cache, prefix=kv)
            new = _kv.layer_kv(cache)
            kv = (
                new
                if kv is None
                else [(torch.cat([k, nk], 2), torch.cat([v, nv], 2)) for (k, v), (nk, nv) in zip(kv, new, strict=True)]
            )
        else:
            if kv is not None:
                _kv.fill(cache, kv, 1)
            mask = torch.ones((1, len(tokens)), dtype=torch.long, device=self.device)
            self._forward(ids, mask, positions, cache)
            kv = _kv.layer_kv(cache)
        self.prefix_cache.put(tokens, kv)
        return kv

    def _prefill(self, prompts: list[tuple[int, ...]]) -> tuple[Any, torch.Tensor, torch.Tensor, _kv.KV | None]:
        """KV cache, last-position logits, attention mask and shared prefix of ``prompts``.

        The prefix all prompts share is computed once (or taken from the prefix cache); the rest of
        each prompt is left-padded after it: ``[shared prefix][padding][own tokens]``. With the
        shared-prefix attention the cache and mask hold only ``[padding][own tokens]`` and the
        prefix is returned separately.
        """
        shared = 0
        if self._layers_api:
            shared = _kv.shared_length(prompts, self.min_shared_prefix)
        prefix_kv = self._prefix_kv(prompts[0][:shared]) if shared else None
        rests = [p[shared:] for p in prompts]
        width = max(len(r) for r in rests)
        per_pass = max(1, self.prefill_tokens // (width + shared // 4)) if self._layers_api else len(prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        own = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, r in enumerate(rests):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            own[i, width - len(r) :] = 1
        ids, own = ids.to(self.device), own.to(self.device)
        positions = shared + (own.cumsum(-1) - 1).clamp_(min=0)
        mask = own if self.shared_attention else torch.cat([own.new_ones((len(prompts), shared)), own], dim=1)
        caches, logits = [], []
        for s in range(0, len(prompts), per_pass):
            part = slice(s, s + per_pass)
            cache = self._new_cache()
            if prefix_kv is not None and not self.shared_attention:
                _kv.fill(cache, prefix_kv, ids[part].shape[0])
            logits.append(self._forward(ids[part], mask[part], positions[part], cache, prefix_kv))
            caches.append(cache)
        cache = caches[0] if len(caches) == 1 else _kv.merge(caches)
        return cache, torch.cat(logits), mask, prefix_kv

    def _run_group(self, rows: list[_Row]) -> None:
        distinct: dict[tuple[int, ...], int] = {}
        for row in rows:
            distinct.setdefault(row.prompt, len(distinct))
        cache, logits, mask, prefix = self._prefill(list(distinct))
        steps = max(r.max_new for r in rows)
        source = torch.tensor([distinct[row.prompt] for row in rows], device=self.device)
        expand = len(distinct) != len(rows)
        if self._layers_api:
            _kv.make_growable(cache, min(steps, self.grow_step), source if expand else None)
        elif expand:
            cache.batch_select_indices(source)
        if expand:
            logits = logits.index_select(0, source)
            mask = mask.index_select(0, source)

        dev = self.device
        temperature = torch.tensor([max(r.temperature, GREEDY_BELOW) for r in rows], dtype=torch.float32, device=dev)
        top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32, device=dev)
        greedy = torch.tensor([r.temperature < GREEDY_BELOW for r in rows], dtype=torch.bool, device=dev)
        uniforms = torch.stack([row_uniforms(r.seed, steps) for r in rows]).to(dev)
        positions = torch.tensor([len(r.prompt) for r in rows], dtype=torch.long, device=dev)
        live = list(rows)  # batch slot -> row; finished rows stay until the batch is compacted
        alive = [True] * len(rows)
        step = 0
        while True:
            tokens = choose_tokens(logits, temperature, top_p, greedy, uniforms[:, step])
            self._consume(live, alive, tokens.tolist())
            n_alive = sum(alive)
            if n_alive == 0:
                return
            dead = len(live) - n_alive
            if dead and dead * 8 >= len(live):
                keep_list = [i for i, a in enumerate(alive) if a]
                keep = torch.tensor(keep_list, device=dev)
                cache.batch_select_indices(keep)
                tokens, mask, positions = tokens[keep], mask[keep], positions[keep]
                temperature, top_p, greedy, uniforms = temperature[keep], top_p[keep], greedy[keep], uniforms[keep]
                live = [live[i] for i in keep_list]
                alive = [True] * len(live)
                unused = int(mask.long().argmax(dim=1).min())  # leading columns that are padding in every row
                if unused > 0 and _kv.trim_left(cache, unused):
                    mask = mask[:, unused:]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = self._forward(tokens[:, None], mask, positions[:, None], cache, prefix)
            positions = positions + 1
            step += 1

    def _consume(self, live: list[_Row], alive: list[bool], tokens: list[int]) -> None:
        """Feed each live row its new token: EOS, stop strings and the token cap end rows."""
        slots: list[int] = []
        windows: list[list[int]] = []
        for slot, (row, token) in enumerate(zip(live, tokens, strict=True)):
            if not alive[slot]:
                continue
            row.num_tokens += 1
            if token in self.eos_ids:
                self._finish(row, "eos")
                alive[slot] = False
                continue
            prefix, full = row.text.push(token)
            slots.append(slot)
            windows.append(prefix)
            windows.append(full)
        if not windows:
            return
        texts = self.decode_batch(windows)
        for k, slot in enumerate(slots):
            row = live[slot]
            old_len = row.text.advance(texts[2 * k], texts[2 * k + 1])
            if row.stops and len(row.text.text) > old_len and self._check_stop(row, old_len):
                alive[slot] = False
            elif row.num_tokens >= row.max_new:
                self._finish(row, "length")
                alive[slot] = False

    def _check_stop(self, row: _Row, old_len: int) -> bool:
        hit = find_stop(row.text.text, row.stops, old_len)
        if hit is None:
            return False
        end, stop = hit
        row.finish, row.stop, row.final_text = "stop", stop, row.text.text[:end]
        return True

    def _finish(self, row: _Row, reason: FinishReason) -> None:
        if row.text.has_pending:  # the last tokens end inside a character: emit what they spell
            prefix, full = row.text.windows()
            prefix_text, full_text = self.decode_batch([prefix, full])
            old_len = row.text.advance(prefix_text, full_text, final=True)
            if row.stops and self._check_stop(row, old_len):
                return
        row.finish, row.final_text = reason, row.text.text


def _check(req: GenerationRequest) -> None:
    if req.n < 0:
        raise ValueError(f"GenerationRequest.n must be >= 0, got {req.n}")
    if req.max_tokens < 0:
        raise ValueError(f"GenerationRequest.max_tokens must be >= 0, got {req.max_tokens}")
    if req.temperature < 0:
        raise ValueError(f"GenerationRequest.temperature must be >= 0, got {req.temperature}")
    if not 0 < req.top_p <= 1:
        raise ValueError(f"GenerationRequest.top_p must be in (0, 1], got {req.top_p}")


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value if v is not None)
    return frozenset(ids)
