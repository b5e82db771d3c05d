"""One rank's Lightning run, the same for both trainers: begin, adapt, train (resuming), save.

A trainer's own module (`rstar_lightning.sft`, `rstar_lightning.ppm`) reads its examples from what
:func:`begin` loaded, builds its ``LightningModule`` on the model :func:`adapt` returns, and hands both
to :func:`train_and_save` (through the trainer's ``_train_and_save``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from transformers import get_linear_schedule_with_warmup

from rstar_lightning._checkpoint import base_dtype, save_checkpoint, save_dtype
from rstar_lightning._data import make_loader, read_jsonl
from rstar_lightning._launch import lightning_strategy
from rstar_lightning._model import add_step_tokens, apply_lora, load_model, load_tokenizer
from rstar_lightning.options import TrainOptions

log = logging.getLogger(__name__)


@dataclass
class Start:
    """What every run begins with (:func:`begin`)."""

    records: list[dict[str, Any]]
    tokenizer: Any
    model: Any
    missing_keys: list[str]
    """Weights ``init_model`` lacked (a new head, say)."""
    added_tokens: list[str]
    """The step tags added to the vocabulary."""


def begin(
    auto_class: Any, init_model: str, data: Path, options: TrainOptions, required: Sequence[str], **model_kwargs: Any
) -> Start:
    """Read ``data`` (each record holding ``required``), seed everything, load the tokenizer and the model
    (``auto_class.from_pretrained(init_model, **model_kwargs)``), add the step tags, set the pad id."""
    records = read_jsonl(data, required)
    if options.threads is not None:
        torch.set_num_threads(options.threads)  # float sums split by thread: a fixed count gives the same result
    pl.seed_everything(options.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(init_model, options)
    model, missing = load_model(auto_class, init_model, options, **model_kwargs)
    added = add_step_tokens(model, tokenizer) if options.add_step_tokens else []
    model.config.pad_token_id = tokenizer.pad_token_id
    return Start(records, tokenizer, model, missing, added)


def adapt(start: Start, options: TrainOptions, task_type: str, modules_to_save: list[str] | None = None) -> Any:
    """``start.model`` with gradient checkpointing and LoRA as ``options`` ask (the new tags' rows stay trainable)."""
    model = start.model
    if options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if options.lora is not None:
        new_ids = [start.tokenizer.convert_tokens_to_ids(t) for t in start.added_tokens]
        model = apply_lora(model, options.lora, task_type, modules_to_save, trainable_token_indices=new_ids or None)
    return model


def resolve_precision(options: TrainOptions) -> str:
    """Lightning's ``precision`` for ``options.precision``: ``auto`` is bf16-mixed on a CUDA GPU with bf16."""
    if options.precision != "auto":
        return options.precision
    on_gpu = options.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def configure_adamw(module: pl.LightningModule, options: TrainOptions) -> Any:
    """AdamW (no decay on biases and norms) with linear warm-up and linear decay to 0, stepped per optimizer step."""
    # Biases and norms are told apart by name and layer type, not by shape: under FSDP every parameter
    # the optimizer sees is a flat 1-D shard, so a shape rule would exempt all of them from decay.
    decay: list[torch.nn.Parameter] = []
    flat: list[torch.nn.Parameter] = []
    for layer in module.modules():
        exempt = "norm" in type(layer).__name__.lower()
        for name, param in layer.named_parameters(recurse=False):
            if param.requires_grad:
                (flat if exempt or name == "bias" else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": options.weight_decay},
        {"params": flat, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=options.lr)
    # The reference trains with Hugging Face's Trainer (``lr_scheduler_type: linear``), i.e. this schedule:
    # lr * step / warmup during warm-up (0 at the first step), then linear decay to 0 at the last step.
    total = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = get_linear_schedule_with_warmup(optimizer, options.warmup_steps, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def train(
    module: pl.LightningModule,
    train_loader: Any,
    val_loader: Any | None,
    options: TrainOptions,
    out_dir: Path,
    validate_first: bool = False,
) -> tuple[pl.Trainer, dict[str, Any]]:
    """Fit ``module``, resuming from ``out_dir/checkpoints/last.ckpt`` when it exists; return the trainer
    and the run's metrics (``steps``, ``seconds``, ``world_size``, ``resumed_from_step``, ``train_loss``, ...).

    With ``validate_first`` (and validation data, and no run to resume) the whole validation split is
    run before the first step, as Lightning's sanity check; the module records what it measured there in
    ``module.initial_metrics`` (a dict), which joins the metrics. It runs inside ``fit`` because under
    FSDP a separate ``trainer.validate`` would wrap the model once more and leave it unusable for ``fit``.
    """
    checkpoints = out_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    logger: Any = (
        CSVLogger(str(out_dir / "logs"), name="", version="")
        if options.logger == "csv"
        else TensorBoardLogger(str(out_dir / "logs"), name="", version="")
    )
    resume = last.is_file()
    saver = ModelCheckpoint(
        dirpath=str(checkpoints), save_last=True, save_top_k=0, every_n_train_steps=options.checkpoint_every_n_steps
    )
    trainer = pl.Trainer(
        max_epochs=options.epochs,
        max_steps=options.max_steps,
        accumulate_grad_batches=options.grad_accum,
        precision=resolve_precision(options),  # type: ignore[arg-type]
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=lightning_strategy(options),
        logger=logger,
        log_every_n_steps=options.log_every_n_steps,
        callbacks=[saver],
        default_root_dir=str(out_dir),
        enable_progress_bar=True,
        enable_model_summary=False,
        num_sanity_val_steps=-1 if validate_first and val_loader is not None and not resume else 0,
        limit_val_batches=1.0 if val_loader is not None else 0,
    )
    metrics: dict[str, Any] = {}
    if resume:
        state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)  # only the step is read
        metrics["resumed_from"] = str(last)
        metrics["resumed_from_step"] = int(state.get("global_step", 0))
        del state
        log.info("resuming from %s (step %d)", last, metrics["resumed_from_step"])
    started = time.monotonic()
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    metrics["seconds"] = round(time.monotonic() - started, 3)
    metrics["world_size"] = int(trainer.world_size)
    metrics["steps"] = int(trainer.global_step)
    metrics["epochs"] = int(trainer.current_epoch)
    metrics.update(getattr(module, "initial_metrics", {}))
    for key, value in trainer.callback_metrics.items():
        if key.endswith("_step"):
            continue
        name = key[: -len("_epoch")] if key.endswith("_epoch") else key
        number = float(value)
        metrics[name] = number if math.isfinite(number) else None
    return trainer, metrics


def train_and_save(
    name: str,
    options: TrainOptions,
    module: pl.LightningModule,
    collate: Callable[[list[Any]], Any],
    items: tuple[list[Any], list[Any]],
    start: Start,
    run: tuple[Path, str, Path],
    counts: dict[str, Any],
    extra_config: dict[str, Any] | None = None,
    validate_first: bool = False,
) -> None:
    """Fit ``module`` on ``items`` = ``(train, validation)`` and save it (rank 0) for the trainer ``name``;
    ``run`` is ``(data, init_model, out_dir)``, ``counts`` (examples, dropped, ...) join the metrics."""
    (data, init_model, out_dir), (train_items, val_items) = run, items
    train_loader = make_loader(train_items, collate, options.batch_size, True, options.seed)
    val_loader = make_loader(val_items, collate, options.batch_size, False, options.seed) if val_items else None
    trainer, metrics = train(module, train_loader, val_loader, options, out_dir, validate_first)
    metrics.update({**counts, "added_tokens": start.added_tokens})
    dtype = save_dtype(options, trainer, base_dtype(init_model, options))
    info = {"trainer": name, "init_model": init_model, "data": str(data), "options": options.model_dump()}
    save_checkpoint(trainer, module.model, start.tokenizer, out_dir, dtype, metrics, info, extra_config)


__all__ = ["Start", "adapt", "begin", "configure_adamw", "resolve_precision", "train", "train_and_save"]
