"""The ``sglang`` reward model: a PPM checkpoint served by SGLang's offline ``Engine``, in-process on GPUs.

The checkpoint is the one-label sequence-classification directory of `rstar.reward`. SGLang runs
such models as embedding models (``is_embedding=True``): for ``*ForSequenceClassification``
architectures (Llama, Qwen2, Gemma2, ...) the pooler takes the last token's hidden state, applies
the ``score`` head and returns the raw output, with no activation, as a one-element ``embedding``.
rstar's `rstar.reward.ScoreTransform` then maps it to the reward, as every backend does.

Each batch that rstar's engine gathers is one blocking ``Engine.encode`` call (SGLang runs it on its
own event loop), made from a worker thread so rstar's event loop keeps serving the other searches.

Long texts keep their END: ``Engine.encode`` takes text only, so a text with too many tokens is cut
from the left by tokens and decoded back to text (the boundary token may re-tokenize differently;
the end, the step being judged, is kept exactly). SGLang's own ``allow_auto_truncate`` would keep the
beginning instead (ALGORITHM.md section 10, bug 9).

``score_with_tokens`` also gives the number of tokens SGLang read for each text: the ``prompt_tokens``
of the output's ``meta_info``, so nothing is tokenized twice.

This module imports neither sglang nor torch at import time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from rstar.backends import (
    Dtype,
    EngineOptions,
    encoder_of,
    fit_tokens,
    load_hf_tokenizer,
    release_gpu_memory,
    report_cut,
)
from rstar.errors import MissingExtraError, RstarError
from rstar.reward import TransformOptions, reward_text, transform_option
from rstar.types import RewardRequest

log = logging.getLogger(__name__)

RETOKENIZE_TRIES = 4
"""Times a cut text is shortened again when decoding and re-encoding it gave more tokens than allowed."""


class SGLangRewardOptions(EngineOptions, TransformOptions):
    """Options of the ``sglang`` reward model (``reward_model: {name: sglang, model: ..., ...}`` in a recipe)."""

    model: str = Field(
        min_length=1, description="the reward checkpoint: a local directory written by the PPM trainer or a Hub id"
    )
    dtype: Dtype = Field("auto", description="weights and activations; 'auto' takes the checkpoint's")
    context_length: int | None = Field(
        None, ge=2, description="context length; texts are cut to one token less. Default: the model's"
    )
    tp_size: int = Field(1, ge=1, description="tensor parallelism: GPUs that one copy of the model is split across")
    mem_fraction_static: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="share of each GPU's memory for weights + KV cache; 0.3 leaves room for a policy on the "
        "same GPU (give the policy at most about 0.6)",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="more keyword arguments for sglang.Engine (ServerArgs fields; override the options above)",
    )


class SGLangRewardModel:
    """A :class:`~rstar.interfaces.RewardModel` running SGLang in-process. ``close()`` shuts it down.

    ``transform`` is the `ScoreTransform` applied to raw scores; ``limit`` the most tokens a text
    may have (the context length less one; None when unknown: nothing is cut).
    """

    Options = SGLangRewardOptions

    def __init__(self, options: SGLangRewardOptions) -> None:
        try:
            import sglang
        except ImportError:
            raise MissingExtraError("reward model 'sglang'", "sglang", "sglang") from None
        self.options = options
        self._lock = threading.Lock()
        self.transform = transform_option(options.transform, options.scale, options.model, options.trust_remote_code)
        self._engine: Any = sglang.Engine(**self.engine_arguments())
        tokenizer = getattr(getattr(self._engine, "tokenizer_manager", None), "tokenizer", None)
        if not callable(getattr(tokenizer, "encode", None)):
            tokenizer = load_hf_tokenizer(options.tokenizer or options.model, options.trust_remote_code)
        self.tokenizer: Any = tokenizer
        self._encode = encoder_of(tokenizer)
        self._bos: int | None = getattr(tokenizer, "bos_token_id", None)
        context = options.context_length or self._engine_context()
        self.limit: int | None = context - 1 if context is not None else None
        if self.limit is None:
            log.warning("sglang reward model: the model's context length is unknown; text lengths are not checked")

    def engine_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``sglang.Engine``."""
        o = self.options
        kwargs: dict[str, Any] = {
            "model_path": o.model,
            "is_embedding": True,
            "dtype": o.dtype,
            "tp_size": o.tp_size,
            "mem_fraction_static": o.mem_fraction_static,
            "trust_remote_code": o.trust_remote_code,
        }
        if o.tokenizer is not None:
            kwargs["tokenizer_path"] = o.tokenizer
        if o.context_length is not None:
            kwargs["context_length"] = o.context_length
        kwargs.update(o.engine_kwargs)
        return kwargs

    def _engine_context(self) -> int | None:
        value = getattr(getattr(self._engine, "tokenizer_manager", None), "context_len", None)
        return value if isinstance(value, int) and value > 1 else None

    # --- scoring ---------------------------------------------------------------------------------

    def fit(self, text: str) -> str:
        """``text``, or its end decoded from its last ``limit`` tokens when it is longer."""
        ids = fit_tokens(text, self._encode, self.limit, self._bos)
        if ids is None or self.limit is None or self._encode is None:
            return text
        body = ids[1:] if self._bos is not None and ids[:1] == [self._bos] else ids
        for _ in range(RETOKENIZE_TRIES):
            cut = str(self.tokenizer.decode(body, skip_special_tokens=False))
            excess = len(self._encode(cut)) - self.limit
            if excess <= 0:
                return cut
            body = body[excess:]
        raise RstarError(f"sglang reward model: cannot cut a text to {self.limit} tokens (it re-tokenizes longer)")

    async def score(self, items: Sequence[RewardRequest]) -> list[float]:
        """One reward per item, in order (the transformed head output at the text's last token)."""
        return [reward for reward, _ in await self.score_with_tokens(items)]

    async def score_with_tokens(self, items: Sequence[RewardRequest]) -> list[tuple[float, int]]:
        """One ``(reward, tokens)`` pair per item, in order: the reward of :meth:`score` and the number of
        tokens SGLang read (after any cut)."""
        batch = list(items)
        if not batch:
            return []
        return await asyncio.to_thread(self.score_with_tokens_sync, batch)

    def score_sync(self, items: Sequence[RewardRequest]) -> list[float]:
        """The blocking form of :meth:`score`."""
        return [reward for reward, _ in self.score_with_tokens_sync(items)]

    def score_with_tokens_sync(self, items: Sequence[RewardRequest]) -> list[tuple[float, int]]:
        """The blocking form of :meth:`score_with_tokens`."""
        texts = [reward_text(i.prompt, i.solution) for i in items]
        if not texts:
            return []
        with self._lock:
            engine = self._require()
            prompts = [self.fit(t) for t in texts]
            report_cut("sglang", sum(p != t for p, t in zip(prompts, texts, strict=True)), len(texts), self.limit)
            answer = engine.encode(prompts)
        outputs = [answer] if isinstance(answer, dict) else list(answer)
        if len(outputs) != len(texts):
            raise RstarError(f"sglang returned {len(outputs)} outputs for {len(texts)} texts")
        return [(self.transform(embedding_score(o)), read_tokens(o)) for o in outputs]

    def _require(self) -> Any:
        if self._engine is None:
            raise RstarError("this sglang reward model is closed")
        return self._engine

    def close(self) -> None:
        """Shut the engine down (its scheduler and detokenizer processes too) and release GPU memory."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is None:
            return
        engine.shutdown()
        del engine
        release_gpu_memory()


def embedding_score(output: Any) -> float:
    """The one value of an SGLang ``encode`` output dict (``embedding``: ``[score]``)."""
    emb = output.get("embedding") if isinstance(output, dict) else None
    if isinstance(emb, (int, float)):
        return float(emb)
    values = list(emb) if emb is not None else []
    if len(values) != 1:
        raise RstarError(
            f"sglang returned {len(values)} values per text; a reward checkpoint has one label (num_labels = 1) "
            "and is served with is_embedding"
        )
    return float(values[0])


def read_tokens(output: Any) -> int:
    """How many tokens SGLang read for one text: ``meta_info["prompt_tokens"]`` of its output (0 without it)."""
    meta = output.get("meta_info") if isinstance(output, dict) else None
    count = meta.get("prompt_tokens") if isinstance(meta, dict) else None
    return count if isinstance(count, int) else 0


__all__ = ["SGLangRewardModel", "SGLangRewardOptions", "embedding_score", "read_tokens"]
