"""The ``ppm`` trainer: the process preference model, a scalar head on the policy (ALGORITHM.md 6.3-6.4).

Each line of the data file is a preference pair ``{"prompt", "pos", "neg", "pos_count", "neg_count", ...}``
sharing one prefix. The score of a text is the head's output at its last token: ``prompt + pos`` (or
``+ neg``) tokenized as one text, the tokenizer's BOS first when it adds one, no EOS appended
(`rstar.reward.reward_text`). A text longer than ``max_length`` keeps its BOS and its *last* tokens, so
the candidate step is never cut; a pair whose step alone does not fit is dropped.

Loss, for a batch of B pairs with scores ``s⁺`` and ``s⁻`` after the transform ``f``::

    loss = (1/B) Σ_i w_i · −log σ(f(s⁺_i) − f(s⁻_i))        # Bradley–Terry, weighted, averaged

``w_i = 1/(pos_count·neg_count)`` (``1/(pos_count+neg_count)`` when one count is 0) with ``weighting:
counts`` (the original's), 1 with ``weighting: none``. The original sums over the batch (bug 20);
here the mean keeps the step size independent of the batch size.

``f`` is ``tanh(s/scale)`` or the identity (``transform``). By default it is applied in training and at
inference alike; ``transform: tanh, scale: 5, transform_in_training: false`` is the original's
("faithful") setting: raw scores in the loss, ``tanh(r/5)`` when searching. Either way the transform is
written into the checkpoint (``config.json["rstar_reward"]``, `rstar.reward.ScoreTransform`), so the
reward backends apply what the trainer meant.

The checkpoint is a one-label ``AutoModelForSequenceClassification`` directory whose ``pad_token_id``
is set: Hugging Face reads the score at the last non-pad token, which is the last token of the text
since batches are padded on the right. The trainer the registry builds is
`rstar_lightning.trainers.PPMTrainer`; this module is what its ``fit`` runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from rstar.errors import RstarError
from rstar.reward import CONFIG_KEY, ScoreTransform
from rstar_lightning import _prefix
from rstar_lightning._data import adds_bos, encode, pad_right, split
from rstar_lightning._run import adapt, begin, configure_adamw
from rstar_lightning.options import PPMOptions

if TYPE_CHECKING:
    from rstar_lightning.trainers import PPMTrainer

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int], float]
"""``(positive ids, negative ids, weight)`` of one preference pair."""


def pair_weight(record: dict[str, Any], weighting: str) -> float:
    """The loss weight of a pair (see the module docstring)."""
    if weighting == "none":
        return 1.0
    pos, neg = int(record.get("pos_count", 1)), int(record.get("neg_count", 1))
    if pos > 0 and neg > 0:
        return 1.0 / (pos * neg)
    return 1.0 / (pos + neg) if pos + neg > 0 else 1.0


def score_ids(tokenizer: Any, prompt: str, step: str, max_length: int) -> list[int] | None:
    """Token ids of ``prompt + step`` cut from the left to ``max_length`` (BOS kept); None if ``step`` does not fit."""
    ids = encode(tokenizer, prompt + step, with_bos=True)
    if len(ids) <= max_length:
        return ids
    head = ids[:1] if adds_bos(tokenizer) else []
    room = max_length - len(head)
    if len(encode(tokenizer, step, with_bos=False)) > room:
        return None
    return head + ids[len(ids) - room :]


def build_pairs(tokenizer: Any, records: list[dict[str, Any]], options: PPMOptions) -> tuple[list[Pair], int]:
    """``(pairs, dropped)``: the records' pairs that fit ``max_length``, and how many did not."""
    kept: list[Pair] = []
    for record in records:
        prompt = str(record["prompt"])
        pos = score_ids(tokenizer, prompt, str(record["pos"]), options.max_length)
        neg = score_ids(tokenizer, prompt, str(record["neg"]), options.max_length)
        if pos is not None and neg is not None:
            kept.append((pos, neg, pair_weight(record, options.weighting)))
    return kept, len(records) - len(kept)


def bt_loss(pos: torch.Tensor, neg: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted Bradley–Terry loss averaged over the batch: ``mean(w · −log σ(pos − neg))``."""
    return (weights * F.softplus(neg - pos)).mean()


def collate(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Positives then negatives as one right-padded batch of 2B texts, and the B weights."""
    texts = [pos for pos, _, _ in pairs] + [neg for _, neg, _ in pairs]
    return {
        "input_ids": pad_right(texts, pad_id),
        "attention_mask": pad_right([[1] * len(t) for t in texts], 0),
        "weights": torch.tensor([w for _, _, w in pairs], dtype=torch.float32),
    }


class Collator:
    """A picklable collate function (DataLoader worker processes need one)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        return collate(pairs, self.pad_id)


def head_name(model: Any) -> str:
    """Name of the classification head: the model's top-level linear layer with one output."""
    for name, child in model.named_children():
        if isinstance(child, torch.nn.Linear) and child.out_features == 1:
            return str(name)
    raise RstarError(f"ppm trainer: {type(model).__name__} has no one-output linear head")


def init_head(model: Any, head: str) -> None:
    """Draw a new head's weights from N(0, (0.1/sqrt(hidden))²) and zero its bias, so scores start near 0."""
    layer = getattr(model, head)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.1 / layer.in_features**0.5)
        if layer.bias is not None:
            layer.bias.zero_()


