"""Shared test helpers. Fakes here are named as fakes and used only where a test is about the core."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from rstar.types import CodeJob, Problem, Reference, Verdict

REPO = Path(__file__).resolve().parents[1]


class FakeInProcessVerifier:
    """Test fake: runs programs with in-process ``exec`` (unsafe; only for trusted test programs)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        self.batches.append(len(jobs))
        verdicts = []
        for job in jobs:
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(job.program, {})
                verdicts.append(Verdict("ok", buf.getvalue()))
            except Exception as exc:
                verdicts.append(Verdict("error", buf.getvalue(), f"{type(exc).__name__}: {exc}"))
        return verdicts


class FakeExactChecker:
    """Test fake: equivalence is equality of stripped strings."""

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        out = []
        for pred, ref in pairs:
            refs = ref if isinstance(ref, list) else [ref]
            out.append(any(r is not None and pred.strip() == str(r).strip() for r in refs))
        return out


def adder_problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"What is {i * 7} plus {i + 3}?", answer=str(i * 8 + 3)) for i in range(n)]


@pytest.fixture
def adder_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "adds.jsonl"
    with path.open("w") as fh:
        for p in adder_problems(6):
            fh.write(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n")
    return path
