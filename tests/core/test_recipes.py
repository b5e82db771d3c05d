"""Every shipped recipe is valid, and nothing a user reads or runs points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO

from rstar.config import check_recipe, load_recipe

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_is_valid(path, rstar_registry):
    assert check_recipe(load_recipe(path), rstar_registry) == []


def test_there_are_recipes():
    assert RECIPES


# The project's developers keep material (design notes, evaluation sets) in a `shared/` folder next to the
# repository. A user has no such folder: no recipe, doc page or test may reach for it.
OUTSIDE = re.compile(r"\.\./shared|shared/data|\.parent\s*/\s*[\"']shared[\"']")


def _recipes_docs_and_tests() -> list[Path]:
    files = [*(REPO / "recipes").rglob("*.yaml"), *(REPO / "docs").rglob("*.md"), REPO / "README.md"]
    files += (REPO / "tests").rglob("*.py")
    this = Path(__file__).resolve()  # it names the pattern
    return sorted(f for f in files if f.resolve() != this and "build" not in f.relative_to(REPO).parts)


def test_no_recipe_doc_or_test_points_outside_the_repository():
    files = _recipes_docs_and_tests()
    assert (
        REPO / "README.md" in files and REPO / "docs" / "index.md" in files and REPO / "tests" / "conftest.py" in files
    )
    found = [
        f"{path.relative_to(REPO)}:{lineno}: {line.strip()}"
        for path in files
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    hint = "the evaluation sets ship with rstar: dataset {name: benchmark, set: gsm8k}"
    assert not found, f"points outside the repository ({hint}):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("line", "outside"),
    [
        ("  path: ../shared/data/gsm8k_test.jsonl", True),
        ('SHARED_DATA = REPO.parent / "shared" / "data"', True),
        ("see /work/shared/data/rstar_format", True),
        ("the shared prefix runs once (shared_attention)", False),
        ("  name: benchmark\n  set: gsm8k", False),
    ],
)
def test_what_counts_as_outside(line, outside):
    assert bool(OUTSIDE.search(line)) is outside