def heads_in_float32(model: Any) -> None:
    """Run every one-output linear layer (the head, and peft's copy of it) in float32, outside autocast."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == 1:

            def forward(x: torch.Tensor, layer: torch.nn.Linear = module) -> torch.Tensor:
                bias = None if layer.bias is None else layer.bias.float()
                with torch.autocast(device_type=x.device.type, enabled=False):
                    return F.linear(x.float(), layer.weight.float(), bias)

            module.forward = forward  # type: ignore[method-assign, assignment]


class PPMModule(pl.LightningModule):
    """Bradley–Terry loss on the scores of the positive and the negative text of each pair."""

    def __init__(self, model: Any, options: PPMOptions) -> None:
        super().__init__()
        self.model = model
        self.model.train()  # from_pretrained returns eval mode; LoRA dropout must be on
        self.options = options
        self.transform = ScoreTransform(options.transform, options.scale)
        self.initial_metrics: dict[str, float] = {}
        self._initial = torch.zeros(3)  # correct pairs, loss x pairs, pairs: the sanity pass before training

    def scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        out = _prefix.forward(self.model, **texts) if self.options.share_prefix else self.model(**texts)
        raw = out.logits[:, 0].float()
        if self.options.transform_in_training and self.transform.transform == "tanh":
            raw = (raw / self.transform.scale).tanh()
        half = len(batch["weights"])
        return raw[:half], raw[half:]

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        pos, neg = self.scores(batch)
        loss = bt_loss(pos, neg, batch["weights"])
        accuracy = (pos > neg).float().mean()
        if self.trainer.sanity_checking:  # the held-out pairs before training (train's validate_first)
            size = len(pos)
            self._initial += torch.tensor([float((pos > neg).sum()), float(loss) * size, float(size)])
            return loss
        size, on_step = len(pos), stage == "train"  # sync_dist: means over every rank's batches
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}_accuracy", accuracy, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            return
        correct, loss, pairs = self.trainer.strategy.reduce(self._initial.to(self.device), reduce_op="sum").tolist()
        self.initial_metrics = {"val_accuracy_initial": correct / pairs, "val_loss_initial": loss / pairs}

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.options)


def fit(trainer: PPMTrainer, data: Path, init_model: str, out_dir: Path) -> None:
    """One rank's ``ppm`` run (``trainer._fit``): the pairs of ``data``, then ``trainer._train_and_save``."""
    options = trainer.options
    start = begin(AutoModelForSequenceClassification, init_model, data, options, ("prompt", "pos", "neg"), num_labels=1)
    model = start.model
    setattr(model.config, CONFIG_KEY, ScoreTransform(options.transform, options.scale).to_dict())
    head = head_name(model)
    if any(key.startswith(f"{head}.") for key in start.missing_keys):  # a new head
        init_head(model, head)

    kept, dropped = build_pairs(start.tokenizer, start.records, options)
    if not kept:
        raise RstarError(f"{data}: no pair fits max_length={options.max_length}; raise it")
    if dropped:
        log.warning(
            "%s: dropped %d of %d pairs whose step is longer than %d tokens",
            data,
            dropped,
            len(start.records),
            options.max_length,
        )
    train_items, val_items = split(kept, options.val_fraction, options.seed)
    model = adapt(start, options, "SEQ_CLS", [head])
    heads_in_float32(model)
    module = PPMModule(model, options)
    counts = {"pairs": len(train_items), "val_pairs": len(val_items), "dropped": dropped}
    explicit = {"num_labels": 1}  # transformers derives it from id2label; servers and readers look for it
    collator = Collator(start.tokenizer.pad_token_id)
    items, run = (train_items, val_items), (data, init_model, out_dir)
    trainer._train_and_save(module, collator, items, start, run, counts, explicit, validate_first=True)


__all__ = [
    "Collator",
    "PPMModule",
    "Pair",
    "bt_loss",
    "build_pairs",
    "collate",
    "fit",
    "head_name",
    "heads_in_float32",
    "init_head",
    "pair_weight",
    "score_ids",
]
