"""Training data: the JSON Lines files, the held-out split, token ids, right-padded batches, loaders."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from rstar import rundir
from rstar.errors import RstarError

IGNORE_INDEX = -100
"""Label of tokens the loss skips (the prompt, the padding)."""


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """The records of a JSON Lines training file (`rstar.rundir.read_jsonl`); each must hold the ``required``
    keys, and there must be at least one."""
    records = rundir.read_jsonl(path, required)
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


def encode(tokenizer: Any, text: str, *, with_bos: bool) -> list[int]:
    """Token ids of ``text``; with ``with_bos``, the tokenizer's BOS first when it adds one (as the policy does)."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if with_bos and adds_bos(tokenizer):
        return [tokenizer.bos_token_id, *ids]
    return ids


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts its BOS token first when it adds special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """A ``(len(rows), longest)`` tensor of the rows padded on the right with ``value``."""
    longest = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (longest - len(r)) for r in rows], dtype=torch.long)


def make_loader(
    items: list[Any], collate: Callable[[list[Any]], Any], batch_size: int, shuffle: bool, seed: int
) -> DataLoader[Any]:
    """Batches of ``items`` made by ``collate``, shuffled (``shuffle``) by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)  # type: ignore[arg-type]


__all__ = ["IGNORE_INDEX", "adds_bos", "encode", "make_loader", "pad_right", "read_jsonl", "split"]
