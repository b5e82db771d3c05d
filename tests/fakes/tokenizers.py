"""A fake tokenizer the engine fakes share: one token per character (its code point), after a BOS token."""

from __future__ import annotations

BOS = 1


class FakeCharTokenizer:
    """Test fake: one token per character (its code point), after a BOS token."""

    bos_token_id = BOS

    def encode(self, text: str) -> list[int]:
        return [BOS] + [ord(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return decode(ids)


def decode(ids: list[int]) -> str:
    """The text of token ids (BOS dropped)."""
    return "".join(chr(i) for i in ids if i != BOS)
