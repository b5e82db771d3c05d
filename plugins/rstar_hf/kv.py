"""KV-cache helpers on top of transformers' ``DynamicCache`` (the per-layer ``keys``/``values`` layout).

This module is the public API of the ``hf`` plugin's cache handling: its engine and reward model use
it, and other plugins may import it (the Lightning trainers' shared-prefix passes do); its interface
is the names in ``__all__``. :data:`MIN_SHARED_PREFIX` is the one shared-prefix threshold of all of them.

* :func:`new_cache`, :func:`cache_keyword`, :func:`supports_layers`: the cache a model's config makes,
  the keyword its ``forward`` takes it under, and whether its layers have the layout used here.
* :func:`shared_length` / :data:`MIN_SHARED_PREFIX`: how many leading tokens a batch computes once.
* :class:`GrowableLayer` keeps a layer's keys and values in a buffer with spare room, so a decoding
  step writes one position in place instead of copying the whole cache (``DynamicLayer`` concatenates).
  It pays where every row holds its own copy of a long prompt: 1.28x (1.13-1.32x over runs) the hf
  policy's tokens/s without the shared-prefix attention, nothing (0.95-1.04x) under it.
* :class:`PrefixCache` remembers the keys and values of a few prompt prefixes (batch of one) across
  calls: the few-shot part that every prompt of a tree search starts with is computed once. In the hf
  policy: first token 3.2x sooner (2.4-4.3x over runs), 1.05-1.22x tokens/s.

(The figures: ``benchmarks/hf_engine.py``, 2026-12-05, SmolLM2-135M on a shared 2-core CPU at a load
average of 3.2-3.7, float32, 16 rows of a ~680-token few-shot prompt; see :mod:`rstar_hf._engine`.)
* :class:`PathCache` keeps the keys and values of every text a reward model scored, each distinct token
  prefix once (a radix tree), so a tree search's child is scored by running only its new step on top of its
  parent's stored path; bounded in tokens, least recently used leaves dropped first.
* :func:`fill`, :func:`fill_right_aligned`, :func:`merge` / :func:`trim_left` put a prefix (or one per row) into
  a batch's cache, join caches along the batch and drop padding columns; :func:`row_kv` reads one row back.

Everything here needs a cache whose layers are plain ``DynamicLayer`` objects (full attention, no
sliding window, no KV sharing); :func:`supports_layers` says whether a cache qualifies, and callers
fall back to ``DynamicCache`` as is otherwise.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values per layer, each ``[batch, kv_heads, positions, head_dim]``."""

MIN_SHARED_PREFIX = 32
"""Rows that share at least this many leading tokens compute them once (fewer: not worth a second pass)."""


def new_cache(config: Any) -> Any:
    """An empty ``DynamicCache`` laid out for ``config`` (sliding-window layers where the model has them)."""
    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers: no per-layer construction
        return DynamicCache()


