"""The runner: run folder contents, resuming, lifecycle hooks. Uses the real subprocess verifier and
math-verify checker with the scripted ``adder`` policy."""

from __future__ import annotations

import json
import types

import pytest
from helpers import adder_recipe

from rstar import hookimpl
from rstar.errors import ConfigError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.rundir import DONE, read_trees
from rstar.runner import ComponentCache, Runner


@pytest.fixture
def recipe(tmp_path, adder_jsonl):
    return adder_recipe(tmp_path, adder_jsonl, answer_checker={"name": "math_verify"})


class Recorder:
    """A plugin that records lifecycle hook calls."""

    def __init__(self):
        self.events = []

    @hookimpl
    def run_start(self, run):
        self.events.append(("run_start", str(run.output_dir)))

    @hookimpl
    def tree_done(self, run, tree):
        self.events.append(("tree_done", tree.id))

    @hookimpl
    def stage_end(self, run, round, stage, summary):
        self.events.append(("stage_end", round, stage, summary["problems"]))

    @hookimpl
    def round_end(self, run, round, summary):
        self.events.append(("round_end", round, sorted(summary)))

    @hookimpl
    def run_end(self, run, summary):
        self.events.append(("run_end", summary["status"]))


def make_runner(recipe, *plugins):
    pm = make_plugin_manager([(f"extra{i}", p) for i, p in enumerate(plugins)])
    return Runner(recipe, Registry.from_plugin_manager(pm), pm)


def test_search_writes_trees_summary_config_and_versions(recipe, tmp_path):
    recorder = Recorder()
    result = make_runner(recipe, recorder).search()
    run = tmp_path / "run"
    assert (run / "search" / DONE).exists()
    trees = read_trees(run / "search" / "trees.jsonl")
    assert sorted(trees) == [f"p{i}" for i in range(6)]
    assert result.summary["problems"] == 6
    assert result.summary["accuracy"] == sum(t.correct for t in trees.values()) / 6
    assert json.loads((run / "search" / "summary.json").read_text()) == result.summary
    assert "seed: 1" in (run / "config.yaml").read_text()
    versions = json.loads((run / "plugins.json").read_text())
    assert versions["sandbox"]["distribution"] == "rstar"
    environment = json.loads((run / "environment.json").read_text())  # to tell why two runs of a recipe differ
    assert environment["packages"]["pluggy"] == __import__("importlib.metadata").metadata.version("pluggy")
    assert environment["python"] == __import__("platform").python_version()
    cpu = environment["cpu"]  # what decides a CPU's floats: cores (torch's threads), vector flags, thread variables
    assert cpu["cores"] == __import__("os").cpu_count() and isinstance(cpu["thread_variables"], dict)
    if __import__("pathlib").Path("/proc/cpuinfo").exists():
        assert "vector_flags" in cpu and "model" in cpu
    names = [e[0] for e in recorder.events]
    assert names[0] == "run_start" and names[-1] == "run_end"
    assert names.count("tree_done") == 6
    assert ("stage_end", 0, "search", 6) in recorder.events


def test_tree_lines_follow_the_tree_format(recipe, tmp_path):
    make_runner(recipe).search()
    line = json.loads((tmp_path / "run" / "search" / "trees.jsonl").read_text().splitlines()[0])
    assert set(line) == {"id", "question", "answer", "strategy", "prediction", "correct", "usage", "nodes"}
    root, first = line["nodes"][0], line["nodes"][1]
    assert root["id"] == "0" and root["parent"] is None
    assert first["id"] == "0.1" and first["parent"] == "0" and first["depth"] == 1
    assert first["text"].startswith("<code>") and first["text"].endswith("<end_of_step>")
    printed = next(n for n in line["nodes"] if "<end_of_code>" in n["text"])
    assert printed["output"] is not None and printed["text"].endswith("<end_of_output>")
    assert set(first) == {
        "id",
        "parent",
        "depth",
        "text",
        "output",
        "visits",
        "q_value",
        "value",
        "terminal",
        "final_answer",
        "correct",
    }


def test_rerun_skips_a_finished_stage(recipe):
    make_runner(recipe).search()
    recorder = Recorder()
    result = make_runner(recipe, recorder).search()
    assert result.skipped
    assert not [e for e in recorder.events if e[0] == "tree_done"]


def test_resume_searches_only_missing_problems_and_repairs_a_cut_line(recipe, tmp_path):
    make_runner(recipe).search()
    stage = tmp_path / "run" / "search"
    lines = (stage / "trees.jsonl").read_text().splitlines(keepends=True)
    # Simulate a crash: the stage never finished, two trees are missing and one line is cut short.
    (stage / DONE).unlink()
    (stage / "trees.jsonl").write_text("".join(lines[:3]) + lines[3][:40])
    recorder = Recorder()
    result = make_runner(recipe, recorder).search()
    redone = sorted(e[1] for e in recorder.events if e[0] == "tree_done")
    expected = sorted(json.loads(line)["id"] for line in lines[3:])
    assert redone == expected
    assert result.summary["problems"] == 6
    assert len(read_trees(stage / "trees.jsonl")) == 6


def test_run_with_rounds_writes_one_folder_per_round(recipe, tmp_path):
    recipe["rounds"] = [{}, {"budget": {"samples": 1}}]
    recorder = Recorder()
    results = make_runner(recipe, recorder).run()
    assert [(r.round, r.name) for r in results] == [(1, "search"), (2, "search")]
    assert (tmp_path / "run" / "round_1" / "search" / DONE).exists()
    assert (tmp_path / "run" / "round_2" / "search" / DONE).exists()
    round2 = read_trees(tmp_path / "run" / "round_2" / "search" / "trees.jsonl")
    assert all(t.usage.policy_calls <= 3 for t in round2.values())
    assert [e for e in recorder.events if e[0] == "round_end"] == [
        ("round_end", 1, ["search"]),
        ("round_end", 2, ["search"]),
    ]


