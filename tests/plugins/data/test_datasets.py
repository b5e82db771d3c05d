from __future__ import annotations

import importlib.util
import json
import typing
from importlib import resources

import pytest
from rstar_data import benchmarks
from rstar_data.loaders import (
    BenchmarkDataset,
    BenchmarkOptions,
    BenchmarkSet,
    HubDataset,
    HubOptions,
    JsonlDataset,
    JsonlOptions,
)

from rstar.errors import ConfigError, DataError, MissingExtraError


def test_jsonl_limit_offset_and_types(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"id": i, "question": f"q{i}", "answer": i * 2, "level": "easy"} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = JsonlDataset(JsonlOptions(path=str(path), offset=1, limit=2)).load()
    assert [(p.id, p.question, p.answer, p.meta) for p in problems] == [
        ("1", "q1", "2", {"level": "easy"}),
        ("2", "q2", "4", {"level": "easy"}),
    ]


def test_list_answers_and_missing_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "roots?", "answer": [3, -3]}) + "\n")
    (problem,) = JsonlDataset(JsonlOptions(path=str(path))).load()
    assert problem.id == "0" and problem.answer == ["3", "-3"]


def test_duplicate_ids_are_reported_with_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: duplicate id '1'"):
        JsonlDataset(JsonlOptions(path=str(path))).load()


@pytest.mark.parametrize(("name", "count"), [("gsm8k", 1319), ("math500", 500), ("aime2024", 30), ("amc23", 40)])
def test_the_bundled_evaluation_sets_load_by_name(name, count):
    problems = BenchmarkDataset(BenchmarkOptions(set=name)).load()
    assert len(problems) == count
    assert [p.id for p in problems] == [str(i) for i in range(count)]
    assert all(p.question.strip() and isinstance(p.answer, str) and p.answer.strip() for p in problems)
    assert all(p.meta == {} for p in problems)


def test_a_bundled_set_by_name_from_a_recipe_section_with_limit_and_offset():
    from rstar.registry import get_registry

    registry = get_registry()
    whole = registry.build("dataset", {"name": "benchmark", "set": "aime2024"}).load()
    part = registry.build("dataset", {"name": "benchmark", "set": "aime2024", "limit": 3, "offset": 5}).load()
    assert [p.id for p in part] == ["5", "6", "7"] and part == whole[5:8]
    assert whole[0].answer == "204"  # AIME 2024 I, problem 1
    with pytest.raises(ConfigError, match=r"dataset\.set: .*'gsm8k', 'math500', 'aime2024' or 'amc23'"):
        registry.build("dataset", {"name": "benchmark", "set": "gsm8k_test"})


def test_every_bundled_set_has_its_file_and_its_notice():
    assert tuple(benchmarks.SETS) == typing.get_args(BenchmarkSet)
    for name in benchmarks.SETS:
        assert benchmarks.file(name).is_file(), name
    notice = (resources.files(benchmarks) / "NOTICE.md").read_text(encoding="utf-8")
    for name in benchmarks.SETS:
        assert f"`{name}.jsonl`" in notice, f"NOTICE.md does not name {name}.jsonl"
    assert "MIT" in notice and "(MAA)" in notice
    with pytest.raises(KeyError, match="no bundled set 'gsm8k_test'"):
        benchmarks.file("gsm8k_test")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hub_dataset_without_the_extra_says_how_to_install_it():
    with pytest.raises(MissingExtraError, match=r"\[datasets\]"):
        HubDataset(HubOptions(path="openai/gsm8k")).load()


def test_every_bundled_dataset_takes_limit_and_offset_with_the_same_meaning(tmp_path):
    # A user who writes `limit: 8` for jsonl expects it to work for arithmetic too (it was refused).
    from rstar.registry import get_registry

    registry = get_registry()
    full = registry.build("dataset", {"name": "arithmetic", "count": 10, "seed": 3}).load()
    part = registry.build("dataset", {"name": "arithmetic", "count": 10, "seed": 3, "limit": 4, "offset": 2}).load()
    assert [p.id for p in part] == [p.id for p in full[2:6]]
    lines = tmp_path / "d.jsonl"
    lines.write_text("".join(f'{{"question": "q{i}", "answer": "{i}"}}\n' for i in range(10)))
    rows = registry.build("dataset", {"name": "jsonl", "path": str(lines), "limit": 4, "offset": 2}).load()
    assert [p.question for p in rows] == ["q2", "q3", "q4", "q5"]


def test_every_bundled_dataset_names_limit_and_offset_alike():
    from rstar.registry import get_registry

    registry = get_registry()
    for name in ("arithmetic", "benchmark", "hf", "jsonl"):
        fields = registry.get("dataset", name).options_model().model_fields
        assert {"limit", "offset"} <= set(fields), name
        assert fields["offset"].default == 0 and fields["limit"].default is None, name
