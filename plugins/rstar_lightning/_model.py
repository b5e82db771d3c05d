"""The model to train: tokenizer and weights from ``init_model``, the step tags as tokens, LoRA adapters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

from rstar.errors import RstarError
from rstar.models import resolve_source
from rstar.steps import TAGS
from rstar_lightning.options import LoraOptions, TrainOptions


def load_tokenizer(init_model: str, options: TrainOptions) -> Any:
    """The tokenizer of ``init_model``, with a pad token (its EOS when it has none)."""
    source, gguf = resolve_source(init_model, options.gguf_file)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise RstarError(f"trainer: cannot load the tokenizer of {init_model!r}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise RstarError(f"trainer: the tokenizer of {init_model!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(auto_class: Any, init_model: str, options: TrainOptions, **kwargs: Any) -> tuple[Any, list[str]]:
    """``(model, missing_keys)``: ``init_model`` loaded in float32 (GGUF weights dequantised)."""
    source, gguf = resolve_source(init_model, options.gguf_file)
    kwargs = {**kwargs, "dtype": torch.float32, "output_loading_info": True}
    if gguf:
        kwargs["gguf_file"] = gguf
        if hasattr(transformers, "GgufConfig"):  # plain dense weights: trainable and serialisable
            kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        model, info = auto_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise RstarError(f"trainer: cannot load the model {init_model!r}: {exc}") from exc
    if getattr(model, "hf_quantizer", None) is not None:  # older transformers flag dequantised GGUF models
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model, list(info.get("missing_keys", []))


def add_step_tokens(model: Any, tokenizer: Any, tags: Sequence[str] = TAGS) -> list[str]:
    """Add the tags the tokenizer lacks as special tokens; return them.

    Each new input-embedding row (and output row, when the head is not tied to the embeddings) is
    initialised as the mean of the rows of the pieces the tag was split into before, so the tags start
    out meaning roughly what their text meant (the original left them as untrained padding rows). The
    matrix never shrinks: a model with spare rows keeps them.
    """
    vocab = tokenizer.get_vocab()
    new = [tag for tag in tags if tag not in vocab]
    if not new:
        return []
    pieces = {tag: tokenizer(tag, add_special_tokens=False)["input_ids"] for tag in new}
    tokenizer.add_tokens(new, special_tokens=True)
    rows = max(model.get_input_embeddings().weight.shape[0], len(tokenizer))
    model.resize_token_embeddings(rows, mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    output_layer = model.get_output_embeddings()
    outputs = None if output_layer is None or output_layer.weight is inputs else output_layer.weight
    with torch.no_grad():
        for tag, ids in pieces.items():
            new_id = tokenizer.convert_tokens_to_ids(tag)
            inputs[new_id] = inputs[ids].mean(dim=0)
            if outputs is not None:
                outputs[new_id] = outputs[ids].mean(dim=0)
    return new


def apply_lora(
    model: Any,
    lora: LoraOptions,
    task_type: str,
    modules_to_save: list[str] | None = None,
    trainable_token_indices: list[int] | None = None,
) -> Any:
    """``model`` wrapped in peft LoRA adapters; ``modules_to_save`` stay fully trainable, and so do the
    embedding rows ``trainable_token_indices`` (the tags just added, which adapters alone cannot teach)."""
    extra: dict[str, Any] = {"trainable_token_indices": trainable_token_indices} if trainable_token_indices else {}
    config = LoraConfig(
        **extra,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


__all__ = ["add_step_tokens", "apply_lora", "load_model", "load_tokenizer"]
