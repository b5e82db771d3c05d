"""Dataset loaders: JSONL files of ``{id, question, answer}``, the evaluation sets shipped with rstar and Hugging
Face datasets."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rstar.errors import DataError, MissingExtraError
from rstar.options import Options
from rstar.types import Problem
from rstar_data import benchmarks


class JsonlOptions(Options):
    path: str = Field(description="a .jsonl file, one problem per line")
    limit: int | None = Field(None, ge=1, description="use only the first `limit` problems (after `offset`)")
    offset: int = Field(0, ge=0, description="skip this many problems first")
    question_key: str = "question"
    answer_key: str = "answer"
    id_key: str = Field("id", description="problems without it are numbered by line")


class JsonlDataset:
    """Problems from a JSONL file. Bad lines are reported with file and line number."""

    Options = JsonlOptions

    def __init__(self, options: JsonlOptions) -> None:
        self.options = options

    def load(self) -> list[Problem]:
        o = self.options
        path = Path(o.path)
        if not path.is_file():
            raise DataError(f"dataset file not found: {path} (dataset.path; relative paths start from {Path.cwd()})")
        problems: list[Problem] = []
        seen: set[str] = set()
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                problem = to_problem(record, o.question_key, o.answer_key, o.id_key, f"{path}:{lineno}", lineno - 1)
                if problem.id in seen:
                    raise DataError(f"{path}:{lineno}: duplicate id {problem.id!r}")
                seen.add(problem.id)
                problems.append(problem)
        end = None if o.limit is None else o.offset + o.limit
        return problems[o.offset : end]


def to_problem(record: Any, question_key: str, answer_key: str, id_key: str, where: str, index: int) -> Problem:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = record.get(question_key)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: missing or empty {question_key!r} (keys: {', '.join(sorted(record))})")
    answer = record.get(answer_key)
    if answer is not None and not isinstance(answer, str | list):
        answer = str(answer)
    if isinstance(answer, list):
        answer = [str(a) for a in answer]
    meta = {k: v for k, v in record.items() if k not in (question_key, answer_key, id_key)}
    return Problem(id=str(record.get(id_key, index)), question=question, answer=answer, meta=meta)


BenchmarkSet = Literal["gsm8k", "math500", "aime2024", "amc23"]


class BenchmarkOptions(Options):
    set: BenchmarkSet = Field(
        description="which set: 'gsm8k' (GSM8K test, 1,319 problems), 'math500' (MATH-500, 500), 'aime2024' "
        "(AIME 2024, 30) or 'amc23' (AMC 2023, 40)"
    )
    limit: int | None = Field(None, ge=1, description="use only the first `limit` problems (after `offset`)")
    offset: int = Field(0, ge=0, description="skip this many problems first")


class BenchmarkDataset:
    """A standard evaluation set shipped with rstar, by name; sources and licences in ``benchmarks/NOTICE.md``."""

    Options = BenchmarkOptions

    def __init__(self, options: BenchmarkOptions) -> None:
        self.options = options

    def load(self) -> list[Problem]:
        o = self.options
        with resources.as_file(benchmarks.file(o.set)) as path:
            return JsonlDataset(JsonlOptions(path=str(path), limit=o.limit, offset=o.offset)).load()


class HubOptions(Options):
    path: str = Field(description="dataset name on the Hub, e.g. 'openai/gsm8k'")
    config: str | None = None
    split: str = "test"
    limit: int | None = Field(None, ge=1)
    offset: int = Field(0, ge=0)
    question_key: str = "question"
    answer_key: str = "answer"
    id_key: str = "id"


class HubDataset:
    """Problems from a Hugging Face dataset (needs network and ``pip install 'rstar[datasets]'``)."""

    Options = HubOptions

    def __init__(self, options: HubOptions) -> None:
        self.options = options

    def load(self) -> list[Problem]:
        try:
            import datasets
        except ImportError:
            raise MissingExtraError("dataset 'hf'", "datasets", "datasets") from None
        o = self.options
        ds = datasets.load_dataset(o.path, o.config, split=o.split)
        end = len(ds) if o.limit is None else min(len(ds), o.offset + o.limit)
        return [
            to_problem(ds[i], o.question_key, o.answer_key, o.id_key, f"{o.path}[{o.split}][{i}]", i)
            for i in range(o.offset, end)
        ]