def cache_keyword(forward: Any) -> str:
    """The name under which ``forward`` takes a cache: ``cache`` (transformers 5), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def supports_layers(cache: Any) -> bool:
    """Whether ``cache`` has the per-layer layout these helpers work on."""
    layers: list[Any] | None = getattr(cache, "layers", None)
    if not layers:
        return False
    return all(type(layer) is DynamicLayer for layer in layers)


def layer_kv(cache: Any) -> KV:
    """The keys and values of every layer of ``cache`` (no copy)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class GrowableLayer(DynamicLayer):  # type: ignore[no-untyped-call,misc]
    """A ``DynamicLayer`` whose positions live in a larger buffer, appended to in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, reserve: int, rows: torch.Tensor | None = None):
        super().__init__()  # type: ignore[no-untyped-call]
        if rows is not None:
            keys, values = keys.index_select(0, rows), values.index_select(0, rows)
        batch, _, length, _ = keys.shape
        capacity = length + max(1, reserve)
        self._k = keys.new_empty((batch, keys.shape[1], capacity, keys.shape[3]))
        self._v = values.new_empty((batch, values.shape[1], capacity, values.shape[3]))
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self._length = length
        self._reserve = max(1, reserve)
        self.device = keys.device
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self._k[:, :, : self._length]
        self.values = self._v[:, :, : self._length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:  # pragma: no cover
        raise RuntimeError("GrowableLayer is created initialised")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        end = self._length + new
        if end > self._k.shape[2]:
            self._grow(end)
        self._k[:, :, self._length : end] = key_states
        self._v[:, :, self._length : end] = value_states
        self._length = end
        self._views()
        return self._k[:, :, :end], self._v[:, :, :end]

    def _grow(self, needed: int) -> None:
        capacity = max(needed, self._k.shape[2] + self._reserve)
        k = self._k.new_empty((*self._k.shape[:2], capacity, self._k.shape[3]))
        v = self._v.new_empty((*self._v.shape[:2], capacity, self._v.shape[3]))
        k[:, :, : self._length] = self._k[:, :, : self._length]
        v[:, :, : self._length] = self._v[:, :, : self._length]
        self._k, self._v = k, v

    def get_seq_length(self) -> int:
        return self._length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k = self._k.index_select(0, indices.to(self._k.device))
        self._v = self._v.index_select(0, indices.to(self._v.device))
        self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k = self._k.repeat_interleave(repeats, dim=0)
        self._v = self._v.repeat_interleave(repeats, dim=0)
        self._views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        self._length = max(0, self._length + tokens_to_remove)
        self._views()

    def trim_left(self, columns: int) -> None:
        """Forget the first ``columns`` positions (a view: no copy)."""
        self._k = self._k[:, :, columns:]
        self._v = self._v[:, :, columns:]
        self._length -= columns
        self._views()

    def reset(self) -> None:
        self._length = 0
        self._views()


def make_growable(cache: Any, reserve: int, rows: torch.Tensor | None = None) -> None:
    """Turn every layer of ``cache`` into a :class:`GrowableLayer` (selecting ``rows`` of the batch)."""
    for i, layer in enumerate(cache.layers):
        cache.layers[i] = GrowableLayer(layer.keys, layer.values, reserve, rows)


def fill(cache: Any, kv: KV, batch: int) -> None:
    """Put ``kv`` (batch of one) into an empty ``cache`` as ``batch`` identical rows."""
    for i, (k, v) in enumerate(kv):
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)


def fill_right_aligned(cache: Any, kvs: Sequence[KV | None], lengths: Sequence[int]) -> int:
    """Put one prefix per row into an empty ``cache``: row ``r`` gets the first ``lengths[r]`` positions of
    ``kvs[r]`` (batch of one; None when 0) in the LAST ``lengths[r]`` columns, so every row's own tokens
    continue at the same column. The columns before are zeros, for the caller's attention mask to hide.
    Returns the number of columns (the longest prefix); nothing is put when it is 0."""
    width = max(lengths, default=0)
    some = next((kv for kv, n in zip(kvs, lengths, strict=True) if kv is not None and n), None)
    if some is None or width == 0:
        return 0
    for i, (k0, v0) in enumerate(some):
        keys = k0.new_zeros((len(kvs), k0.shape[1], width, k0.shape[3]))
        values = v0.new_zeros((len(kvs), v0.shape[1], width, v0.shape[3]))
        for r, (kv, n) in enumerate(zip(kvs, lengths, strict=True)):
            if kv is not None and n:
                keys[r, :, width - n :] = kv[i][0][0, :, :n]
                values[r, :, width - n :] = kv[i][1][0, :, :n]
        cache.update(keys, values, i)
    return width


def row_kv(cache: Any, row: int, start: int, stop: int) -> KV:
    """Positions ``start:stop`` of batch row ``row`` of ``cache``, as a batch of one (views, no copy)."""
    rows = slice(row, row + 1)
    return [(layer.keys[rows, :, start:stop], layer.values[rows, :, start:stop]) for layer in cache.layers]


def merge(caches: Sequence[Any]) -> Any:
    """The first cache, holding the rows of all ``caches`` (same length) in order."""
    first = caches[0]
    for i, layer in enumerate(first.layers):
        layer.keys = torch.cat([c.layers[i].keys for c in caches], dim=0)
        layer.values = torch.cat([c.layers[i].values for c in caches], dim=0)
    return first


def trim_left(cache: Any, columns: int) -> bool:
    """Drop the first ``columns`` positions of every layer; False when the layers cannot."""
    if not all(isinstance(layer, GrowableLayer) for layer in cache.layers):
        return False
    for layer in cache.layers:
        layer.trim_left(columns)
    return True


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def shared_length(rows: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Leading tokens all ``rows`` share, leaving each row at least one of its own; 0 when under ``minimum``."""
    shortest = min(len(r) for r in rows)
    shared = min((common_prefix_length(rows[0], r) for r in rows[1:]), default=shortest)
    shared = min(shared, shortest - 1)
    return shared if shared >= minimum else 0


