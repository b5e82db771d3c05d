"""The ``self_consistency`` strategy: best_of_n's chains with a majority vote, no reward model."""

from __future__ import annotations

import asyncio

import pytest
from fakes import FakeExactChecker, FakeInProcessVerifier
from pydantic import ValidationError
from rstar_search.sampling import BestOfN, SamplingOptions, SelfConsistency, SelfConsistencyOptions
from test_sampling import PROBLEM, world

from rstar.engine import Components, Engine
from rstar.registry import get_registry
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy, ScriptedRewardModel
from rstar.types import Budget


def search(strategy, exprs, samples, reward=None):
    policy = ScriptedPolicy(world(exprs))
    components = Components(policy, FakeInProcessVerifier(), FakeExactChecker(), reward)
    engine = Engine(components)
    tree = asyncio.run(engine.run([PROBLEM], strategy, StepFormat.from_options(), Budget(samples=samples)))[0]
    return tree, policy


def test_majority_vote_ignores_the_reward_model():
    # 8 (twice) against 15 (scored 1.0): a reward vote would pick 15; self-consistency counts.
    reward = ScriptedRewardModel(lambda text: 1.0 if "5 * 3" in text else 0.0)
    tree, policy = search(SelfConsistency(SelfConsistencyOptions()), ["5 * 3", "5 + 3", "5 + 3"], 3, reward)
    assert tree.prediction == "8" and tree.correct is True and tree.strategy == "self_consistency"
    assert tree.usage.reward_calls == 0 and reward.calls == []
    assert all(r.temperature == 0.7 for batch in policy.calls for r in batch)
    assert policy.calls[0][0].n == 3  # N = budget.samples, the first steps in one request
    assert sum(1 for n in tree.nodes if n.final_answer is not None) == 3


def test_ties_go_to_the_group_whose_first_member_came_first():
    tree, _ = search(SelfConsistency(SelfConsistencyOptions()), ["5 * 3", "5 + 3", "5 + 3", "5 * 3"], 4)
    assert tree.prediction == "15"
    tree, _ = search(SelfConsistency(SelfConsistencyOptions()), ["5 + 3", "5 * 3", "5 * 3", "5 + 3"], 4)
    assert tree.prediction == "8"


def test_same_tree_as_best_of_n_with_a_majority_vote():
    exprs = ["5 - 3", "5 + 3", "5 * 3", "5 + 3", "4 + 4"]
    sc, _ = search(SelfConsistency(SelfConsistencyOptions(temperature=0.3)), exprs, 5)
    bon, _ = search(BestOfN(SamplingOptions(temperature=0.3, vote="majority")), exprs, 5)
    a, b = sc.to_dict(), bon.to_dict()
    for d in (a, b):
        d["usage"].pop("wall_time_s")
        d.pop("strategy")
    assert a == b and sc.prediction == "8"


def test_options_have_no_vote():
    assert "vote" not in SelfConsistencyOptions.model_fields
    with pytest.raises(ValidationError):
        SelfConsistencyOptions(vote="reward")
    strategy = get_registry().build("search", {"name": "self_consistency", "temperature": 1.0})
    assert isinstance(strategy, SelfConsistency) and strategy.options.temperature == 1.0
