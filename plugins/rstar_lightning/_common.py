"""What the ``sft`` and ``ppm`` trainers share: options, data files, model loading, the Lightning run, saving.

Both trainers follow the same life cycle (:class:`LightningTrainer`):

1. ``out_dir/model/`` holds a finished checkpoint (its marker file, written last, exists): return it.
2. With ``strategy: ddp`` or ``fsdp`` on several devices, start this machine's other ranks
   (`rstar_lightning._launch`); each runs the steps below on the same data.
3. Load the tokenizer and the model (a Hub id, a local directory, a ``.gguf`` file or ``package:<name>``,
   resolved by :func:`rstar.models.resolve_source`), add the step-format tags as tokens, wrap in LoRA
   (:func:`begin`, :func:`adapt`).
4. Run a Lightning ``Trainer``; when ``out_dir/checkpoints/last.ckpt`` exists (a killed run) it resumes
   from there instead of starting over (:func:`train`).
5. Rank 0 saves a Hugging Face directory (safetensors, tokenizer files; LoRA merged into the weights),
   then ``metrics.json``, then the marker (:func:`finish`); the other ranks write nothing.

Torch, transformers, lightning and peft are imported inside functions, so that listing plugins or
validating a recipe stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from rstar.config import Options
from rstar.errors import DataError, MissingExtraError, RstarError
from rstar.models import resolve_source
from rstar.steps import TAGS

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

log = logging.getLogger(__name__)

MARKER = "rstar_trained.json"
"""Written last into ``out_dir/model/``: its presence means the checkpoint is complete."""

IGNORE_INDEX = -100
"""Label of tokens the loss skips (the prompt, the padding)."""


class LoraOptions(Options):
    """Low-rank adapters (peft); merged into the base weights before the checkpoint is saved."""

    r: int = Field(16, ge=1, description="rank of the adapter matrices")
    alpha: int = Field(32, ge=1, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="module names to adapt (e.g. [q_proj, v_proj]), or 'all-linear' for every linear layer",
    )


class TrainOptions(Options):
    """Options both trainers take (``trainer: {name: sft|ppm, ...}``)."""

    gguf_file: str | None = Field(
        None, description="the .gguf file inside init_model's directory; found automatically when there is one"
    )
    epochs: int = Field(2, ge=1, description="passes over the training data")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: run all epochs)")
    lr: float = Field(7e-6, gt=0, description="peak learning rate (AdamW), decayed linearly to 0")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up from 0 to lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not applied to biases and norms)")
    batch_size: int = Field(4, ge=1, description="examples per device and forward pass")
    grad_accum: int = Field(1, ge=1, description="forward passes accumulated per optimizer step")
    max_length: int = Field(4096, ge=8, description="the most tokens of one example")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="share of the data held out for validation")
    seed: int = Field(42, description="seed of the model init, the shuffling and the split")
    precision: str = Field(
        "auto",
        description=(
            "Lightning precision: 'auto' (bf16-mixed on a CUDA GPU with bf16, else 32-true), '32-true', "
            "'bf16-mixed', '16-mixed'"
        ),
    )
    accelerator: str = Field("auto", description="Lightning accelerator: 'auto', 'cpu', 'gpu'")
    devices: int | str | list[int] = Field(
        "auto",
        description=(
            "Lightning devices per machine: 'auto' (every GPU, else 1 CPU process), a count (-1: all), "
            "or GPU indices; more than one runs one process per device"
        ),
    )
    num_nodes: int = Field(
        1,
        ge=1,
        description=(
            "machines taking part; run the same command on each with MASTER_ADDR, MASTER_PORT and "
            "NODE_RANK set (ddp/fsdp)"
        ),
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description=(
            "Lightning strategy: 'auto' (ddp when there are several devices), 'ddp' (a model copy per "
            "process), 'fsdp' (full-shard, full state dict; GPUs, or CPUs with gloo)"
        ),
    )
    logger: Literal["csv", "tensorboard"] = Field("csv", description="where metrics go, under out_dir/logs/")
    log_every_n_steps: int = Field(10, ge=1, description="log training metrics every this many steps")
    checkpoint_every_n_steps: int = Field(
        200, ge=1, description="write out_dir/checkpoints/last.ckpt (to resume a killed run) every this many steps"
    )
    add_step_tokens: bool = Field(
        True,
        description=(
            "add the step-format tags (<code>, <end_of_step>, ...) as tokens; each new embedding row starts as "
            "the mean of the rows of the pieces the tag was split into before"
        ),
    )
    lora: LoraOptions | None = Field(None, description="train low-rank adapters instead of all weights (peft)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    share_prefix: bool = Field(
        True,
        description=(
            "run the leading tokens all texts of a batch share (the few-shot prompt) once per batch, not once per "
            "text: same loss, less compute (rstar_lightning._prefix); not with gradient_checkpointing"
        ),
    )
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the saved weights; 'auto': the base checkpoint's dtype after GPU training, else float32",
    )

    @field_validator("lora")
    @classmethod
    def _lora_without_fsdp(cls, lora: LoraOptions | None, info: ValidationInfo) -> LoraOptions | None:
        if lora is not None and info.data.get("strategy") == "fsdp":
            raise ValueError("LoRA cannot be combined with strategy 'fsdp'; use strategy 'ddp' or 'auto'")
        return lora


# --- extras and data files --------------------------------------------------------------------------


def require_extras(component: str) -> None:
    """Raise `MissingExtraError` (pointing at ``pip install 'rstar[train]'``) if a training package is missing."""
    for module, extra in (("torch", "hf"), ("transformers", "hf"), ("lightning", "train"), ("peft", "train")):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(component, module, extra) from None


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """The records of a JSON Lines file; each must hold the ``required`` keys."""
    if not path.is_file():
        raise DataError(f"{path}: training data file not found")
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object")
            missing = [key for key in required if key not in record]
            if missing:
                raise DataError(f"{path}, line {number}: missing key(s) {', '.join(missing)}")
            records.append(record)
    if not records:
        raise RstarError(f"{path}: the training data file is empty; run the extraction stage first")
    return records


def split(items: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """``(train, validation)``: a seeded random ``val_fraction`` of ``items`` is held out (at least one)."""
    if val_fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    held = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


# --- tokenizer and model ------------------------------------------------------------------------------


def load_tokenizer(init_model: str, options: TrainOptions) -> Any:
    """The tokenizer of ``init_model``, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

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
    import torch
    import transformers

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


