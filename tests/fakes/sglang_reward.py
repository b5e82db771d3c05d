"""Fakes of SGLang's engine API for the unit tests of the `sglang` reward model (named as fakes; the real engine
runs in the tests marked gpu)."""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

from fakes.tokenizers import FakeCharTokenizer


class FakeSpaceTokenizer(FakeCharTokenizer):
    """Test fake: like SentencePiece, decoding puts a space before the text, so a cut text re-tokenizes longer."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " " + super().decode(ids)


def fake_head(ids: list[int]) -> float:
    """The fake model's raw score: number of tokens seen minus 10, plus 0.5 when the last token is '>'."""
    return len(ids) - 10 + (0.5 if ids[-1] == ord(">") else 0.0)


@dataclass
class FakeSGLang:
    """Test fake of the ``sglang`` module: ``Engine`` with ``encode`` (embedding = the raw score) and
    ``shutdown``; every engine built and every call made are recorded."""

    context_len: int = 4096
    tokenizer: Any = field(default_factory=FakeCharTokenizer)
    labels: int = 1
    engines: list[Any] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("sglang")

        class Engine:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs
                self.shut = False
                context = kwargs.get("context_length", fake.context_len)
                self.tokenizer_manager = types.SimpleNamespace(tokenizer=fake.tokenizer, context_len=context)
                fake.engines.append(self)

            def encode(self, prompt: str | list[str]) -> Any:
                fake.calls.append(prompt)
                texts = [prompt] if isinstance(prompt, str) else prompt
                out = []
                for text in texts:
                    ids = fake.tokenizer.encode(text)
                    assert len(ids) < self.tokenizer_manager.context_len, "sglang refuses over-long input"
                    out.append({"embedding": [fake_head(ids)] * fake.labels, "meta_info": {"prompt_tokens": len(ids)}})
                return out[0] if isinstance(prompt, str) else out

            def shutdown(self) -> None:
                self.shut = True

        mod.Engine = Engine  # type: ignore[attr-defined]
        return mod
