"""The ``vllm`` reward model: a PPM checkpoint served by vLLM's pooling runner, in-process on GPUs.

The checkpoint is the one-label sequence-classification directory of `rstar.reward` (what the
``hf`` reward model loads too). vLLM runs it with ``runner="pooling"``: the classification pooler
reads the hidden state at the last token and applies the ``score`` head. Each batch that rstar's
engine gathers is one ``LLM.classify`` call, made from a worker thread so the event loop keeps
serving the other searches.

* Raw scores: vLLM applies an activation to classifier outputs by default (a sigmoid for one
  label). The request turns it off (``PoolingParams(use_activation=False)``; vLLM 0.11.0 names it
  ``activation``), so ``outputs.probs[0]`` is the head's raw output, and rstar's
  `rstar.reward.ScoreTransform` maps it to the reward, as every backend does.
* Long texts keep their END: a text with more tokens than the context is sent as token ids cut from
  the left (a leading BOS kept), so the step being judged is never cut (ALGORITHM.md section 10,
  bug 9). vLLM's own ``truncate_prompt_tokens`` is not used (it moved between versions).
* ``score_with_tokens`` also gives the number of tokens vLLM read for each text: the length of the
  output's ``prompt_token_ids``, so nothing is tokenized twice.
* Prefix caching: a tree search scores a node's children after the node, each child's text its parent's
  plus one step, so with vLLM's prefix cache a child costs about its new step. ``enable_prefix_caching:
  null`` leaves it to vLLM, which turns it on for a causal model pooled at its last token, as a PPM is
  (vLLM 0.32; ``prefix_caching`` says what the engine chose, and a warning says when it is off). Only
  whole blocks are cached (16 tokens on GPUs, 128 on vLLM's CPU build), so a child also recomputes the
  partial block at its parent's end. Each call's texts are sent sorted (a text before the texts it is a
  prefix of, texts sharing a prefix next to each other): vLLM schedules a call's requests in the order
  given and registers a request's blocks when it schedules it, so later ones find them, in the same step
  too (seen on the CPU build: of a child, its parent and a sibling sent in one call, the last two found
  the first one's blocks); adjacent, a family's requests run while their shared blocks are the most
  recently used, the last that vLLM evicts when its cache is full, and a parent is computed before its
  children.
* ``tokens_computed`` counts the tokens vLLM ran since the engine started: the tokens read minus those it
  found in its prefix cache (each output's ``num_cached_tokens``; all tokens read count where vLLM does not
  report it).

Text fitting (`rstar.backends.fit_tokens`) and `rstar.reward.transform_option` are shared with the other
backends. This module imports neither vllm nor torch at import time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from rstar.backends import Dtype, EngineOptions, encoder_of, fit_tokens, release_gpu_memory, report_cut
from rstar.errors import MissingExtraError, RstarError
from rstar.reward import TransformOptions, reward_text, transform_option
from rstar.types import RewardRequest
from rstar_vllm.models import hub_errors, loadable
from rstar_vllm.policy import (
    CPU_BIND_DESCRIPTION,
    EngineGuard,
    PrefixCacheCount,
    bind_cpu_threads,
    engine_max_len,
    on_cpu,
)

log = logging.getLogger(__name__)


class VLLMRewardOptions(EngineOptions, TransformOptions):
    """Options of the ``vllm`` reward model (``reward_model: {name: vllm, model: ..., ...}`` in a recipe)."""

    model: str = Field(
        min_length=1, description="the reward checkpoint: a local directory written by the PPM trainer or a Hub id"
    )
    dtype: Dtype = Field(
        "auto", description="weights and activations; 'auto' lets vLLM choose (float32 checkpoints run in 16 bits)"
    )
    max_model_len: int | None = Field(None, ge=2, description="context length (tokens per text); default: the model's")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs that one copy of the model is split across")
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        description="share of each GPU's memory this engine takes; 0.3 leaves room for a policy on the same GPU "
        "(give the policy at most about 0.6)",
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description="reuse the KV cache of shared prefixes (a child step then costs about its own tokens); "
        "default: vLLM's choice, on for a causal model pooled at its last token, as a PPM is (vLLM 0.32)",
    )
    cpu_threads_bind: str | None = Field(None, description=CPU_BIND_DESCRIPTION)
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more keyword arguments for vllm.LLM (override the options above)"
    )


class VLLMRewardModel:
    """A :class:`~rstar.interfaces.RewardModel` running vLLM's pooling runner in-process.

    ``transform`` is the `ScoreTransform` applied to raw scores; ``max_len`` the context length texts
    are fitted to (None when unknown: nothing is cut); ``prefix_caching`` whether the engine caches prefixes
    (None when it does not say); ``tokens_computed`` the tokens the engine ran so far (read minus cached).
    ``close()`` shuts the engine down.
    """

    Options = VLLMRewardOptions

    def __init__(self, options: VLLMRewardOptions) -> None:
        try:
            import vllm
        except ImportError:
            raise MissingExtraError("reward model 'vllm'", "vllm", "vllm") from None
        self.options = options
        self._vllm = vllm
        self._lock = threading.Lock()
        self.model_path = loadable(options.model, key="reward_model.model")  # a GGUF becomes a safetensors folder
        self.transform = transform_option(options.transform, options.scale, options.model, options.trust_remote_code)
        with hub_errors("reward_model.model", options.model):
            bind_cpu_threads(options.cpu_threads_bind)
            self._engine: Any = vllm.LLM(**self.engine_arguments())
        self._guard = EngineGuard(self._engine, "reward model", options.model)
        self._prefix_cache = PrefixCacheCount()
        self.tokens_computed = 0
        self.prefix_caching = engine_prefix_caching(self._engine)
        if self.prefix_caching is False:
            log.warning(
                "vllm reward model: the engine does not cache prefixes, so the PPM reads every path whole; "
                "set enable_prefix_caching: true if this vLLM supports it for the model"
            )
        self.tokenizer = self._engine.get_tokenizer()
        self._encode = encoder_of(self.tokenizer)
        self._bos: int | None = getattr(self.tokenizer, "bos_token_id", None)
        self.max_len: int | None = options.max_model_len or self._engine_max_len()
        if self.max_len is None:
            log.warning("vllm reward model: the model's context length is unknown; text lengths are not checked")
        self.pooling_params = raw_pooling_params(vllm)

    def engine_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``vllm.LLM``."""
        o = self.options
        kwargs: dict[str, Any] = {
            "model": getattr(self, "model_path", o.model),
            "runner": "pooling",
            "dtype": o.dtype,
            "tensor_parallel_size": o.tensor_parallel_size,
            "gpu_memory_utilization": o.gpu_memory_utilization,
            "trust_remote_code": o.trust_remote_code,
            "disable_log_stats": False,  # vLLM logs throughput and prefix-cache use every few seconds
        }
        if o.tokenizer is not None:
            kwargs["tokenizer"] = o.tokenizer
        if o.max_model_len is not None:
            kwargs["max_model_len"] = o.max_model_len
        if o.enable_prefix_caching is not None:
            kwargs["enable_prefix_caching"] = o.enable_prefix_caching
        if on_cpu():
            # gpu_memory_utilization is a share of RAM on CPU (0.3: ~7 GiB reserved); a fixed KV cache instead
            kwargs["kv_cache_memory_bytes"] = 2**30
        kwargs.update(o.engine_kwargs)
        return kwargs

    def _engine_max_len(self) -> int | None:
        return engine_max_len(self._engine)

    # --- scoring ---------------------------------------------------------------------------------

    def engine_prompt(self, text: str) -> str | dict[str, list[int]]:
        """``text`` as is, or its last ``max_len`` tokens as a ``TokensPrompt`` when it is longer."""
        ids = fit_tokens(text, self._encode, self.max_len, self._bos)
        return text if ids is None else {"prompt_token_ids": ids}

    async def score(self, items: Sequence[RewardRequest]) -> list[float]:
        """One reward per item, in order (the transformed head output at the text's last token)."""
        return [reward for reward, _ in await self.score_with_tokens(items)]

    async def score_with_tokens(self, items: Sequence[RewardRequest]) -> list[tuple[float, int]]:
        """One ``(reward, tokens)`` pair per item, in order: the reward of :meth:`score` and the number of
        tokens vLLM read (after any cut)."""
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
        order = sorted(range(len(texts)), key=texts.__getitem__)  # shared prefixes adjacent, parents first
        with self._lock:
            engine = self._require()
            prompts = [self.engine_prompt(texts[i]) for i in order]
            report_cut("vllm", sum(isinstance(p, dict) for p in prompts), len(prompts), self.max_len)
            with self._guard.watching():
                outputs = list(engine.classify(prompts, pooling_params=self.pooling_params, use_tqdm=False))
            self._prefix_cache.add(outputs)
            self.tokens_computed += sum(computed_tokens(out) for out in outputs)
        if len(outputs) != len(texts):
            raise RstarError(f"vllm returned {len(outputs)} outputs for {len(texts)} texts")
        scored: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
        for i, out in zip(order, outputs, strict=True):
            scored[i] = (self.transform(raw_score(out)), read_tokens(out))
        return scored

    def _require(self) -> Any:
        if self._engine is None:
            raise RstarError("this vllm reward model is closed")
        return self._engine

    def stats(self) -> dict[str, float]:
        """The engine's prefix-cache hit rate since it started."""
        return self._prefix_cache.stats()

    def close(self) -> None:
        """Shut the engine down (its worker processes too) and release GPU memory."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is None:
            return
        self._guard.stop()
        shutdown = getattr(engine, "shutdown", None)
        if not callable(shutdown):  # vllm.LLM: the V1 engine core client owns the processes
            shutdown = getattr(getattr(getattr(engine, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del engine
        release_gpu_memory()


def raw_pooling_params(vllm: Any) -> Any:
    """``PoolingParams`` asking for the classifier's raw output (no sigmoid/softmax)."""
    try:
        return vllm.PoolingParams(use_activation=False)  # vLLM >= 0.11.1
    except TypeError:
        return vllm.PoolingParams(activation=False)  # vLLM 0.11.0


