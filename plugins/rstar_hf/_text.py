"""Text side of decoding: incremental detokenisation and stop-string search (no torch here).

Decoding a row's whole continuation after every token costs O(length) per token; these helpers
keep the cost per token constant. :class:`IncrementalText` turns a token stream into the text that
continues the prompt, the way a streaming server does: it decodes a short window of recent tokens
and appends only what that window adds, holding back tokens that end inside a multi-byte character.
`rstar.backends.find_stop` then looks for stop strings only where new text could complete one.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5
"""Prompt tokens kept as left context, so that a first token's leading space is not stripped."""


class IncrementalText:
    """The text of one row's generated tokens, grown one token at a time.

    :meth:`push` adds a token and returns two token windows to decode (the already-read prefix and
    the whole window); :meth:`advance` takes their texts and appends what the new tokens add to
    ``text``. The result equals decoding the continuation in the context of the prompt's last
    tokens, so a leading space of the first generated token is kept.
    """

    __slots__ = ("_ids", "_prefix_offset", "_read_offset", "text")

    def __init__(self, prompt_ids: Sequence[int]) -> None:
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self.text = ""

    def push(self, token: int) -> tuple[list[int], list[int]]:
        """Add a token; return ``(prefix_window, full_window)`` to decode for :meth:`advance`."""
        self._ids.append(token)
        return self._ids[self._prefix_offset : self._read_offset], self._ids[self._prefix_offset :]

    def windows(self) -> tuple[list[int], list[int]]:
        """The current ``(prefix_window, full_window)`` (for a final :meth:`advance`)."""
        return self._ids[self._prefix_offset : self._read_offset], self._ids[self._prefix_offset :]

    def advance(self, prefix: str, decoded: str, final: bool = False) -> int:
        """Append what ``decoded`` adds to ``prefix``; return the length ``text`` had before.

        Text ending in an incomplete character (U+FFFD) is held back until a later token completes
        it, unless ``final``.
        """
        old_len = len(self.text)
        if len(decoded) > len(prefix) and (final or not decoded.endswith(REPLACEMENT)):
            if decoded.startswith(prefix):
                delta = decoded[len(prefix) :]
            else:  # a decoder that renders the prefix differently in a longer context
                common = 0
                for a, b in zip(prefix, decoded, strict=False):
                    if a != b:
                        break
                    common += 1
                delta = decoded[common:]
            self.text += delta
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        return old_len

    @property
    def has_pending(self) -> bool:
        """Whether pushed tokens are not in ``text`` yet (they end inside a character)."""
        return len(self._ids) > self._read_offset
