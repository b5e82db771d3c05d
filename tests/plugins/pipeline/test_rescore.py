"""``rstar rescore``: stored trees re-checked with another answer checker or re-scored with another reward model,
generating nothing, written next to the originals. Searches use the scripted ``adder`` policy with the fakes of
tests/fakes (code run in-process, answers compared as strings), registered by a test plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import FakeExactChecker, FakeInProcessVerifier
from helpers import adder_recipe
from pydantic import Field
from rstar_pipeline.compare import Comparison
from rstar_pipeline.rescore import find_targets, rescore_all, rescoring

from rstar import hookimpl
from rstar.cli import cli
from rstar.errors import ConfigError
from rstar.options import Options
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.rundir import DONE, mark_done, read_trees
from rstar.runner import Runner
from rstar.steps import SENTINELS


class NeverChecker:
    """Says no answer is ever right."""

    async def check(self, pairs):
        return [False for _ in pairs]


def slip_score(text: str) -> float:
    """Prefers the adder's slips (``a - b``): 0.9 for a solution that subtracts, else shorter is better. (It reads
    the solution only: the few-shot prompt subtracts too.)"""
    return 0.9 if " - " in text else 0.5 - len(text) / 10_000


class SlipReward:
    """A reward model scoring with `slip_score`; it counts its calls."""

    calls = 0

    async def score(self, items):
        SlipReward.calls += len(items)
        return [slip_score(item.solution) for item in items]


class ModelOptions(Options):
    model: str = Field(description="a model folder")


class ModelReward:
    """A reward model that takes a ``model`` option (for checkpoint markers) and scores like `SlipReward`."""

    Options = ModelOptions

    def __init__(self, options: ModelOptions) -> None:
        self.model = options.model

    async def score(self, items):
        return [slip_score(item.solution) for item in items]


class Fakes:
    @hookimpl
    def register_verifiers(self, register):
        register("inprocess", lambda options: FakeInProcessVerifier())

    @hookimpl
    def register_answer_checkers(self, register):
        register("exact", lambda options: FakeExactChecker())
        register("never", lambda options: NeverChecker())

    @hookimpl
    def register_reward_models(self, register):
        register("slip", lambda options: SlipReward())
        register("checkpoint", ModelReward)


@pytest.fixture
def pm():
    return make_plugin_manager([("fakes", Fakes())])


@pytest.fixture
def registry(pm):
    return Registry.from_plugin_manager(pm)


@pytest.fixture
def recipe(tmp_path, adder_jsonl):
    return adder_recipe(
        tmp_path,
        adder_jsonl,
        verifier={"name": "inprocess"},
        answer_checker={"name": "exact"},
        search={"name": "best_of_n", "vote": "majority"},
        budget={"samples": 4, "max_depth": 4},
    )


def searched(recipe, registry, pm) -> Path:
    """The ``search/`` folder of an ``rstar search`` of ``recipe``."""
    Runner(recipe, registry, pm).search()
    return Path(recipe["output_dir"]) / "search"


def trees(folder: Path) -> list:
    return list(read_trees(folder / "trees.jsonl").values())


def is_answer(node) -> bool:
    return node.terminal and node.final_answer is not None and node.final_answer not in SENTINELS


def test_a_new_checker_rewrites_correctness_next_to_the_untouched_original(recipe, registry, pm):
    folder = searched(recipe, registry, pm)
    original = (folder / "trees.jsonl").read_bytes(), (folder / "summary.json").read_bytes()
    outcomes, skipped = rescore_all(folder.parent, rescoring(registry, "never", None, ()), registry)
    assert not skipped and [o.folder for o in outcomes] == [folder / "rescore-never"]
    assert ((folder / "trees.jsonl").read_bytes(), (folder / "summary.json").read_bytes()) == original
    out = folder / "rescore-never"
    assert (out / DONE).exists()
    before, after = trees(folder), trees(out)
    assert [t.prediction for t in after] == [t.prediction for t in before]  # no reward model: the search's choice
    assert all(t.correct is False for t in after) and any(t.correct for t in before)
    assert all(n.correct is False for t in after for n in t.nodes if is_answer(n))
    assert [[n.value for n in t.nodes] for t in after] == [[n.value for n in t.nodes] for t in before]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == 0 and summary["solved"] == 0 and summary["strategy"] == "best_of_n"
    assert summary["generated_tokens"] == json.loads(original[1])["generated_tokens"]  # the search's spend, kept
    assert summary["rescore"]["answer_checker"]["name"] == "never" and summary["rescore"]["reward_model"] is None
    assert summary["rescore"]["accuracy_before"] == json.loads(original[1])["accuracy"]


def test_a_reward_model_scores_every_node_and_repicks_the_vote(recipe, registry, pm):
    folder = searched(recipe, registry, pm)
    SlipReward.calls = 0
    plan = rescoring(registry, None, "slip", (), vote="best")
    (outcome,), _ = rescore_all(folder, plan, registry)
    after = trees(outcome.folder)
    scored = [n for t in after for n in t.nodes if n.parent is not None and not (n.terminal and not is_answer(n))]
    assert all(n.value is not None for n in scored) and SlipReward.calls == len(scored)
    assert outcome.summary["rescore"]["reward_calls"] == len(scored)
    for tree in after:
        answers = [n for n in tree.nodes if is_answer(n)]
        best = max(answers, key=lambda n: n.value)
        assert tree.prediction == best.final_answer and tree.correct == best.correct
        assert all(n.q_value == n.value for n in answers)  # best_of_n writes an answer's score as its Q
    # The scorer prefers slips, so wherever a chain slipped the prediction is now wrong.
    slipped = [t for t in after if any(" - " in n.text for n in t.nodes)]
    assert slipped and all(not t.correct for t in slipped)
    assert outcome.summary["rescore"]["vote"] == "best" and outcome.summary["rescore"]["changed_predictions"] > 0


def test_best_of_n_votes_weighted_by_default_and_picks_the_first_chain_of_the_class(recipe, registry, pm):
    folder = searched(recipe, registry, pm)
    (outcome,), _ = rescore_all(folder, rescoring(registry, None, "slip", (), answers_only=True), registry)
    assert outcome.summary["rescore"]["vote"] == "weighted"
    for tree in trees(outcome.folder):
        answers = [n for n in tree.nodes if is_answer(n)]
        totals: dict[str, float] = {}
        for n in answers:
            totals[n.final_answer.strip()] = totals.get(n.final_answer.strip(), 0.0) + n.value
        assert tree.prediction.strip() == max(totals, key=totals.__getitem__)
        assert all(n.value is None for n in tree.nodes if n.parent is not None and not is_answer(n))  # answers only


@pytest.mark.parametrize(
    "search",
    [
        {"name": "mcts", "mode": "test", "expand_samples": 2},
        {"name": "mcts", "mode": "test", "expand_samples": 2, "runs": 2, "vote": "majority"},
        {"name": "beam", "expand_samples": 2},
        {"name": "best_of_n", "vote": "reward"},
    ],
    ids=["mcts", "mcts-runs", "beam", "best_of_n-reward"],
)
def test_rescoring_with_the_search_s_own_reward_model_changes_nothing(recipe, registry, pm, search):
    """The values a strategy wrote are its reward model's scores of the same texts: scoring them again with that
    model gives the same values and the same prediction."""
    recipe = {**recipe, "search": search, "reward_model": {"name": "slip"}, "budget": {"samples": 3, "max_depth": 4}}
    folder = searched(recipe, registry, pm)
    (outcome,), _ = rescore_all(folder, rescoring(registry, None, "slip", (), answers_only=True), registry)
    before, after = trees(folder), trees(outcome.folder)
    assert [t.prediction for t in after] == [t.prediction for t in before]
    assert [t.correct for t in after] == [t.correct for t in before]
    for old, new in zip(before, after, strict=True):
        for a, b in zip(old.nodes, new.nodes, strict=True):
            if is_answer(a):
                assert b.value == pytest.approx(a.value), (search, a.id)
            assert (a.visits, a.q_value if not is_answer(a) else 0) == (b.visits, b.q_value if not is_answer(b) else 0)


def test_mcts_keeps_visits_and_q_and_picks_the_best_scored_answer(recipe, registry, pm):
    recipe = {**recipe, "search": {"name": "mcts", "expand_samples": 2}, "budget": {"samples": 3, "max_depth": 4}}
    folder = searched(recipe, registry, pm)
    (outcome,), _ = rescore_all(folder, rescoring(registry, None, "slip", ()), registry)
    for old, new in zip(trees(folder), trees(outcome.folder), strict=True):
        assert [(n.visits, n.q_value) for n in new.nodes] == [(n.visits, n.q_value) for n in old.nodes]
        leaves = [(a, b) for a, b in zip(old.nodes, new.nodes, strict=True) if b.terminal and not is_answer(b)]
        assert all(b.value == a.value for a, b in leaves)  # an invalid leaf keeps the strategy's -1
        answers = [n for n in new.nodes if is_answer(n)]
        if answers:
            assert new.prediction == max(answers, key=lambda n: n.value).final_answer


def run_recipe(recipe, tmp_path):
    return {
        **recipe,
        "output_dir": str(tmp_path / "pipeline"),
        "base_model": "adder",
        "stages": ["search", "extract", "evaluate"],
        "rounds": 2,
        "evaluate": {"runs": {"greedy": {"search": {"name": "greedy"}}}},
    }


def test_every_finished_search_of_a_run_is_rescored(recipe, registry, pm, tmp_path):
    run = run_recipe(recipe, tmp_path)
    Runner(run, registry, pm).run()
    targets, skipped = find_targets(tmp_path / "pipeline")
    found = sorted(str(t.folder.relative_to(tmp_path / "pipeline")) for t in targets)
    assert found == [
        "round_0/evaluate/greedy",
        "round_1/evaluate/greedy",
        "round_1/search",
        "round_2/evaluate/greedy",
        "round_2/search",
    ]
    assert not skipped
    assert {t.round for t in targets} == {0, 1, 2}
    outcomes, _ = rescore_all(tmp_path / "pipeline", rescoring(registry, "never", None, ()), registry)
    assert all(o.summary["accuracy"] == 0 for o in outcomes) and len(outcomes) == 5
    # A second rescoring never reads the first's trees, and replaces its own folder.
    again, _ = rescore_all(tmp_path / "pipeline", rescoring(registry, "never", None, ()), registry)
    assert len(again) == 5


def test_searches_that_are_unfinished_or_ahead_of_their_extract_are_left_out(recipe, registry, pm, tmp_path):
    run = run_recipe(recipe, tmp_path)
    Runner(run, registry, pm).run()
    root = tmp_path / "pipeline"
    (root / "round_2" / "extract" / DONE).unlink()
    (root / "round_1" / "evaluate" / "greedy" / DONE).unlink()
    targets, skipped = find_targets(root)
    reasons = {str(s.folder.relative_to(root)): s.reason for s in skipped}
    assert "round_2/search" in reasons and "extract stage has not run yet" in reasons["round_2/search"]
    assert "has not finished" in reasons["round_1/evaluate/greedy"]
    assert len(targets) == 3


def test_a_checkpoint_marker_stands_for_each_round_s_model(recipe, registry, pm, tmp_path):
    run = run_recipe(recipe, tmp_path)
    Runner(run, registry, pm).run()
    root = tmp_path / "pipeline"
    mark_done(root / "round_1" / "train_ppm", {"model": "m1"})
    plan = rescoring(registry, None, "checkpoint", ["reward_model.model=@round.ppm"])
    outcomes, skipped = rescore_all(root, plan, registry)
    models = {str(o.target.folder.relative_to(root)): o.summary["models"]["reward_model"] for o in outcomes}
    assert models == {
        "round_1/evaluate/greedy": str(root / "round_1" / "train_ppm" / "model"),
        "round_1/search": str(root / "round_1" / "train_ppm" / "model"),
    }
    reasons = {str(s.folder.relative_to(root)): s.reason for s in skipped}
    assert "round 0 has no such model" in reasons["round_0/evaluate/greedy"]
    assert "which round 2 has not trained" in reasons["round_2/search"]


def test_each_cell_of_a_comparison_is_rescored(recipe, registry, pm, tmp_path, monkeypatch):
    import rstar_pipeline.compare as compare_module

    monkeypatch.setattr(compare_module, "plot", lambda *args, **kwargs: False)
    recipe = {
        **recipe,
        "output_dir": str(tmp_path / "cmp"),
        "compare": {
            "budgets": [1, 2],
            "strategies": {"vote": {}, "mcts": {"search": {"name": "mcts", "expand_samples": 2}}},
            "bootstrap": 50,
        },
    }
    Comparison(recipe, registry, pm).run()
    outcomes, skipped = rescore_all(tmp_path / "cmp", rescoring(registry, None, "slip", ()), registry)
    assert not skipped
    assert sorted(str(o.folder.relative_to(tmp_path / "cmp")) for o in outcomes) == [
        f"cells/{label}/samples_{b}/search/rescore-slip" for label in ("mcts", "vote") for b in (1, 2)
    ]


def test_what_to_rescore_with_is_checked_all_at_once(registry):
    with pytest.raises(ConfigError) as error:
        rescoring(registry, "nope", None, ["answer_checker.x=1", "policy.model=m", "oops"])
    message = str(error.value)
    assert "'policy.model=m': expected answer_checker.KEY=VALUE" in message and "'oops'" in message
    with pytest.raises(ConfigError, match="unknown answer_checker 'nope'"):
        rescoring(registry, "nope", None, ())
    with pytest.raises(ConfigError, match="nothing to re-score with"):
        rescoring(registry, None, None, ())
    with pytest.raises(ConfigError, match="--vote picks the prediction by new scores"):
        rescoring(registry, "exact", None, (), vote="best")
    with pytest.raises(ConfigError, match="reward_model: options given without a component"):
        rescoring(registry, "exact", None, ["reward_model.model=x"])
    with pytest.raises(ConfigError, match=r"reward_model\.widht: unknown key"):
        rescoring(registry, None, "checkpoint", ["reward_model.model=m", "reward_model.widht=3"])
    assert rescoring(registry, "exact", "slip", ()).name == "slip-exact"
    assert rescoring(registry, None, "checkpoint", ["reward_model.model=@round.ppm"]).reward_model is not None


def test_a_folder_without_trees_is_an_error(tmp_path):
    from rstar.errors import RstarError

    with pytest.raises(RstarError, match=r"no trees\.jsonl in it"):
        find_targets(tmp_path)


def test_the_command_prints_before_and_after(recipe, registry, pm, monkeypatch):
    import rstar.plugins
    import rstar.registry

    monkeypatch.setattr(rstar.registry, "get_registry", lambda: registry)
    monkeypatch.setattr(rstar.plugins, "get_plugin_manager", lambda: pm)
    folder = searched(recipe, registry, pm)
    result = CliRunner().invoke(cli, ["rescore", str(folder.parent), "--reward-model", "slip", "--name", "s"])
    assert result.exit_code == 0, result.output
    assert "rescore-s" in result.output and "accuracy before" in result.output
    assert f"wrote {folder / 'rescore-s'}" in result.output
    assert (folder / "rescore-s" / "summary.json").is_file()
    bad = CliRunner().invoke(cli, ["rescore", str(folder.parent)])
    assert bad.exit_code != 0 and "nothing to re-score with" in str(bad.exception)
