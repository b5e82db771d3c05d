"""``rstar compare``: the grid of cells, their caching, the bootstrap interval, the budget axis, the paired
tests against the reference cell, the output files and the command. Uses the scripted ``adder`` policy;
code runs in-process and answers are compared as strings (the fakes of conftest, registered by a test
plugin) to stay fast. The runner's tests cover the real verifier and checker. The statistics alone are in
test_compare_stats.py."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import sys

import pytest
import rstar_pipeline.compare as compare_module
import yaml
from click.testing import CliRunner
from fakes import FakeExactChecker, FakeInProcessVerifier
from rstar_pipeline.compare import (
    COLUMNS,
    CompareOptions,
    Comparison,
    bootstrap_ci,
    compare_problems,
    merge_strategy,
    plan_cells,
)

from rstar import hookimpl
from rstar.cli import cli
from rstar.errors import ConfigError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.rundir import DONE
from rstar.types import Budget, Usage


class CountingReward:
    """A reward model that scores every solution 0.5 and says it read one token per word."""

    async def score(self, items):
        return [0.5 for _ in items]

    async def score_with_tokens(self, items):
        return [(0.5, len((item.prompt + item.solution).split())) for item in items]


class FakeCachingReward(CountingReward):
    """Test fake: reads as `CountingReward` and, as if a cache held every prefix, runs one token per item through
    its network, counted in ``tokens_computed`` over its life (it serves every cell that names it)."""

    def __init__(self):
        self.tokens_computed = 0

    async def score_with_tokens(self, items):
        self.tokens_computed += len(items)
        return await super().score_with_tokens(items)


class FakeSleepingVerifier(FakeInProcessVerifier):
    """Test fake: runs programs as `FakeInProcessVerifier` after sleeping 20 ms per batch, so that a cell's
    verifier time is measurable."""

    async def run(self, jobs):
        await asyncio.sleep(0.02)
        return await super().run(jobs)


class Fakes:
    """Registers conftest's in-process verifier as ``inprocess`` (and `FakeSleepingVerifier` as ``sleeping``),
    its exact-match checker as ``exact``, `CountingReward` as ``counting`` and `FakeCachingReward` as
    ``caching``."""

    @hookimpl
    def register_verifiers(self, register):
        register("inprocess", lambda options: FakeInProcessVerifier())
        register("sleeping", lambda options: FakeSleepingVerifier())

    @hookimpl
    def register_answer_checkers(self, register):
        register("exact", lambda options: FakeExactChecker())

    @hookimpl
    def register_reward_models(self, register):
        register("counting", lambda options: CountingReward())
        register("caching", lambda options: FakeCachingReward())


DRAW = compare_module.plot


@pytest.fixture(autouse=True)
def no_plot(monkeypatch):
    """Drawing costs a second or two per run; only the plot test draws."""
    monkeypatch.setattr(compare_module, "plot", lambda rows, path, *args, **kwargs: False)


HAS_MAX_TOKENS = "max_tokens" in {f.name for f in dataclasses.fields(Budget)}
needs_max_tokens = pytest.mark.skipif(
    not HAS_MAX_TOKENS, reason="depends on rstar.types.Budget.max_tokens (the tokens axis sets it)"
)
"""The tokens axis sets ``budget.max_tokens``, a field of `rstar.types.Budget` added with issue 19."""


@pytest.fixture
def recipe(tmp_path, adder_jsonl):
    return {
        "output_dir": str(tmp_path / "cmp"),
        "seed": 1,
        "dataset": {"name": "jsonl", "path": str(adder_jsonl)},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "inprocess"},
        "answer_checker": {"name": "exact"},
        "search": {"name": "best_of_n", "vote": "majority"},
        "budget": {"samples": 2, "max_depth": 4},
        "compare": {
            "budgets": [3, 1],
            "strategies": {
                "greedy": {"search": {"name": "greedy"}, "budgets": [1]},
                "vote": {},
                "mcts": {"search": {"name": "mcts", "expand_samples": 2}},
            },
            "bootstrap": 200,
        },
    }


@pytest.fixture
def pm():
    return make_plugin_manager([("fakes", Fakes())])


@pytest.fixture
def registry(pm):
    return Registry.from_plugin_manager(pm)


def run(recipe, registry, pm):
    events = []
    result = Comparison(recipe, registry, pm, progress=lambda e, p: events.append((e, p))).run()
    cells = [(p["label"], p["budget"], p["status"]) for e, p in events if e == "cell"]
    return result, cells


def test_the_grid_has_one_row_per_cell_with_its_budgets(recipe, registry, pm, tmp_path):
    result, cells = run(recipe, registry, pm)
    assert [(r["strategy"], r["budget"]) for r in result.rows] == [
        ("greedy", 1),
        ("vote", 1),
        ("vote", 3),
        ("mcts", 1),
        ("mcts", 3),
    ]
    assert [c[2] for c in cells] == ["computed"] * 5
    assert [r["search"] for r in result.rows] == ["greedy", "best_of_n", "best_of_n", "mcts", "mcts"]
    for row in result.rows:
        folder = tmp_path / "cmp" / "cells" / row["strategy"] / f"samples_{row['budget']}"
        assert (folder / "search" / DONE).exists()
        stored = yaml.safe_load((folder / "config.yaml").read_text())
        assert stored["budget"] == {"samples": row["budget"], "max_depth": 4}
        assert row["problems"] == 6
        assert row["accuracy"] == row["correct"] / 6
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    # best_of_n with 3 chains makes 3 first-step samples in one request, then one request per step and chain:
    # the adder's solutions take three steps, so 1 + 2 * 3 = 7 policy calls per problem.
    vote3 = next(r for r in result.rows if (r["strategy"], r["budget"]) == ("vote", 3))
    assert vote3["policy_calls"] == 6 * 7
    greedy = result.rows[0]
    # Greedy: one chain of three steps. The adder slips on some seeds whatever the temperature.
    assert greedy["policy_calls"] == 6 * 3 and greedy["correct"] == 4
    # mcts's options replaced best_of_n's section: no 'vote' key leaked into it.
    mcts_config = yaml.safe_load((tmp_path / "cmp" / "cells" / "mcts" / "samples_1" / "config.yaml").read_text())
    assert mcts_config["search"] == {"name": "mcts", "expand_samples": 2}


def test_a_second_run_searches_nothing(recipe, registry, pm, monkeypatch):
    first, _ = run(recipe, registry, pm)

    def no_search(*args, **kwargs):
        raise AssertionError("a cached cell was searched again")

    monkeypatch.setattr(compare_module, "Runner", no_search)
    second, cells = run(recipe, registry, pm)
    assert [c[2] for c in cells] == ["reused"] * 5
    assert all(r["verifier_busy_s"] is not None for r in second.rows)  # read back from each cell's engine.json
    strip = [{k: v for k, v in r.items() if k != "status"} for r in second.rows]
    assert strip == [{k: v for k, v in r.items() if k != "status"} for r in first.rows]


def test_cells_run_on_the_recipes_executor_and_are_reused_when_only_it_changes(recipe, registry, pm):
    recipe["executor"] = {"name": "local"}
    _, cells = plan_cells(recipe, registry)
    assert all(cell.recipe["executor"] == {"name": "local"} for cell in cells)
    run(recipe, registry, pm)
    del recipe["executor"]  # where the cells run does not change their trees
    _, statuses = run(recipe, registry, pm)
    assert [c[2] for c in statuses] == ["reused"] * 5


def test_changing_one_strategy_recomputes_only_its_cells(recipe, registry, pm):
    run(recipe, registry, pm)
    recipe["compare"]["strategies"]["mcts"]["search"]["c"] = 1.0
    _, cells = run(recipe, registry, pm)
    assert cells == [
        ("greedy", 1, "reused"),
        ("vote", 1, "reused"),
        ("vote", 3, "reused"),
        ("mcts", 1, "recomputed"),
        ("mcts", 3, "recomputed"),
    ]


def test_adding_a_budget_computes_only_the_new_cells(recipe, registry, pm):
    run(recipe, registry, pm)
    recipe["compare"]["budgets"] = [1, 2, 3]
    result, cells = run(recipe, registry, pm)
    assert [c for c in cells if c[2] != "reused"] == [("vote", 2, "computed"), ("mcts", 2, "computed")]
    assert len(result.rows) == 7


def test_an_interrupted_cell_resumes(recipe, registry, pm, tmp_path):
    run(recipe, registry, pm)
    stage = tmp_path / "cmp" / "cells" / "vote" / "samples_3" / "search"
    lines = (stage / "trees.jsonl").read_text().splitlines(keepends=True)
    (stage / DONE).unlink()
    (stage / "trees.jsonl").write_text("".join(lines[:4]))
    result, cells = run(recipe, registry, pm)
    assert ("vote", 3, "resumed") in cells
    assert next(r for r in result.rows if (r["strategy"], r["budget"]) == ("vote", 3))["problems"] == 6


def test_output_files(recipe, registry, pm, tmp_path):
    result, _ = run(recipe, registry, pm)
    out = tmp_path / "cmp"
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["strategy"], r["budget"]) for r in rows] == [(r["strategy"], str(r["budget"])) for r in result.rows]
    first = result.rows[0]
    assert rows[0]["correct"] == "4" and float(rows[0]["accuracy"]) == pytest.approx(4 / 6)
    assert (float(rows[0]["ci_low"]), float(rows[0]["ci_high"])) == (first["ci_low"], first["ci_high"])
    assert rows[0]["tokens_per_problem"] == str(first["tokens_per_problem"]) != "0.0"
    report = json.loads((out / "compare.json").read_text())
    assert report["bootstrap"] == 200 and report["confidence"] == 0.95
    assert (report["axis"], report["budget_key"], report["reference"]) == ("samples", "samples", "greedy@1")
    assert [r["strategy"] for r in report["rows"]] == ["greedy", "vote", "vote", "mcts", "mcts"]
    assert report["rows"][0]["status"] == "computed"
    md = (out / "compare.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert table[0].startswith("| strategy | search | budget | problems | accuracy | 95% CI |")
    assert len(table) == 2 + 5
    ci = f"[{first['ci_low']:.1%}, {first['ci_high']:.1%}]"
    assert table[2].startswith(f"| greedy | greedy | 1 | 6 | 66.7% | {ci} | {first['generated_tokens']} |")
    assert result.files["csv"] == out / "compare.csv"


def test_every_row_states_its_spend_in_every_unit(recipe, registry, pm, tmp_path):
    result, _ = run(recipe, registry, pm)
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "compare.csv").read_text())))
    for row, stored, line in zip(result.rows, report["rows"], rows, strict=True):
        spend = ("prompt_tokens", "reward_tokens", "reward_calls", "verifier_jobs", "seconds", "seconds_per_problem")
        assert set(spend) <= set(row) and set(spend) <= set(stored) and set(spend) <= set(line)
        assert row["samples"] == row["budget"] and row["max_tokens"] is None and line["max_tokens"] == ""
        assert row["prompt_tokens"] > 0  # every policy call sends a prompt
        assert row["reward_tokens"] == 0 == row["reward_calls"]  # no reward model in this recipe
        assert row["seconds_per_problem"] == pytest.approx(row["seconds"] / 6, abs=1e-3)
    greedy, vote3 = result.rows[0], result.rows[2]
    assert vote3["prompt_tokens"] > greedy["prompt_tokens"]  # 7 policy calls per problem against 3
    md = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("|"))
    for column in ("prompt tokens", "policy calls", "PPM tokens", "reward calls", "verifier jobs", "s/problem"):
        assert f"| {column} |" in header


@pytest.mark.skipif(
    "reward_tokens" not in {f.name for f in dataclasses.fields(Usage)},
    reason="depends on rstar.types.Usage.reward_tokens and the engine counting a reward model's tokens",
)
def test_the_reward_models_tokens_reach_the_row(recipe, registry, pm):
    recipe["compare"]["strategies"] = {"ranked": {"search": {"vote": "reward"}, "reward_model": {"name": "counting"}}}
    recipe["compare"]["budgets"] = [2]
    result, _ = run(recipe, registry, pm)
    (row,) = result.rows
    assert row["reward_calls"] > 0 and row["reward_tokens"] > row["reward_calls"]
    # A reward model without a tokens_computed counter computes every token it reads.
    assert row["reward_tokens_computed"] == row["reward_tokens"]
    assert row["reward_share"] > 0 and row["reward_busy_s"] is not None


# --- the verifier's and the reward model's share of the wall time -------------------------------------------


def test_every_row_states_the_verifier_and_reward_models_share_of_its_seconds(recipe, registry, pm, tmp_path):
    recipe["verifier"] = {"name": "sleeping"}
    del recipe["compare"]["strategies"]["mcts"]
    result, _ = run(recipe, registry, pm)
    out = tmp_path / "cmp"
    report = json.loads((out / "compare.json").read_text())
    lines = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    for row, stored, line in zip(result.rows, report["rows"], lines, strict=True):
        keys = ("verifier_busy_s", "verifier_share", "reward_busy_s", "reward_share", "reward_tokens_computed")
        assert all(stored[k] == row[k] for k in keys) and all(line[k] != "" for k in keys)
        # Every batch sleeps 20 ms; the policy and the checker take little time beside it.
        assert 0.02 <= row["verifier_busy_s"] <= row["seconds"] + 0.01 and 0.2 < row["verifier_share"] <= 1.1
        assert row["verifier_share"] == pytest.approx(
            row["verifier_busy_s"] / row["seconds"], abs=0.001 / row["seconds"]
        )
        assert (row["reward_busy_s"], row["reward_share"], row["reward_tokens_computed"]) == (0.0, 0.0, 0)
        engine = json.loads((out / "cells" / row["strategy"] / f"samples_{row['budget']}" / "engine.json").read_text())
        assert engine["verifier_busy_s"] == pytest.approx(row["verifier_busy_s"], abs=0.0005)
    md = (out / "compare.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("|"))
    assert "| PPM tokens | PPM computed | reward calls |" in header
    assert header.endswith("| seconds | s/problem | verifier time | PPM time |")
    first = next(line for line in md if line.startswith("| greedy |"))
    assert first.endswith(f"| {result.rows[0]['verifier_share']:.0%} | 0% |")


def test_ppm_tokens_computed_are_each_cells_own_against_the_tokens_read(recipe, registry, pm):
    recipe["compare"]["strategies"] = {"cached": {"search": {"vote": "reward"}, "reward_model": {"name": "caching"}}}
    recipe["compare"]["budgets"] = [1, 2]
    result, _ = run(recipe, registry, pm)
    for row in result.rows:
        # One token computed per item scored, counted from where the shared model's counter stood at the cell's start.
        assert 0 < row["reward_tokens_computed"] == row["reward_calls"] < row["reward_tokens"]


def test_cells_searched_before_the_engine_counters_were_kept_still_load(recipe, registry, pm, tmp_path):
    first, _ = run(recipe, registry, pm)
    for path in (tmp_path / "cmp" / "cells").glob("*/*/engine.json"):
        path.unlink()
    second, cells = run(recipe, registry, pm)
    assert [c[2] for c in cells] == ["reused"] * 5
    keys = ("verifier_busy_s", "verifier_share", "reward_busy_s", "reward_share", "reward_tokens_computed")
    for old, new in zip(first.rows, second.rows, strict=True):
        assert all(new[k] is None for k in keys)
        assert {k: v for k, v in new.items() if k not in (*keys, "status")} == {
            k: v for k, v in old.items() if k not in (*keys, "status")
        }
    table = [line for line in (tmp_path / "cmp" / "compare.md").read_text().splitlines() if line.startswith("| greedy")]
    assert table[0].endswith("| n/a | n/a |")
    # Rows of an older compare.json, without the new keys, render too.
    old_rows = [{k: v for k, v in r.items() if k not in keys} for r in first.rows]
    text = compare_module.markdown_table(old_rows, CompareOptions.model_validate(recipe["compare"]))
    assert text.count("| n/a | n/a |") == 5
    first_line = next(csv.DictReader(io.StringIO(compare_module.csv_text(old_rows))))
    assert first_line["verifier_share"] == ""


def test_a_resumed_cell_has_no_ppm_tokens_computed_when_its_engine_read_only_part_of_them():
    engine = {"reward_tokens": 40, "reward_tokens_computed": 10, "verifier_busy_s": 1.0, "reward_busy_s": 0.5}
    whole = compare_module.engine_columns(engine, 4.0, reward_tokens=40)
    assert whole == {
        "reward_tokens_computed": 10,
        "verifier_busy_s": 1.0,
        "verifier_share": 0.25,
        "reward_busy_s": 0.5,
        "reward_share": 0.125,
    }
    resumed = compare_module.engine_columns(engine, 4.0, reward_tokens=100)  # earlier trees read 60 more
    assert resumed["reward_tokens_computed"] is None and resumed["verifier_share"] == 0.25
    assert compare_module.engine_columns(engine, 0.0, reward_tokens=40)["verifier_share"] is None


def test_each_cell_is_paired_with_the_first_cell(recipe, registry, pm, tmp_path):
    result, _ = run(recipe, registry, pm)
    assert [p["cell"] for p in result.paired] == ["vote@1", "vote@3", "mcts@1", "mcts@3"]
    assert {p["reference"] for p in result.paired} == {"greedy@1"}
    rows = {f"{r['strategy']}@{r['budget']}": r for r in result.rows}
    for test in result.paired:
        # Every cell searched the same six problems, so the paired accuracies are the rows' accuracies.
        assert test["problems"] == 6
        assert test["accuracy"] == rows[test["cell"]]["accuracy"]
        assert test["reference_accuracy"] == rows["greedy@1"]["accuracy"]
        assert test["difference"] == pytest.approx(test["accuracy"] - test["reference_accuracy"])
        changed = test["only_cell_correct"] - test["only_reference_correct"]
        assert test["difference"] == pytest.approx(changed / 6)
        assert test["ci_low"] <= test["difference"] <= test["ci_high"]
        assert 0 < test["p_value"] <= 1
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["paired"] == result.paired
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## Paired against greedy@1" in md
    for line in result.footer:
        assert f"- {line}" in md
    assert result.footer[0].startswith("vote@1 vs greedy@1: ") and "McNemar p " in result.footer[0]


def test_the_reference_option_picks_the_cell_the_others_are_paired_with(recipe, registry, pm):
    recipe["compare"]["reference"] = "vote@3"
    result, _ = run(recipe, registry, pm)
    assert [p["cell"] for p in result.paired] == ["greedy@1", "vote@1", "mcts@1", "mcts@3"]
    assert {p["reference"] for p in result.paired} == {"vote@3"}


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("mctz", "compare.reference: 'mctz' is not a strategy label; the labels are greedy, vote, mcts"),
        ("mcts@2", "compare.reference: mcts has no budget '2'; its budgets are 1, 3"),
        ("mcts@x", "compare.reference: mcts has no budget 'x'"),
    ],
)
def test_a_reference_that_names_no_cell_is_a_recipe_problem(recipe, registry, reference, problem):
    recipe["compare"]["reference"] = reference
    problems = compare_problems(recipe, registry)
    assert len(problems) == 1 and problems[0].startswith(problem)


# --- the budget axis ---------------------------------------------------------------------------------


def test_the_samples_axis_is_the_default_and_writes_samples_folders(recipe, registry):
    options, cells = plan_cells(recipe, registry)
    assert options.axis == "samples"
    assert [c.folder.name for c in cells] == ["samples_1", "samples_1", "samples_3", "samples_1", "samples_3"]
    assert all(c.recipe["budget"]["samples"] == c.budget and "max_tokens" not in c.recipe["budget"] for c in cells)


@needs_max_tokens
def test_the_tokens_axis_sets_max_tokens_and_keeps_each_strategys_samples(recipe, registry, tmp_path):
    recipe["compare"] = {
        "axis": "tokens",
        "budgets": [256, 64],
        "strategies": {"greedy": {"search": {"name": "greedy"}}, "vote": {"budget": {"samples": 8}}},
    }
    options, cells = plan_cells(recipe, registry)
    assert options.axis == "tokens"
    assert [(c.name, c.folder.name) for c in cells] == [
        ("greedy@64", "tokens_64"),
        ("greedy@256", "tokens_256"),
        ("vote@64", "tokens_64"),
        ("vote@256", "tokens_256"),
    ]
    assert cells[0].folder == tmp_path / "cmp" / "cells" / "greedy" / "tokens_64"
    assert [c.recipe["budget"] for c in cells] == [
        {"samples": 2, "max_depth": 4, "max_tokens": 64},
        {"samples": 2, "max_depth": 4, "max_tokens": 256},
        {"samples": 8, "max_depth": 4, "max_tokens": 64},
        {"samples": 8, "max_depth": 4, "max_tokens": 256},
    ]
    assert [c.validated.options.budget.max_tokens for c in cells] == [64, 256, 64, 256]


@needs_max_tokens
def test_a_tokens_grid_runs_and_states_its_axis(recipe, registry, pm, tmp_path):
    recipe["compare"] = {"axis": "tokens", "budgets": [64, 4096], "strategies": {"vote": {}}, "bootstrap": 50}
    events = []
    result = Comparison(recipe, registry, pm, progress=lambda e, p: events.append((e, p))).run()
    assert [(p["budget_key"], p["budget"]) for e, p in events if e == "cell"] == [
        ("max_tokens", 64),
        ("max_tokens", 4096),
    ]
    assert [(r["budget"], r["samples"], r["max_tokens"]) for r in result.rows] == [(64, 2, 64), (4096, 2, 4096)]
    stored = yaml.safe_load((tmp_path / "cmp" / "cells" / "vote" / "tokens_64" / "config.yaml").read_text())
    assert stored["budget"]["max_tokens"] == 64
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert (report["axis"], report["budget_key"]) == ("tokens", "max_tokens")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| strategy | search | budget | samples | problems |" in md and "budget.max_tokens" in md


@needs_max_tokens
def test_on_the_tokens_axis_a_strategy_may_set_samples_but_not_max_tokens(recipe, registry):
    recipe["compare"] = {
        "axis": "tokens",
        "budgets": [64],
        "strategies": {"a": {"budget": {"samples": 16}}, "b": {"budget": {"max_tokens": 8}}},
    }
    problems = compare_problems(recipe, registry)
    assert [
        p for p in problems if p.startswith("compare.strategies.b.budget.max_tokens: set by the grid (axis: tokens)")
    ]
    assert not [p for p in problems if p.startswith("compare.strategies.a")]


@pytest.mark.slow
def test_plot_is_a_png_when_matplotlib_is_present(recipe, registry, pm, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(compare_module, "plot", DRAW)
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    result, _ = run(recipe, registry, pm)
    png = tmp_path / "cmp" / "compare.png"
    assert result.files["plot"] == png and result.plot_note is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two panels side by side: accuracy against tokens and against wall time, one line per strategy on each.
    tokens, seconds = figures[0].axes
    assert "tokens per problem" in tokens.get_xlabel() and "seconds per problem" in seconds.get_xlabel()
    assert (tokens.get_xscale(), seconds.get_xscale()) == ("log", "log")
    assert len(tokens.lines) > 0 and [t.get_text() for t in tokens.get_legend().get_texts()] == [
        "greedy",
        "vote",
        "mcts",
    ]
    budgets = sorted(t.get_text() for t in tokens.texts)
    assert budgets == ["1", "1", "1", "3", "3"]


def test_without_matplotlib_the_tables_are_written_and_the_fix_named(recipe, registry, pm, tmp_path):
    result, _ = run(recipe, registry, pm)
    assert "plot" not in result.files and (tmp_path / "cmp" / "compare.csv").exists()
    assert "pip install 'rstar[plot]'" in result.plot_note


# --- the bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_and_bounded():
    outcomes = [True] * 7 + [False] * 13
    a = bootstrap_ci(outcomes, 500, 0.95, seed=3)
    assert a == bootstrap_ci(list(reversed(outcomes)), 500, 0.95, seed=3)
    assert a is not None
    low, high = a
    assert 0.0 <= low < 0.35 < high <= 1.0
    # The binomial standard error is sqrt(.35 * .65 / 20) = 0.107: the 95% interval spans about +-0.21.
    assert 0.1 <= low <= 0.2 and 0.5 <= high <= 0.6


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([True] * 5, 100) == (1.0, 1.0)
    assert bootstrap_ci([False] * 5, 100) == (0.0, 0.0)
    assert bootstrap_ci([], 100) is None
    assert bootstrap_ci([True, False], 0) is None


def test_a_wider_confidence_gives_a_wider_interval():
    outcomes = [True, False, True, True, False, False, True, False, True, True]
    narrow = bootstrap_ci(outcomes, 1000, 0.5, seed=0)
    wide = bootstrap_ci(outcomes, 1000, 0.99, seed=0)
    assert narrow is not None and wide is not None
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]


# --- merging and validation --------------------------------------------------------------------------


def test_merge_replaces_a_renamed_component_and_merges_the_same_one():
    base = {"search": {"name": "best_of_n", "vote": "majority", "temperature": 0.7}, "reward_model": {"name": "x"}}
    assert merge_strategy(base, {"search": {"name": "mcts"}})["search"] == {"name": "mcts"}
    assert merge_strategy(base, {"search": {"temperature": 0.0}})["search"] == {
        "name": "best_of_n",
        "vote": "majority",
        "temperature": 0.0,
    }
    assert merge_strategy(base, {"reward_model": None})["reward_model"] is None
    assert merge_strategy(base, {"budgets": [1]}) == base
    assert "compare" not in merge_strategy({**base, "compare": {"budgets": [1]}}, {})


def test_invalid_sections_report_every_problem_with_its_key_path(recipe, registry):
    recipe["compare"] = {
        "budgets": [0, 2],
        "strategies": {
            "mcts": {"search": {"name": "mcts", "widht": 3}},
            "bad label": {},
            "vote": {"budgets": [], "output_dir": "x", "budget": {"samples": 3}},
        },
        "confidence": 1.5,
        "boostrap": 10,
    }
    recipe["dataset"]["limt"] = 3
    problems = compare_problems(recipe, registry)
    text = "\n".join(problems)
    assert "compare.budgets.0: " in text
    assert "compare.confidence: " in text
    assert "compare.boostrap: unknown key" in text and "did you mean 'bootstrap'" in text
    assert any(p.startswith("compare.strategies.mcts.search.widht: unknown key") for p in problems)
    assert "compare.strategies.bad label: a label names a folder" in text
    assert "compare.strategies.vote.budgets: " in text
    assert "compare.strategies.vote.output_dir: " in text
    assert "compare.strategies.vote.budget.samples: set by the grid" in text
    # A problem of the base recipe is reported once, not once per strategy.
    assert [p for p in problems if p.startswith("dataset.limt")] == [problems[0]]
    with pytest.raises(ConfigError) as info:
        plan_cells(recipe, registry)
    assert len(info.value.problems) == len(problems) >= 9


def test_a_recipe_without_a_compare_section_says_how_to_add_one(recipe, registry):
    del recipe["compare"]
    assert [p for p in compare_problems(recipe, registry) if p.startswith("compare: required section is missing")]


def test_compare_options_defaults():
    options = CompareOptions.model_validate({"strategies": {"a": {}}})
    assert (options.budgets, options.bootstrap, options.confidence, options.seed) == ([1, 2, 4], 1000, 0.95, 0)


# --- the command -------------------------------------------------------------------------------------


@pytest.fixture
def command_with_fakes(monkeypatch, registry, pm):
    """The command, with the registry and plugin manager that know the fakes."""
    import rstar.plugins
    import rstar.registry

    monkeypatch.setattr(rstar.registry, "get_registry", lambda: registry)
    monkeypatch.setattr(rstar.plugins, "get_plugin_manager", lambda: pm)
    return lambda *args: CliRunner().invoke(cli, ["compare", *args])


def test_the_command_prints_the_table_and_the_files(recipe, tmp_path, command_with_fakes):
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = command_with_fakes(str(path), "compare.budgets=[1]")
    assert result.exit_code == 0, result.output
    assert "vote" in result.output and "mcts" in result.output and "comparison" in result.output
    assert "compare.csv" in result.output
    assert "vote, samples=1" in result.output  # the budget key each cell sets
    assert "mcts@1 vs greedy@1: " in result.output and "McNemar p" in result.output  # the paired footer
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"][-1]["budget"] == 1
    again = command_with_fakes(str(path), "compare.budgets=[1]")
    assert again.exit_code == 0 and "reused" in again.output


def test_the_command_reports_recipe_problems(recipe, tmp_path, command_with_fakes):
    recipe["compare"]["strategies"]["mcts"]["search"]["widht"] = 3
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = command_with_fakes(str(path))
    assert result.exit_code != 0
    assert "compare.strategies.mcts.search.widht" in str(result.exception)


def test_plot_says_false_when_matplotlib_cannot_be_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert DRAW([], tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()
