"""The reward-model checkpoint contract shared by the PPM trainer and the reward backends.

A PPM checkpoint is a standard Hugging Face *sequence-classification* directory with one label
(``num_labels = 1``): the policy's backbone plus a scalar head, read at the last token of the text
``prompt + solution`` (the candidate step's terminator; no EOS is added). Any engine that serves
one-label classifiers loads it without custom code.

How a raw head output ``r`` becomes a reward is stored in the checkpoint's ``config.json`` under
``"rstar_reward"`` (`ScoreTransform`), written by the trainer and applied by every reward backend,
so training and inference cannot disagree. A checkpoint without that key is scored as is
(identity), e.g. a third-party reward model.

* ``{"transform": "tanh", "scale": 1.0}`` — the default of the ``ppm`` trainer: ``tanh(r / scale)``,
  a value in (-1, 1) like the terminal rewards MCTS mixes it with, used in the loss as well.
* ``{"transform": "tanh", "scale": 5.0}`` with the trainer's ``transform_in_training: false`` — the
  original's behaviour (raw scores in training, ``tanh(r/5)`` only at inference; ALGORITHM.md 6.3).
* ``{"transform": "identity"}`` — raw scores.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rstar.errors import RstarError
from rstar.options import Options

log = logging.getLogger(__name__)

CONFIG_KEY = "rstar_reward"
"""Key of `ScoreTransform` in a reward checkpoint's ``config.json``."""


@dataclass(frozen=True)
class ScoreTransform:
    """Maps a raw scalar-head output to the reward a search sees."""

    transform: Literal["identity", "tanh"] = "identity"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.transform not in ("identity", "tanh"):
            raise RstarError(f"unknown reward transform {self.transform!r}; use 'identity' or 'tanh'")
        if not self.scale > 0:
            raise RstarError(f"reward transform scale must be > 0 (got {self.scale})")

    def __call__(self, raw: float) -> float:
        if self.transform == "tanh":
            return math.tanh(raw / self.scale)
        return float(raw)

    def to_dict(self) -> dict[str, Any]:
        return {"transform": self.transform, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ScoreTransform:
        if not data:
            return cls()
        return cls(transform=data.get("transform", "identity"), scale=float(data.get("scale", 1.0)))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ScoreTransform:
        """The transform recorded in ``path/config.json`` (identity when there is none)."""
        config = Path(path) / "config.json"
        if not config.is_file():
            return cls()
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RstarError(f"{config}: not valid JSON ({exc})") from None
        return cls.from_dict(data.get(CONFIG_KEY))


def reward_text(prompt: str, solution: str) -> str:
    """The text a PPM scores: rendered prompt + steps so far, the candidate step last (no EOS)."""
    return prompt + solution


def checkpoint_transform(model: str, trust_remote_code: bool = False) -> ScoreTransform:
    """The transform stored in the checkpoint's ``config.json`` (local directory, else the Hub's config);
    identity when there is none or the config cannot be read (with a warning)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return ScoreTransform.from_checkpoint(path)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as exc:  # any failure to fetch a config leaves the scores raw, loudly
        log.warning("reward model: cannot read the config of %r (%s); scores are not transformed", model, exc)
        return ScoreTransform()
    stored = getattr(config, CONFIG_KEY, None)
    return ScoreTransform.from_dict(stored if isinstance(stored, dict) else None)


class TransformOptions(Options):
    """The keys of a reward backend that turn its raw score into a reward (`transform_option`)."""

    transform: Literal["auto", "identity", "tanh"] = Field(
        "auto",
        description="raw score -> reward: 'auto' (the checkpoint's rstar_reward entry; identity without one), "
        "'identity', or 'tanh' (tanh(raw / scale))",
    )
    scale: float = Field(1.0, gt=0, description="the tanh scale, used when transform is not 'auto'")


def transform_option(choice: str, scale: float, model: str, trust_remote_code: bool = False) -> ScoreTransform:
    """A reward backend's ``transform`` option: ``auto`` reads the checkpoint's (`checkpoint_transform`);
    ``identity`` / ``tanh`` (with ``scale``) override it."""
    if choice == "auto":
        return checkpoint_transform(model, trust_remote_code)
    return ScoreTransform(transform=choice, scale=scale)  # type: ignore[arg-type]


__all__ = [
    "CONFIG_KEY",
    "ScoreTransform",
    "TransformOptions",
    "checkpoint_transform",
    "reward_text",
    "transform_option",
]
