"""Helpers for policy backends. `find_stop` finds the stop string that ends a sample (the ``hf``,
``openai`` and scripted policies use it). For engines with a fixed context (the bundled ``hf``, ``vllm``
and ``sglang``): fitting prompts into it one request at a time, keeping stop strings, per-sample seeds.
Plugin authors writing another backend can use them too.

Nothing here imports an engine: tokenizers are passed in, and transformers/torch are imported only by the
functions that need them.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from rstar.options import Options
from rstar.types import GenerationRequest, GenerationResult, Sample

log = logging.getLogger(__name__)

LongPrompts = Literal["truncate", "skip"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class EngineOptions(Options):
    """The keys every local engine backend (the bundled ``vllm`` and ``sglang``, a policy or a reward model)
    shares; each engine's options add its own, under the engine's own names."""

    tokenizer: str | None = Field(None, description="where to load the tokenizer from; default: the model's")
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint")


class PolicyEngineOptions(EngineOptions):
    """`EngineOptions` of a policy: what to do with prompts too long for the model."""

    long_prompts: LongPrompts = Field(
        "truncate",
        description="prompts that leave too little room for max_tokens: 'truncate' cuts them from the left "
        "(keeping their end), 'skip' answers empty samples with finish_reason 'length'",
    )


SEED_STRIDE = 1000003
"""Sample ``i`` of a request with seed ``s`` uses ``s * SEED_STRIDE + i`` where samples are seeded one by one."""

BYTES_MARGIN = 16
"""A prompt of B UTF-8 bytes has at most B + BYTES_MARGIN tokens (each token covers at least one byte,
plus special tokens and a SentencePiece prefix space), so such prompts are checked without tokenizing."""


@dataclass(frozen=True)
class PromptPlan:
    """How one request goes to an engine.

    ``prompt`` is the request's text, or token ids after a cut from the left, or None when the
    request is skipped. ``max_tokens`` is the request's, capped to the room left in the context.
    ``prompt_tokens`` is the prompt's length where it was counted (None where it was not).
    """

    prompt: str | list[int] | None
    max_tokens: int
    prompt_tokens: int | None = None
    truncated: bool = False


def plan_prompts(
    requests: Sequence[GenerationRequest],
    encode: Callable[[str], list[int]] | None,
    max_len: int | None,
    long_prompts: LongPrompts,
    bos_token_id: int | None = None,
) -> list[PromptPlan]:
    """Fit each request into a context of ``max_len`` tokens, independently of the others (`fit_ids`).

    Prompts short enough in bytes are not tokenized; a prompt that fits is sent as its text.
    """
    plans = []
    for req in requests:
        if max_len is None or encode is None:
            plans.append(PromptPlan(req.prompt, req.max_tokens))
            continue
        if len(req.prompt.encode("utf-8")) + BYTES_MARGIN + req.max_tokens <= max_len:
            plans.append(PromptPlan(req.prompt, req.max_tokens))
            continue
        plan = fit_ids(list(encode(req.prompt)), req.max_tokens, max_len, long_prompts, bos_token_id)
        if plan.prompt is not None and not plan.truncated:
            plan = PromptPlan(req.prompt, plan.max_tokens, plan.prompt_tokens)
        plans.append(plan)
    return plans


def fit_ids(
    ids: list[int], max_tokens: int, max_len: int, long_prompts: LongPrompts, bos_token_id: int | None = None
) -> PromptPlan:
    """Fit one tokenized prompt into a context of ``max_len`` tokens (every backend's rule).

    A prompt fits when it leaves room for ``max_tokens`` new tokens (for half the context where
    ``max_tokens`` is larger); ``max_tokens`` is then capped to the room left. A prompt that does not
    fit is skipped (``long_prompts='skip'``: the plan's prompt is None) or cut from the left to leave
    that room, keeping its end and a leading BOS token (``'truncate'``).
    """
    room = min(max_tokens, max(1, max_len // 2))
    if len(ids) + room <= max_len:
        return PromptPlan(ids, min(max_tokens, max_len - len(ids)), len(ids))
    if long_prompts == "skip" or max_len - room < 1:
        return PromptPlan(None, 0, len(ids))
    keep = max_len - room
    head = 1 if bos_token_id is not None and ids[:1] == [bos_token_id] and keep > 1 else 0
    kept = ids[:head] + ids[len(ids) - (keep - head) :]
    return PromptPlan(kept, min(max_tokens, max_len - len(kept)), len(kept), truncated=True)


def report_long_prompts(backend: str, plans: Sequence[PromptPlan], max_len: int | None) -> None:
    """Log one warning per batch naming how many prompts were skipped or cut."""
    skipped = sum(p.prompt is None for p in plans)
    cut = sum(p.truncated for p in plans)
    if skipped:
        log.warning(
            "%s policy: skipped %d of %d prompts too long for the %s-token context "
            "(their samples are empty, finish_reason 'length')",
            backend,
            skipped,
            len(plans),
            max_len,
        )
    if cut:
        log.warning(
            "%s policy: cut %d of %d prompts from the left to fit the %s-token context",
            backend,
            cut,
            len(plans),
            max_len,
        )


def skipped_result(req: GenerationRequest, plan: PromptPlan) -> GenerationResult:
    """The answer to a skipped request: ``n`` empty samples that ended on length."""
    return GenerationResult(tuple(Sample("", "length") for _ in range(req.n)), prompt_tokens=plan.prompt_tokens or 0)


def keep_stop(text: str, stop: str) -> str:
    """``text`` ending with ``stop`` exactly once: cut after its last occurrence, or append it if absent."""
    at = text.rfind(stop)
    if at < 0:
        return text + stop
    return text[: at + len(stop)]


def stop_sample(text: str, stop: str, num_tokens: int) -> Sample:
    """A sample that ended on the stop string ``stop``."""
    return Sample(keep_stop(text, stop), "stop", stop, num_tokens)


def encoder_of(tokenizer: Any) -> Callable[[str], list[int]] | None:
    """``text -> token ids`` with the tokenizer's special tokens, as the engines tokenize prompts."""
    if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
        return None

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text))

    return encode


