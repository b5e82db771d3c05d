"""The ``sglang`` policy backend: SGLang's offline ``Engine`` in-process, on GPUs.

Two modes:

* batch (default): each batch that rstar's engine gathers is one blocking ``Engine.generate`` call
  (SGLang runs it on its own event loop), made from a worker thread so rstar's event loop keeps
  serving the other searches;
* ``async_engine: true``: each request is awaited on its own with ``Engine.async_generate`` as soon as
  a search makes it (the policy sets ``batches_itself``), and SGLang batches them continuously.

Each of a request's ``n`` samples is sent as its own prompt (``n`` is never sent to SGLang), so the
samples come back in order and a seeded request gives sample ``i`` the seed ``seed * 1000003 + i``
(SGLang's ``sampling_seed``); the radix cache computes the shared prompt once. Sampling parameters
keep the stop string (``no_stop_trim``) and special tokens (``skip_special_tokens: false``).

Results follow rstar's policy semantics, as the ``vllm`` policy: ``meta_info.finish_reason`` of
type ``stop`` with a matched *string* is ``"stop"`` (the string kept at the end of the text, once),
with a matched token id (EOS or a stop token) ``"eos"``; ``length`` is ``"length"``. Prompts too long
for the context are handled per request, as in the ``vllm`` policy (`rstar.backends.plan_prompts`).

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
    SEED_STRIDE,
    Dtype,
    PolicyEngineOptions,
    PromptPlan,
    encoder_of,
    load_hf_tokenizer,
    plan_prompts,
    release_gpu_memory,
    report_long_prompts,
    skipped_result,
    stop_sample,
)
from rstar.errors import MissingExtraError, RstarError
from rstar.types import GenerationRequest, GenerationResult, Sample

log = logging.getLogger(__name__)


class SGLangOptions(PolicyEngineOptions):
    """Options of the ``sglang`` policy (``policy: {name: sglang, model: ..., ...}`` in a recipe)."""

    model: str = Field(min_length=1, description="the model: a Hub id or a local Hugging Face checkpoint directory")
    dtype: Dtype = Field("auto", description="weights and activations; 'auto' takes the checkpoint's (bf16/fp16)")
    seed: int = Field(0, description="the engine's random seed (SGLang's random_seed)")
    context_length: int | None = Field(
        None, ge=1, description="context length (prompt + generated tokens); default: the model's"
    )
    tp_size: int = Field(1, ge=1, description="tensor parallelism: GPUs that one copy of the model is split across")
    mem_fraction_static: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share of each GPU's memory for weights + KV cache; default: SGLang's choice for the GPU. "
        "Lower it to leave room for a reward model on the same GPU",
    )
    async_engine: bool = Field(
        False, description="await each request with Engine.async_generate as it comes (continuous batching)"
    )
    send_seeds: bool = Field(
        True,
        description="send request seeds as SGLang's sampling_seed (sampling is repeatable when the engine runs "
        "with enable_deterministic_inference: true in engine_kwargs)",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="more keyword arguments for sglang.Engine (ServerArgs fields; override the options above)",
    )


class SGLangPolicy:
    """A :class:`~rstar.interfaces.PolicyBackend` running SGLang in-process. ``close()`` shuts it down."""

    Options = SGLangOptions
    batches_itself = False
    """True in async mode (set per instance): rstar then sends requests as they come."""

    def __init__(self, options: SGLangOptions) -> None:
        try:
            import sglang
        except ImportError:
            raise MissingExtraError("policy 'sglang'", "sglang", "sglang") from None
        self.options = options
        self.batches_itself = options.async_engine
        self._lock = threading.Lock()
        self._engine: Any = sglang.Engine(**self.engine_arguments())
        tokenizer = getattr(getattr(self._engine, "tokenizer_manager", None), "tokenizer", None)
        if not callable(getattr(tokenizer, "encode", None)):
            tokenizer = load_hf_tokenizer(options.tokenizer or options.model, options.trust_remote_code)
        self.tokenizer = tokenizer
        self._encode = encoder_of(tokenizer)
        self._bos = getattr(tokenizer, "bos_token_id", None)
        self.max_len: int | None = options.context_length or self._engine_max_len()
        if self.max_len is None:
            log.warning("sglang policy: the model's context length is unknown; prompt lengths are not checked")

    def engine_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``sglang.Engine``."""
        o = self.options
        kwargs: dict[str, Any] = {
            "model_path": o.model,
            "dtype": o.dtype,
            "random_seed": o.seed,
            "tp_size": o.tp_size,
            "trust_remote_code": o.trust_remote_code,
        }
        if o.tokenizer is not None:
            kwargs["tokenizer_path"] = o.tokenizer
        if o.context_length is not None:
            kwargs["context_length"] = o.context_length
        if o.mem_fraction_static is not None:
            kwargs["mem_fraction_static"] = o.mem_fraction_static
        kwargs.update(o.engine_kwargs)
        return kwargs

    def _engine_max_len(self) -> int | None:
        value = getattr(getattr(self._engine, "tokenizer_manager", None), "context_len", None)
        return value if isinstance(value, int) and value > 0 else None

    # --- requests ------------------------------------------------------------------------------

    def plan(self, requests: Sequence[GenerationRequest]) -> list[PromptPlan]:
        """How each request goes to the engine (see `rstar.backends.plan_prompts`)."""
        plans = plan_prompts(requests, self._encode, self.max_len, self.options.long_prompts, self._bos)
        report_long_prompts("sglang", plans, self.max_len)
        return plans

    def sampling_params(self, req: GenerationRequest, plan: PromptPlan) -> list[dict[str, Any]]:
        """One SGLang sampling-parameter dict per sample of ``req``."""
        out = []
        for i in range(req.n):
            params: dict[str, Any] = {
                "max_new_tokens": plan.max_tokens,
                "temperature": req.temperature,
                "top_p": req.top_p,
                "no_stop_trim": True,
                "skip_special_tokens": False,
            }
            if req.stop:
                params["stop"] = list(req.stop)
            if self.options.send_seeds and req.seed is not None:
                params["sampling_seed"] = req.seed * SEED_STRIDE + i
            out.append(params)
        return out

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
        """The blocking form of :meth:`generate` (batch mode only)."""
        if self.options.async_engine:
            raise RstarError("sglang policy: generate_sync is not available with async_engine: true; await generate")
        batch = list(requests)
        results = []
        with self._lock:
            engine = self._require()
            plans = self.plan(batch)
            # SGLang takes either texts or token ids in one call: texts first, then any cut prompts.
            outputs: dict[int, list[dict[str, Any]]] = {}
            for as_ids in (False, True):
                todo = [i for i, p in enumerate(plans) if p.prompt is not None and isinstance(p.prompt, list) == as_ids]
                if not todo:
                    continue
                prompts: list[Any] = [plans[i].prompt for i in todo for _ in range(batch[i].n)]
                params = [sp for i in todo for sp in self.sampling_params(batch[i], plans[i])]
                key = "input_ids" if as_ids else "prompt"
                answer = _as_list(engine.generate(**{key: prompts}, sampling_params=params))
                if len(answer) != len(prompts):
                    raise RstarError(f"sglang returned {len(answer)} outputs for {len(prompts)} prompts")
                at = 0
                for i in todo:
                    outputs[i] = answer[at : at + batch[i].n]
                    at += batch[i].n
        for i, (req, plan) in enumerate(zip(batch, plans, strict=True)):
            results.append(skipped_result(req, plan) if i not in outputs else result_of(req, plan, outputs[i]))
        return results

    async def _one_async(self, req: GenerationRequest, plan: PromptPlan) -> GenerationResult:
        if plan.prompt is None:
            return skipped_result(req, plan)
        engine = self._require()
        key = "input_ids" if isinstance(plan.prompt, list) else "prompt"
        prompts = [plan.prompt] * req.n
        answer = _as_list(
            await engine.async_generate(**{key: prompts}, sampling_params=self.sampling_params(req, plan))
        )
        if len(answer) != req.n:
            raise RstarError(f"sglang returned {len(answer)} outputs for n={req.n}")
        return result_of(req, plan, answer)

    def _require(self) -> Any:
        if self._engine is None:
            raise RstarError("this sglang policy is closed")
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


