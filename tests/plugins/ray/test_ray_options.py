"""The ``executor`` section and the driver's bookkeeping, without starting Ray."""

from __future__ import annotations

import sys

import pytest
from rstar_ray.executor import Outcomes, RayExecutor, combined_snapshot, import_ray, mean_stats, search_registry
from rstar_ray.options import RayOptions

from rstar.config import check_recipe, validated_recipe
from rstar.engine import EngineSnapshot
from rstar.errors import MissingExtraError
from rstar.executors import Executor, InProcess, executor_of
from rstar.types import Node, Tree, Usage


def base(tmp_path, **keys):
    return {
        "output_dir": str(tmp_path / "run"),
        "dataset": {"name": "jsonl", "path": "x.jsonl"},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "search": {"name": "greedy"},
        **keys,
    }


def test_ray_and_local_executors(tmp_path, rstar_registry):
    recipe = validated_recipe(base(tmp_path, executor={"name": "ray", "workers": 4}), rstar_registry)
    executor = recipe.section("executor")
    assert isinstance(executor, RayExecutor) and isinstance(executor, Executor)
    assert executor.options == RayOptions(workers=4)
    assert executor_of(recipe, recipe) is executor

    local = validated_recipe(base(tmp_path, executor={"name": "local"}), rstar_registry)
    assert isinstance(local.section("executor"), InProcess) and executor_of(local, recipe) is None
    plain = validated_recipe(base(tmp_path), rstar_registry)
    assert plain.section("executor") is None and executor_of(plain, plain) is None
    assert executor_of(plain, recipe) is executor  # a search derived from the run's recipe runs where it says


@pytest.mark.parametrize(
    ("executor", "fragment"),
    [
        ({"name": "dask"}, "executor.name: 'dask' is unknown; one of: local, ray"),
        ({"workers": 2}, "executor.name: missing; one of: local, ray"),
        ("ray", "executor: expected a mapping like {name: ray, workers: 4}"),
        ({"name": "ray", "worker": 2}, "executor.worker: unknown key; allowed keys: address"),
        ({"name": "ray", "workers": 0}, "executor.workers: Input should be greater than or equal to 1"),
        ({"name": "local", "workers": 2}, "executor.workers: unknown key; this takes no options"),
    ],
)
def test_bad_executor_sections_are_reported(tmp_path, rstar_registry, executor, fragment):
    problems = check_recipe(base(tmp_path, executor=executor), rstar_registry)
    assert any(fragment in p for p in problems), problems


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[ray\]'"):
        import_ray()


def test_a_worker_gets_only_the_registrations_its_recipe_names(tmp_path, rstar_registry):
    recipe = validated_recipe(base(tmp_path, executor={"name": "ray"}), rstar_registry)
    registry = search_registry(recipe, rstar_registry)
    assert {(r.kind, r.name) for r in registry.all()} == {
        ("policy", "scripted"),
        ("verifier", "subprocess"),
        ("answer_checker", "math_verify"),
        ("search", "greedy"),
    }


def snapshot(**values):
    zero = {name: 0 for name in EngineSnapshot.__dataclass_fields__}
    return EngineSnapshot(**{**zero, "batch_fill": 0.0, "seconds": 0.0, **values})


def tree(problem_id, correct):
    root = Node("0", None, 0, "")
    leaf = Node("0.1", "0", 1, "x", terminal=True, final_answer="2", correct=correct)
    return Tree(problem_id, "q", "2", "greedy", "2", correct, Usage(), (root, leaf))


def test_progress_sums_the_workers_spend_and_counts_the_trees_received():
    workers = [
        snapshot(policy_calls=3, generated_tokens=30, policy_batches=1, batch_fill=1.0, done=9),
        snapshot(policy_calls=5, generated_tokens=50, policy_batches=3, batch_fill=0.5, done=9),
    ]
    outcomes = Outcomes()
    for t in (tree("a", True), tree("b", False)):
        outcomes.add(t)
    combined = combined_snapshot(workers, outcomes, problems=5, in_flight=2, seconds=1.5)
    assert (combined.policy_calls, combined.generated_tokens, combined.policy_batches) == (8, 80, 4)
    assert combined.batch_fill == pytest.approx((1.0 + 3 * 0.5) / 4)
    assert (combined.problems, combined.done, combined.in_flight, combined.seconds) == (5, 2, 2, 1.5)
    assert (combined.answered, combined.correct, combined.labelled, combined.nodes) == (2, 1, 2, 2)


def test_component_stats_are_averaged_over_the_workers():
    stats = mean_stats([{"policy": {"hit_rate": 0.5, "name": "x"}}, {"policy": {"hit_rate": 1.0}}, {}])
    assert stats == {"policy": {"hit_rate": 0.75}}