def base_dtype(init_model: str, options: TrainOptions) -> torch.dtype:
    """The dtype the base checkpoint's config records (float32 when it records none, and for GGUF files)."""
    import torch
    from transformers import AutoConfig

    source, gguf = resolve_source(init_model, options.gguf_file)
    if gguf:
        return torch.float32
    config = AutoConfig.from_pretrained(source)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def add_step_tokens(model: Any, tokenizer: Any, tags: Sequence[str] = TAGS) -> list[str]:
    """Add the tags the tokenizer lacks as special tokens; return them.

    Each new input-embedding row (and output row, when the head is not tied to the embeddings) is
    initialised as the mean of the rows of the pieces the tag was split into before, so the tags start
    out meaning roughly what their text meant (the original left them as untrained padding rows). The
    matrix never shrinks: a model with spare rows keeps them.
    """
    import torch

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
    from peft import LoraConfig, get_peft_model

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


def encode(tokenizer: Any, text: str, *, with_bos: bool) -> list[int]:
    """Token ids of ``text``; with ``with_bos``, the tokenizer's BOS first when it adds one (as the policy does)."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if with_bos and adds_bos(tokenizer):
        return [tokenizer.bos_token_id, *ids]
    return ids


def adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """A ``(len(rows), longest)`` tensor of the rows padded on the right with ``value``."""
    import torch

    longest = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (longest - len(r)) for r in rows], dtype=torch.long)


# --- the Lightning run --------------------------------------------------------------------------------


def resolve_precision(options: TrainOptions) -> str:
    if options.precision != "auto":
        return options.precision
    import torch

    on_gpu = options.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def configure_adamw(module: pl.LightningModule, options: TrainOptions) -> Any:
    """AdamW (no decay on biases and norms) with linear warm-up and linear decay to 0, stepped per optimizer step."""
    import torch

    # Biases and norms are told apart by name and layer type, not by shape: under FSDP every parameter
    # the optimizer sees is a flat 1-D shard, so a shape rule would exempt all of them from decay.
    decay, flat = [], []
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
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = options.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def make_loader(
    items: list[Any], collate: Callable[[list[Any]], Any], batch_size: int, shuffle: bool, seed: int
) -> Any:
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)  # type: ignore[arg-type]


def model_complete(out_dir: Path) -> bool:
    return (out_dir / "model" / MARKER).is_file()


# --- the life cycle ---------------------------------------------------------------------------------------


class LightningTrainer:
    """Base of the ``sft`` and ``ppm`` trainers (`rstar.interfaces.Trainer`).

    ``fit`` returns a finished ``out_dir/model/`` at once; otherwise it starts the other local ranks
    (several devices), runs :meth:`_fit` as rank 0 and waits for them.
    """

    Options: ClassVar[type[TrainOptions]] = TrainOptions
    name: ClassVar[str] = "trainer"

    def __init__(self, options: TrainOptions) -> None:
        require_extras(f"the {self.name!r} trainer")
        self.options = options

    def fit(self, data: Path, init_model: str, out_dir: Path) -> Path:
        """Train from ``init_model`` on the JSONL file ``data``; resume a killed run; skip a finished one."""
        from rstar_lightning._launch import local_ranks

        data, out_dir = Path(data), Path(out_dir)
        if not model_complete(out_dir):
            with local_ranks(self, data, init_model, out_dir):
                self._fit(data, init_model, out_dir)
        return out_dir / "model"

    def _fit(self, data: Path, init_model: str, out_dir: Path) -> None:
        """One rank's run: usually :func:`begin`, :func:`adapt`, then :meth:`_train_and_save`."""
        raise NotImplementedError

    def _train_and_save(
        self,
        module: pl.LightningModule,
        collate: Callable[[list[Any]], Any],
        items: tuple[list[Any], list[Any]],
        start: Start,
        run: tuple[Path, str, Path],
        counts: dict[str, Any],
        extra_config: dict[str, Any] | None = None,
        validate_first: bool = False,
    ) -> None:
        """Fit ``module`` on ``items`` = ``(train, validation)`` and save it (rank 0); ``run`` is
        ``(data, init_model, out_dir)``, ``counts`` (examples, dropped, ...) join the metrics."""
        options, (data, init_model, out_dir), (train_items, val_items) = self.options, run, items
        train_loader = make_loader(train_items, collate, options.batch_size, True, options.seed)
        val_loader = make_loader(val_items, collate, options.batch_size, False, options.seed) if val_items else None
        trainer, metrics = train(module, train_loader, val_loader, options, out_dir, validate_first)
        metrics.update({**counts, "added_tokens": start.added_tokens})
        dtype = save_dtype(options, trainer, base_dtype(init_model, options))
        info = {"trainer": self.name, "init_model": init_model, "data": str(data), "options": options.model_dump()}
        save_checkpoint(trainer, module.model, start.tokenizer, out_dir, dtype, metrics, info, extra_config)


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
    import lightning.pytorch as pl

    records = read_jsonl(data, required)
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
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from rstar_lightning._launch import lightning_strategy

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
        import torch

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


def save_dtype(options: TrainOptions, trainer: pl.Trainer, base: torch.dtype) -> torch.dtype:
    import torch

    if options.save_dtype != "auto":
        return getattr(torch, options.save_dtype)  # type: ignore[no-any-return]
    on_gpu = trainer.strategy.root_device.type == "cuda"
    return base if on_gpu else torch.float32


__all__ = [
    "IGNORE_INDEX",
    "MARKER",
    "LightningTrainer",
    "LoraOptions",
    "Start",
    "TrainOptions",
    "adapt",
    "add_step_tokens",
    "apply_lora",
    "base_dtype",
    "begin",
    "configure_adamw",
    "encode",
    "load_model",
    "load_tokenizer",
    "make_loader",
    "model_complete",
    "pad_right",
    "read_jsonl",
    "require_extras",
    "save_checkpoint",
    "save_dtype",
    "split",
    "train",
]
