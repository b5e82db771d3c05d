"""The ``sft`` trainer: fine-tune the policy on its own best solutions (ALGORITHM.md 6.5).

Each line of the data file is ``{"prompt": rendered prompt, "response": solution, ...}``; an example
is ``prompt + response + EOS`` and the loss covers the response and the EOS only (prompt tokens are
labelled -100). The prompt and the response are tokenized separately, exactly as the policy sees them
at inference (prompt tokens in, response tokens out), with the tokenizer's BOS first when it adds one.

Differences from the original, each a fix of ALGORITHM.md section 10:

* examples longer than ``max_length`` are dropped with a warning (``truncation: drop``) instead of
  losing their ending (bug 21); ``truncation: right`` cuts them as the original did;
* the step tags are added as tokens initialised as the mean of their former pieces (bug 23);
* the loss is the mean over response tokens, the schedule linear decay to 0 after ``warmup_steps``.

The result, ``out_dir/model/``, is a plain Hugging Face causal-LM directory (safetensors and tokenizer
files) that every policy backend loads. The trainer the registry builds is
`rstar_lightning.trainers.SFTTrainer`; this module is what its ``fit`` runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from transformers import AutoModelForCausalLM

from rstar.errors import RstarError
from rstar_lightning import _prefix
from rstar_lightning._data import IGNORE_INDEX, encode, pad_right, split
from rstar_lightning._run import adapt, begin, configure_adamw
from rstar_lightning.options import SFTOptions

if TYPE_CHECKING:
    from rstar_lightning.trainers import SFTTrainer

log = logging.getLogger(__name__)

Example = tuple[list[int], list[int]]
"""``(input_ids, labels)`` of one example, labels -100 on the prompt."""


def make_example(tokenizer: Any, prompt: str, response: str) -> Example:
    """Token ids of ``prompt + response + EOS`` and labels that are -100 on the prompt."""
    prompt_ids = encode(tokenizer, prompt, with_bos=True)
    response_ids = [*encode(tokenizer, response, with_bos=False), tokenizer.eos_token_id]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


def build_examples(tokenizer: Any, records: list[dict[str, Any]], options: SFTOptions) -> tuple[list[Example], int]:
    """``(examples, dropped)``: the records' examples, over-long ones dropped or cut (``truncation``), and
    how many were dropped (too long, or nothing left to learn after the cut)."""
    limit = options.max_length
    kept: list[Example] = []
    dropped = 0
    for record in records:
        ids, labels = make_example(tokenizer, str(record["prompt"]), str(record["response"]))
        if len(ids) > limit:
            if options.truncation == "drop":
                dropped += 1
                continue
            ids, labels = ids[:limit], labels[:limit]
        if any(label != IGNORE_INDEX for label in labels):
            kept.append((ids, labels))
        else:
            dropped += 1
    return kept, dropped


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch on the right to its longest example: ``input_ids``, ``attention_mask``, ``labels``."""
    input_ids = pad_right([ids for ids, _ in examples], pad_id)
    labels = pad_right([labels for _, labels in examples], IGNORE_INDEX)
    mask = pad_right([[1] * len(ids) for ids, _ in examples], 0)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class Collator:
    """A picklable collate function (DataLoader worker processes need one)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_id)


class SFTModule(pl.LightningModule):
    """Causal-LM loss on the response tokens."""

    def __init__(self, model: Any, options: SFTOptions) -> None:
        super().__init__()
        self.model = model
        self.model.train()  # from_pretrained returns eval mode; LoRA dropout must be on
        self.options = options

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = _prefix.forward(self.model, **batch) if self.options.share_prefix else self.model(**batch)
        return out.loss  # type: ignore[no-any-return]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        size = len(batch["labels"])  # sync_dist: the epoch's loss is the mean over every rank's batches
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.loss(batch)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(batch["labels"]))

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.options)


def fit(trainer: SFTTrainer, data: Path, init_model: str, out_dir: Path) -> None:
    """One rank's ``sft`` run (``trainer._fit``): the examples of ``data``, then ``trainer._train_and_save``."""
    options = trainer.options
    start = begin(AutoModelForCausalLM, init_model, data, options, ("prompt", "response"))
    kept, dropped = build_examples(start.tokenizer, start.records, options)
    if not kept:
        raise RstarError(f"{data}: every example is longer than max_length={options.max_length}; raise it")
    if dropped:
        log.warning(
            "%s: dropped %d of %d examples longer than %d tokens",
            data,
            dropped,
            len(start.records),
            options.max_length,
        )
    train_items, val_items = split(kept, options.val_fraction, options.seed)
    module = SFTModule(adapt(start, options, "CAUSAL_LM"), options)
    counts = {"examples": len(train_items), "val_examples": len(val_items), "dropped": dropped}
    collator = Collator(start.tokenizer.pad_token_id)
    trainer._train_and_save(module, collator, (train_items, val_items), start, (data, init_model, out_dir), counts)


__all__ = ["Collator", "Example", "SFTModule", "build_examples", "collate", "fit", "make_example"]