class PrefixCache:
    """Keys and values of recent prompt prefixes (batch of one), least recently used dropped first.

    A lookup returns the longest stored match, sliced to the part shared with the asked-for tokens.
    """

    def __init__(self, max_entries: int = 8, max_bytes: int = 1 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, tokens: tuple[int, ...]) -> tuple[int, KV | None]:
        best_len, best_key = 0, None
        for key in self._entries:
            n = common_prefix_length(key, tokens)
            if n > best_len:
                best_len, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        kv = self._entries[best_key]
        if best_len < len(best_key):
            kv = [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in kv]
        return best_len, kv

    def put(self, tokens: tuple[int, ...], kv: KV) -> None:
        for key in list(self._entries):
            if len(key) <= len(tokens) and tokens[: len(key)] == key:
                del self._entries[key]  # the new entry covers it
        self._entries[tokens] = kv
        while len(self._entries) > self.max_entries or (len(self._entries) > 1 and self._bytes() > self.max_bytes):
            self._entries.popitem(last=False)

    def _bytes(self) -> int:
        return sum(k.nbytes + v.nbytes for kv in self._entries.values() for k, v in kv)


class _Segment:
    """A node of a `PathCache`: tokens that follow its parent's, their keys and values, and its children
    (keyed by their first token)."""

    __slots__ = ("children", "kv", "parent", "tokens", "used")

    def __init__(self, tokens: tuple[int, ...], kv: KV, parent: _Segment | None, used: int) -> None:
        self.tokens = tokens
        self.kv = kv
        self.parent = parent
        self.children: dict[int, _Segment] = {}
        self.used = used