def test_a_changed_recipe_does_not_mix_into_an_existing_run(recipe):
    make_runner(recipe).search()
    recipe["budget"] = {"samples": 5}
    with pytest.raises(ConfigError, match=r"changed: budget.samples"):
        make_runner(recipe).search()


def test_a_run_resumes_with_other_executor_settings(recipe, tmp_path):
    """Where a search runs does not change its trees: a run folder accepts a changed `executor` (and records it),
    and still refuses any other change."""
    make_runner(recipe).search()
    recipe["executor"] = {"name": "local"}
    make_runner(recipe).search()
    assert "executor" in (tmp_path / "run" / "config.yaml").read_text()
    recipe["budget"] = {"samples": 5}
    with pytest.raises(ConfigError, match=r"changed: budget.samples"):
        make_runner(recipe).search()


def test_run_end_reports_failure(recipe):
    recipe["dataset"]["path"] = "/nonexistent.jsonl"
    recorder = Recorder()
    with pytest.raises(Exception, match="dataset file not found"):
        make_runner(recipe, recorder).search()
    assert recorder.events[-1] == ("run_end", "failed")


def test_same_results_whatever_the_number_in_flight(recipe, tmp_path):
    def predictions(in_flight, folder):
        r = {**recipe, "output_dir": str(tmp_path / folder), "max_in_flight": in_flight}
        make_runner(r).search()
        trees = read_trees(tmp_path / folder / "search" / "trees.jsonl")
        return {k: [n.to_dict() for n in t.nodes] for k, t in trees.items()}

    assert predictions(1, "a") == predictions(6, "b")


def test_plugin_objects_are_usable_as_components(recipe, make_registry):
    plugin = types.ModuleType("plugin")
    assert make_registry(plugin).names("search")


def test_a_sandbox_that_cannot_run_stops_the_search_before_the_policy_loads(recipe, monkeypatch):
    import rstar_sandbox.subprocess_verifier as sandbox

    from rstar.errors import RstarError

    monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    built = []
    build = ComponentCache.get
    monkeypatch.setattr(ComponentCache, "get", lambda self, spec: built.append(spec.kind) or build(self, spec))
    with pytest.raises(RstarError, match="apt-get install bubblewrap"):
        make_runner(recipe).search()
    assert "policy" not in built


def test_the_kernel_searches_without_the_pipeline_plugin(recipe, monkeypatch):
    """Search is the kernel's: with the bundled pipeline blocked, `rstar search` and a round of the `search`
    stage still run; a recipe listing a pipeline stage is told that no plugin registers it."""
    monkeypatch.setenv("RSTAR_BLOCK_PLUGINS", "pipeline")
    pm = make_plugin_manager()
    registry = Registry.from_plugin_manager(pm)
    assert registry.names("stage") == ["search"] and "extract" not in registry.names("section")
    result = Runner(recipe, registry, pm).search()
    assert result.summary["problems"] == 6 and result.summary["accuracy"] is not None
    assert Runner({**recipe, "output_dir": recipe["output_dir"] + "2"}, registry, pm).run()[0].summary["problems"] == 6
    with pytest.raises(ConfigError, match="unknown stage 'extract'; known stages: search"):
        Runner({**recipe, "stages": ["search", "extract"]}, registry, pm)


def test_what_components_measure_joins_the_search_summary():
    """The optional stats() of a component (a serving engine's prefix-cache hit rate) is reported by role; a
    component without it, or with nothing to say, adds nothing."""
    from rstar.engine import Components
    from rstar.runner import component_stats

    class Measured:
        def stats(self):
            return {"prefix_cache_hit_rate": 0.9}

    class Silent:
        def stats(self):
            return {}

    components = Components(policy=Measured(), verifier=object(), checker=Silent(), reward_model=Measured())
    assert component_stats(components) == {
        "policy": {"prefix_cache_hit_rate": 0.9},
        "reward_model": {"prefix_cache_hit_rate": 0.9},
    }


def test_the_search_summary_adds_up_reward_tokens():
    """``reward_tokens`` sums over the trees, next to ``reward_calls`` (what ``rstar compare`` reads)."""
    from rstar.runner import search_summary
    from rstar.types import Tree, Usage

    def tree(i: int, usage: Usage) -> Tree:
        return Tree(f"p{i}", "q", None, "mcts", None, None, usage, ())

    trees = [tree(0, Usage(reward_calls=3, reward_tokens=120)), tree(1, Usage(reward_calls=1, reward_tokens=40))]
    summary = search_summary([*trees, tree(2, Usage())], 1.0, "mcts")
    assert summary["reward_calls"] == 4 and summary["reward_tokens"] == 160


def test_a_token_cap_in_the_recipe_reaches_the_strategy(recipe, tmp_path):
    capped = make_runner({**recipe, "budget": {"samples": 3, "max_tokens": 1}}).search()
    trees = read_trees(tmp_path / "run" / "search" / "trees.jsonl")
    assert all(t.node("0").visits == 1 for t in trees.values())  # one chain each: the first wave reached the cap
    full = make_runner({**recipe, "output_dir": str(tmp_path / "full")}).search()
    assert capped.summary["generated_tokens"] < full.summary["generated_tokens"]
    assert capped.summary["reward_tokens"] == full.summary["reward_tokens"] == 0  # no reward model