def load_hf_tokenizer(source: str, trust_remote_code: bool) -> Any:
    """The Hugging Face tokenizer of ``source`` (transformers comes with both engines)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def release_gpu_memory() -> None:
    """Collect garbage and return cached CUDA memory, where torch is present."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def find_stop(text: str, stops: Sequence[str], old_len: int = 0) -> tuple[int, str] | None:
    """The earliest-ending stop string occurrence in ``text``: ``(end, stop)``, or None.

    For text that grows (streaming, decoding), pass ``old_len``: ``text[:old_len]`` was searched
    before and holds no stop string, so only occurrences that overlap the new text are considered.
    On a tie (two stop strings ending at the same place) the longer one wins.
    """
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        start = text.find(stop, max(0, old_len - len(stop) + 1))
        if start < 0:
            continue
        end = start + len(stop)
        if best is None or end < best[0] or (end == best[0] and len(stop) > len(best[1])):
            best = (end, stop)
    return best


# --- fitting reward-model texts (keep the end: the step being judged) ---------------------------------


def keep_end(ids: Sequence[int], limit: int, bos_token_id: int | None) -> list[int]:
    """The last ``limit`` tokens of ``ids``, keeping a leading BOS token (counted in ``limit``)."""
    if len(ids) <= limit:
        return list(ids)
    head = 1 if bos_token_id is not None and list(ids[:1]) == [bos_token_id] and limit > 1 else 0
    return list(ids[:head]) + list(ids[len(ids) - (limit - head) :])


def fit_tokens(
    text: str, encode: Callable[[str], list[int]] | None, limit: int | None, bos_token_id: int | None
) -> list[int] | None:
    """None when ``text`` fits ``limit`` tokens (short texts are not tokenized), else its cut token ids."""
    if limit is None or encode is None or len(text.encode("utf-8")) + BYTES_MARGIN <= limit:
        return None
    ids = encode(text)
    return None if len(ids) <= limit else keep_end(ids, limit, bos_token_id)


def report_cut(backend: str, cut: int, total: int, limit: int | None) -> None:
    """One warning per batch naming how many texts lost their beginning."""
    if cut:
        log.warning(
            "%s reward model: cut %d of %d texts from the left (keeping their end) to fit %s tokens",
            backend,
            cut,
            total,
            limit,
        )