class PathCache:
    """Keys and values (batch of one) of the texts a model read, each distinct token prefix stored once.

    A radix tree of token segments: a tree search's texts are paths through the search tree, and every
    scored child extends its parent's text, so the tree stores each search node's new tokens once however
    many descendants share them (a flat cache would store the few-shot prompt and the steps so far again
    with every entry). :meth:`lookup` gives the longest stored prefix of a token sequence (its positions
    concatenated), :meth:`put` stores the positions of a sequence it lacks (copies, so a batch's cache is
    not kept alive). It holds at most ``max_tokens`` positions: beyond that, the least recently used leaf
    segments go first (a segment with children never goes before them). Memory: ``max_tokens`` times the
    model's bytes per position, 2 x layers x key-value heads x head size x dtype size.

    Keys and values depend only on the tokens before and at a position, so a stored prefix is exact for any
    text that starts with the same token ids, however that text was written.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._root = _Segment((), [], None, 0)
        self._clock = 0

    def __len__(self) -> int:
        """The number of stored segments."""
        return sum(1 for _ in self._segments())

    def clear(self) -> None:
        self._root.children.clear()
        self.tokens = 0

    def lookup(self, tokens: Sequence[int]) -> tuple[int, KV | None]:
        """How many leading ``tokens`` are stored, and their keys and values (None when none are)."""
        path, known = self._walk(tokens)
        if not known:
            return 0, None
        self._touch(path[-1][0])
        pieces = [[(k[:, :, :n], v[:, :, :n]) for k, v in seg.kv] for seg, n in path]
        if len(pieces) == 1:
            return known, pieces[0]
        layers = zip(*pieces, strict=True)
        return known, [(torch.cat([k for k, _ in kv], dim=2), torch.cat([v for _, v in kv], dim=2)) for kv in layers]

    def put(self, tokens: Sequence[int], kv: KV) -> None:
        """Store ``tokens`` whose keys and values (batch of one, at least ``len(tokens)`` positions) are ``kv``;
        a sequence longer than ``max_tokens`` is not stored."""
        if len(tokens) > self.max_tokens:
            return
        path, known = self._walk(tokens)
        parent = self._root
        if path:
            seg, n = path[-1]
            parent = seg if n == len(seg.tokens) else self._split(seg, n)
        if known < len(tokens):
            new = tuple(tokens[known:])
            part = [(k[:, :, known : len(tokens)].clone(), v[:, :, known : len(tokens)].clone()) for k, v in kv]
            parent.children[new[0]] = _Segment(new, part, parent, 0)
            parent = parent.children[new[0]]
            self.tokens += len(new)
        self._touch(parent)
        self._evict()

    def _walk(self, tokens: Sequence[int]) -> tuple[list[tuple[_Segment, int]], int]:
        """The segments ``tokens`` runs through, with how many tokens of each it matches, and the total."""
        tokens = tuple(tokens)  # common_prefix_length compares slices: a list never equals a tuple
        path: list[tuple[_Segment, int]] = []
        seg, known = self._root, 0
        while known < len(tokens) and (child := seg.children.get(tokens[known])) is not None:
            n = common_prefix_length(child.tokens, tokens[known : known + len(child.tokens)])
            path.append((child, n))
            known += n
            if n < len(child.tokens):
                break
            seg = child
        return path, known

    def _split(self, seg: _Segment, n: int) -> _Segment:
        """Cut ``seg`` after its first ``n`` tokens; the head takes its place and is returned."""
        assert seg.parent is not None and 0 < n < len(seg.tokens)
        head_kv = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in seg.kv]
        head = _Segment(seg.tokens[:n], head_kv, seg.parent, seg.used)
        seg.parent.children[seg.tokens[0]] = head
        seg.tokens, seg.parent = seg.tokens[n:], head
        seg.kv = [(k[:, :, n:].clone(), v[:, :, n:].clone()) for k, v in seg.kv]
        head.children[seg.tokens[0]] = seg
        return head

    def _touch(self, seg: _Segment) -> None:
        """Mark ``seg`` and its ancestors as just used."""
        self._clock += 1
        node: _Segment | None = seg
        while node is not None:
            node.used = self._clock
            node = node.parent

    def _evict(self) -> None:
        while self.tokens > self.max_tokens:
            leaf = min((s for s in self._segments() if not s.children), key=lambda s: s.used)
            assert leaf.parent is not None
            del leaf.parent.children[leaf.tokens[0]]
            self.tokens -= len(leaf.tokens)

    def _segments(self) -> Iterator[_Segment]:
        stack = list(self._root.children.values())
        while stack:
            seg = stack.pop()
            yield seg
            stack.extend(seg.children.values())


__all__ = [
    "KV",
    "MIN_SHARED_PREFIX",
    "GrowableLayer",
    "PathCache",
    "PrefixCache",
    "cache_keyword",
    "common_prefix_length",
    "fill",
    "fill_right_aligned",
    "layer_kv",
    "make_growable",
    "merge",
    "new_cache",
    "row_kv",
    "shared_length",
    "supports_layers",
    "trim_left",
]
