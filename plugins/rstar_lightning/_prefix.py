"""Training forward passes that run the prefix all rows of a batch share only once (``share_prefix``).

The texts both trainers see start with a rendered prompt, and the rendered prompts of one recipe start
with the same instructions and few-shot examples: often most of each text. :func:`forward` runs those
shared leading tokens through the model's backbone with a batch of one, keeps their keys and values
(with their autograd history), lets every row attend to them, and runs the full model on each row's
own tokens only. The loss and its gradients are those of one pass over the whole batch, up to
floating-point rounding, with one difference: dropout (LoRA's) draws one mask for the shared
positions instead of one per row.

A prefix is shared when it is at least :data:`MIN_SHARED_PREFIX` tokens long, every row keeps at
least one token of its own (the one a PPM score is read at), and no label falls inside it (the SFT
loss starts after it). Models whose cache is not transformers' plain per-layer ``DynamicLayer``
(sliding windows, hybrid caches), and gradient checkpointing (where transformers turns the cache
off), run the plain single pass. The cache helpers and the threshold are the ``hf`` plugin's public
`rstar_hf.kv`.
"""

from __future__ import annotations

from typing import Any

import torch
from rstar_hf import kv
from rstar_hf.kv import MIN_SHARED_PREFIX

from rstar_lightning._data import IGNORE_INDEX

_CACHE_KEYWORD = "_rstar_shared_prefix_cache_keyword"
"""Attribute remembering, per model, what :func:`_cache_keyword` found."""


def shared_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> int:
    """Leading tokens every row of a right-padded batch shares and may run once (0: none worth it)."""
    rows = input_ids.shape[0]
    if rows < 2:
        return 0
    differs = (input_ids != input_ids[:1]).any(dim=0).nonzero()
    length = int(differs[0]) if len(differs) else input_ids.shape[1]
    length = min(length, int(attention_mask.sum(dim=1).min()) - 1)  # each row keeps a token of its own
    if labels is not None:
        labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        if len(labelled):  # the first label is predicted from the position before it: a row's own
            length = min(length, int(labelled[0]) - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def backbone(model: Any) -> Any:
    """The transformer under a task head (and under peft's wrapper): what runs the shared prefix."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
    """``model(input_ids=..., attention_mask=..., **kwargs)``, running the batch's shared prefix once.

    ``kwargs`` may hold ``labels`` (a causal LM's): they are cut to the rows' own tokens, and the loss
    is the same as the plain pass's. The output's logits cover the rows' own tokens only.
    """
    labels = kwargs.get("labels")
    shared = shared_length(input_ids, attention_mask, labels)
    cache_kw = _cache_keyword(model) if shared and getattr(model.config, "use_cache", True) is not False else None
    if cache_kw is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    head = backbone(model)(input_ids=input_ids[:1, :shared], attention_mask=attention_mask[:1, :shared], use_cache=True)
    cache = getattr(head, "cache", None) or head.past_key_values
    rows = input_ids.shape[0]
    for layer in cache.layers:  # one copy for every row: a view; attention concatenates each row's own keys
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    if labels is not None:
        kwargs["labels"] = labels[:, shared:]
    kwargs[cache_kw] = cache
    return model(input_ids=input_ids[:, shared:], attention_mask=attention_mask, use_cache=True, **kwargs)


def _cache_keyword(model: Any) -> str | None:
    """The keyword under which ``model`` takes a cache, or None when the cache its config makes is not
    all plain layers (asked once per model)."""
    if not hasattr(model, _CACHE_KEYWORD):
        plain = kv.supports_layers(kv.new_cache(model.config))
        setattr(model, _CACHE_KEYWORD, kv.cache_keyword(backbone(model).forward) if plain else None)
    found: str | None = getattr(model, _CACHE_KEYWORD)
    return found


__all__ = ["MIN_SHARED_PREFIX", "backbone", "forward", "shared_length"]