def _as_list(answer: Any) -> list[dict[str, Any]]:
    return [answer] if isinstance(answer, dict) else list(answer)


def result_of(req: GenerationRequest, plan: PromptPlan, outputs: Sequence[dict[str, Any]]) -> GenerationResult:
    """Map the ``n`` output dicts of one request to a `GenerationResult`."""
    samples = tuple(output_sample(o) for o in outputs)
    prompt_tokens = max((int((o.get("meta_info") or {}).get("prompt_tokens") or 0) for o in outputs), default=0)
    return GenerationResult(samples, prompt_tokens=prompt_tokens or plan.prompt_tokens or 0)


def output_sample(output: dict[str, Any]) -> Sample:
    """Map one SGLang output dict (``text`` and ``meta_info``) to a `Sample`."""
    text = output.get("text") or ""
    meta = output.get("meta_info") or {}
    num_tokens = int(meta.get("completion_tokens") or 0)
    finish = meta.get("finish_reason")
    kind = finish.get("type") if isinstance(finish, dict) else finish
    matched = finish.get("matched") if isinstance(finish, dict) else None
    if kind == "stop":
        if isinstance(matched, str) and matched:
            return stop_sample(text, matched, num_tokens)
        return Sample(text, "eos", None, num_tokens)
    if kind == "abort":
        message = finish.get("message", "") if isinstance(finish, dict) else ""
        log.warning(
            "sglang aborted a request (%s); its sample counts as ending on length", message or "no reason given"
        )
    return Sample(text, "length", None, num_tokens)
