"""The recipe keys of the ``sft`` and ``ppm`` trainers: pydantic models only.

The registry reads a trainer's ``Options`` to validate a recipe (`rstar validate`, ``rstar plugins``)
without building it, so this module imports no torch, transformers or lightning; neither does
`rstar_lightning.trainers`, whose classes carry these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from rstar.options import Options


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
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads while training (torch.set_num_threads); default: torch's, one per core, "
        "so losses differ in their last digits between machines with different core counts",
    )
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


class SFTOptions(TrainOptions):
    """Options of the ``sft`` trainer (``trainer: {name: sft, ...}``)."""

    truncation: Literal["drop", "right"] = Field(
        "drop",
        description=(
            "examples longer than max_length: 'drop' them (with a warning), or cut them on the 'right' "
            "(the original's behaviour: the solution loses its ending)"
        ),
    )


class PPMOptions(TrainOptions):
    """Options of the ``ppm`` trainer (``trainer: {name: ppm, ...}``)."""

    batch_size: int = Field(4, ge=1, description="preference pairs per device and forward pass (2x texts)")
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of the pairs held out to measure pairwise accuracy each epoch"
    )
    weighting: Literal["counts", "none"] = Field(
        "counts",
        description=(
            "pair weights: 'counts' = 1/(pos_count*neg_count) (1/(pos+neg) if one is 0), as the original; 'none' = 1"
        ),
    )
    transform: Literal["tanh", "identity"] = Field(
        "tanh", description="how a raw head output r becomes a reward: tanh(r/scale), or r itself"
    )
    scale: float = Field(1.0, gt=0, description="the divisor inside tanh (the original: 5)")
    transform_in_training: bool = Field(
        True, description="apply the transform inside the loss too (false: the original's raw-score loss)"
    )


__all__ = ["LoraOptions", "PPMOptions", "SFTOptions", "TrainOptions"]
