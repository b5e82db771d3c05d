"""Recipes: loading, overrides, interpolation, and validation that reports every problem at once."""

from __future__ import annotations

import pytest
from helpers import REPO

from rstar.config import apply_overrides, check_recipe, load_recipe, round_config
from rstar.errors import ConfigError

BASE = {
    "output_dir": "runs/x",
    "dataset": {"name": "jsonl", "path": "data.jsonl"},
    "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
    "search": {"name": "best_of_n", "temperature": 0.5},
    "budget": {"samples": 4},
}


def test_overrides_set_nested_keys_parse_yaml_and_delete():
    data = apply_overrides(BASE, ["budget.samples=8", "search.vote=reward", "dataset.limit=3", "~search.temperature"])
    assert data["budget"]["samples"] == 8
    assert data["search"] == {"name": "best_of_n", "vote": "reward"}
    assert data["dataset"]["limit"] == 3


def test_override_adds_new_sections():
    data = apply_overrides(BASE, ["reward_model.name=scripted", "reward_model.fn=m:f"])
    assert data["reward_model"] == {"name": "scripted", "fn": "m:f"}


def test_an_override_that_is_no_yaml_is_taken_as_text():
    data = apply_overrides(BASE, ["policy.model=@round.sft", "search.name=@weird:[x"])
    assert data["policy"]["model"] == "@round.sft" and data["search"]["name"] == "@weird:[x"


def test_interpolation_is_resolved():
    data = apply_overrides({**BASE, "output_dir": "runs/${search.name}"}, [])
    assert data["output_dir"] == "runs/best_of_n"


@pytest.mark.parametrize("bad", ["nokey", "=3", "~missing.key"])
def test_bad_overrides_are_config_errors(bad):
    with pytest.raises(ConfigError):
        apply_overrides(BASE, [bad])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("output_dir: x\npolicy: {name: hf\nsearch: 1\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_recipe(path)


def test_valid_recipe_has_no_problems(rstar_registry):
    assert check_recipe(BASE, rstar_registry) == []


def test_all_problems_are_reported_at_once(rstar_registry):
    recipe = {
        **BASE,
        "max_in_flight": "many",
        "policy": {"name": "scriptd", "fn": "x:y"},
        "search": {"name": "best_of_n", "temprature": 0.5, "vote": "loudest"},
        "budget": {"samples": 0},
        "stages": ["serch"],
        "bogus_top": 1,
    }
    problems = check_recipe(recipe, rstar_registry)
    text = "\n".join(problems)
    assert "max_in_flight: Input should be a valid integer" in text
    assert "policy.name: unknown policy 'scriptd'. Did you mean 'scripted'?" in text
    assert "(plugin testing)" in text
    assert "search.temprature: unknown key" in text and "did you mean 'temperature'" in text
    assert "search.vote: Input should be 'majority', 'reward' or 'weighted'" in text
    assert "budget.samples: Input should be greater than or equal to 1" in text
    assert "stages[0]: unknown stage 'serch' (did you mean 'search'?)" in text
    assert "bogus_top: unknown key" in text
    assert len(problems) == 7


def test_missing_required_sections(rstar_registry):
    problems = check_recipe({"output_dir": "x"}, rstar_registry)
    assert {p.split(":")[0] for p in problems} == {"dataset", "policy", "search"}


def test_component_without_name(rstar_registry):
    problems = check_recipe({**BASE, "search": {"temperature": 1}}, rstar_registry)
    assert len(problems) == 1
    assert problems[0].startswith("search.name: required key is missing; one of: ")
    assert "mcts" in problems[0]


def test_per_round_overrides_are_merged_and_validated(rstar_registry):
    recipe = {**BASE, "rounds": [{}, {"search": {"temperature": 0.9}}, {"search": {"temp": 1}}]}
    assert round_config(recipe, 2)["search"] == {"name": "best_of_n", "temperature": 0.9}
    assert round_config(recipe, 1)["search"] == BASE["search"]
    problems = check_recipe(recipe, rstar_registry)
    assert len(problems) == 1 and problems[0].startswith("rounds[3].search.temp: unknown key")


def test_round_overrides_of_recipe_keys_are_validated_too(rstar_registry):
    recipe = {**BASE, "rounds": [{}, {"budget": {"sampls": 5}}, "oops"]}
    problems = check_recipe(recipe, rstar_registry)
    assert problems[0].startswith("rounds[2].budget.sampls: unknown key")
    assert problems[1].startswith("rounds[3]: expected a mapping")
    assert len(problems) == 2


def test_reward_model_none_means_no_reward_model(rstar_registry):
    assert check_recipe({**BASE, "reward_model": {"name": "none"}}, rstar_registry) == []
    assert check_recipe({**BASE, "reward_model": None}, rstar_registry) == []


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(path, monkeypatch):
    from rstar.config import load_recipe
    from rstar.registry import get_registry

    monkeypatch.chdir(path.parent.parent)  # recipes name files relative to the repository root
    assert check_recipe(load_recipe(path), get_registry()) == []
