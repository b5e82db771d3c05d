"""Fixtures shared by every test folder. Fakes live in ``fakes.py``, other helpers in ``helpers.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import adder_problems


@pytest.fixture
def adder_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "adds.jsonl"
    with path.open("w") as fh:
        for p in adder_problems(6):
            fh.write(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n")
    return path
