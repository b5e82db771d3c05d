"""Every shipped recipe is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from rstar.config import check_recipe, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_is_valid(path, rstar_registry):
    assert check_recipe(load_recipe(path), rstar_registry) == []


def test_there_are_recipes():
    assert RECIPES
