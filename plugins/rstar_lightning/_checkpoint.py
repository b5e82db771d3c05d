"""The trained checkpoint: ``out_dir/model/`` (a Hugging Face directory), ``metrics.json``, the marker.

Rank 0 writes them in that order, the marker (:data:`MARKER`) last, so a directory with the marker is
complete (:func:`model_complete`) and a run killed while saving trains (or resumes) again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import AutoConfig

from rstar.models import resolve_source
from rstar_lightning.options import TrainOptions

MARKER = "rstar_trained.json"
"""Written last into ``out_dir/model/``: its presence means the checkpoint is complete."""


def model_complete(out_dir: Path) -> bool:
    """Whether ``out_dir/model/`` holds a finished checkpoint."""
    return (out_dir / "model" / MARKER).is_file()


def base_dtype(init_model: str, options: TrainOptions) -> torch.dtype:
    """The dtype the base checkpoint's config records (float32 when it records none, and for GGUF files)."""
    source, gguf = resolve_source(init_model, options.gguf_file)
    if gguf:
        return torch.float32
    config = AutoConfig.from_pretrained(source)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def save_dtype(options: TrainOptions, trainer: pl.Trainer, base: torch.dtype) -> torch.dtype:
    """The dtype of the saved weights: ``options.save_dtype``, or for ``auto`` ``base`` after GPU training
    and float32 otherwise."""
    if options.save_dtype != "auto":
        return getattr(torch, options.save_dtype)  # type: ignore[no-any-return]
    on_gpu = trainer.strategy.root_device.type == "cuda"
    return base if on_gpu else torch.float32


def full_state_dict(trainer: pl.Trainer, prefix: str = "model.") -> dict[str, Any] | None:
    """The trained model's full state dict (gathered across FSDP shards) on rank 0, keys without ``prefix``."""
    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return None
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def save_checkpoint(
    trainer: pl.Trainer,
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    dtype: torch.dtype,
    metrics: dict[str, Any],
    info: dict[str, Any],
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/model/`` (LoRA merged, ``dtype`` weights, tokenizer, ``extra_config`` added to its
    config.json), ``metrics.json``, then the marker."""
    target = out_dir / "model"
    sharded = type(trainer.strategy).__name__.startswith("FSDP")
    state = full_state_dict(trainer) if sharded else None
    if not trainer.is_global_zero:
        return target
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if state is None:
        model = model.to("cpu", dtype=dtype)
        model.save_pretrained(target)
    else:
        model.save_pretrained(target, state_dict={k: v.to(dtype) for k, v in state.items()})
    tokenizer.save_pretrained(target)
    if extra_config:
        config_file = target / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config_file.write_text(json.dumps({**config, **extra_config}, indent=2) + "\n", encoding="utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (target / MARKER).write_text(json.dumps({**info, "metrics": metrics}, indent=2) + "\n", encoding="utf-8")
    return target


__all__ = ["MARKER", "base_dtype", "full_state_dict", "model_complete", "save_checkpoint", "save_dtype"]