def raw_score(output: Any) -> float:
    """The one value of a ``ClassificationRequestOutput`` (``outputs.probs``; ``outputs.data`` for a
    ``PoolingRequestOutput``)."""
    inner = getattr(output, "outputs", None)
    data = getattr(inner, "probs", None)
    if data is None:
        data = getattr(inner, "data", None)
    if data is None:
        raise RstarError(f"vllm returned an output without a score: {output!r}")
    values = data.flatten().tolist() if hasattr(data, "flatten") else list(data)
    if len(values) != 1:
        raise RstarError(
            f"vllm returned {len(values)} values per text; a reward checkpoint has one label (num_labels = 1)"
        )
    return float(values[0])


def read_tokens(output: Any) -> int:
    """How many tokens vLLM read for one text: the length of the output's ``prompt_token_ids`` (0 without it)."""
    return len(getattr(output, "prompt_token_ids", None) or ())


def computed_tokens(output: Any) -> int:
    """How many tokens vLLM ran for one text: those read less those found in its prefix cache
    (``num_cached_tokens``; none where the output does not say)."""
    cached = getattr(output, "num_cached_tokens", None)
    return read_tokens(output) - (cached if isinstance(cached, int) else 0)


def engine_prefix_caching(engine: Any) -> bool | None:
    """Whether a ``vllm.LLM`` caches prefixes (its cache config's ``enable_prefix_caching``); None when unknown."""
    value: Any = engine
    for name in ("llm_engine", "vllm_config", "cache_config", "enable_prefix_caching"):
        value = getattr(value, name, None)
    return value if isinstance(value, bool) else None


# --- shared with the sglang reward model ------------------------------------------------------------


__all__ = [
    "VLLMRewardModel",
    "VLLMRewardOptions",
    "computed_tokens",
    "engine_prefix_caching",
    "raw_pooling_params",
    "raw_score",
    "read_tokens",
]
