"""The ``greedy`` and ``best_of_n`` strategies with the scripted policy and reward model."""

from __future__ import annotations

import asyncio

import pytest
from fakes import FakeExactChecker, FakeInProcessVerifier
from rstar_search.sampling import BestOfN, Greedy, GreedyOptions, SamplingOptions

from rstar.engine import Components, Engine
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy, ScriptedRewardModel
from rstar.types import Budget, Problem

PROBLEM = Problem("q", "What is 5 plus 3?", "8")
CODE = "<code>\n# Step 1: add\nresult = {expr}\n<end_of_step>"
PRINT = "\n# Now print the final answer\nprint(result)\n<end_of_code>"


def world(exprs):
    """A policy whose k-th first-step sample computes ``exprs[k]``; later steps print and answer."""

    def fn(prompt: str, n: int) -> list[str]:
        partial = prompt.rsplit("Question:", 1)[-1]
        if "<code>" not in partial:
            return [CODE.format(expr=e) for e in exprs[:n]]
        if "<end_of_output>" not in partial:
            return [PRINT] * n
        value = partial.split("<output>")[-1].split("<end_of_output>")[0]
        return [f"\n<answer>So \\boxed{{{value}}}.<end_of_answer>"] * n

    return fn


def search(strategy, policy_fn, samples=4, reward=None):
    components = Components(ScriptedPolicy(policy_fn), FakeInProcessVerifier(), FakeExactChecker(), reward)
    engine = Engine(components)
    return asyncio.run(engine.run([PROBLEM], strategy, StepFormat.from_options(), Budget(samples=samples)))[0]


def test_majority_vote_picks_the_most_common_answer():
    tree = search(BestOfN(SamplingOptions()), world(["5 + 3", "5 - 3", "5 + 3", "5 * 3"]))
    assert tree.prediction == "8" and tree.correct is True
    answers = [n for n in tree.nodes if n.final_answer]
    assert sorted(n.final_answer for n in answers) == ["15", "2", "8", "8"]
    assert [n.correct for n in answers if n.final_answer == "8"] == [True, True]
    assert {n.id for n in tree.nodes if n.depth == 1} == {"0.1", "0.2", "0.3", "0.4"}
    assert tree.node("0.2.1.1").final_answer == "2"  # chain 2: code step, print step, answer step


def test_ties_go_to_the_answer_seen_first():
    tree = search(BestOfN(SamplingOptions()), world(["5 - 3", "5 + 3"]), samples=2)
    assert tree.prediction == "2" and tree.correct is False


def test_reward_vote_picks_the_best_scored_solution():
    reward = ScriptedRewardModel(lambda text: 1.0 if "5 * 3" in text else 0.0)
    tree = search(BestOfN(SamplingOptions(vote="reward")), world(["5 + 3", "5 + 3", "5 * 3"]), 3, reward)
    assert tree.prediction == "15"
    assert tree.usage.reward_calls == 3
    assert max(n.value or 0 for n in tree.nodes) == 1.0


def test_weighted_vote_sums_scores_per_answer():
    scores = {"5 + 3": 0.3, "5 * 3": 0.5}
    reward = ScriptedRewardModel(lambda text: next(v for k, v in scores.items() if k in text))
    tree = search(BestOfN(SamplingOptions(vote="weighted")), world(["5 + 3", "5 + 3", "5 * 3"]), 3, reward)
    assert tree.prediction == "8"  # 2 x (1 + 0.3) / 2 = 1.3 against (1 + 0.5) / 2 = 0.75


def test_weighted_vote_never_counts_a_chain_against_its_answer():
    """PPM scores are in [-1, 1]: with raw sums, two chains at -0.2 (-0.4) would lose to one at -0.3. Mapped to
    [0, 1] they weigh 0.8 against 0.35."""
    scores = {"5 + 3": -0.2, "5 * 3": -0.3}
    reward = ScriptedRewardModel(lambda text: next(v for k, v in scores.items() if k in text))
    tree = search(BestOfN(SamplingOptions(vote="weighted")), world(["5 + 3", "5 + 3", "5 * 3"]), 3, reward)
    assert tree.prediction == "8"


def test_greedy_samples_once_at_temperature_zero():
    policy = ScriptedPolicy(world(["5 + 3"]))
    engine = Engine(Components(policy, FakeInProcessVerifier(), FakeExactChecker()))
    tree = asyncio.run(engine.run([PROBLEM], Greedy(GreedyOptions()), StepFormat.from_options(), Budget(samples=8)))[0]
    assert tree.prediction == "8" and tree.strategy == "greedy"
    assert all(r.temperature == 0 and r.n == 1 for batch in policy.calls for r in batch)


def test_erroring_code_ends_a_solution_as_too_many_code_errors():
    tree = search(BestOfN(SamplingOptions()), world(["undefined_name"]), samples=1)
    leaf = tree.node("0.1")
    assert leaf.terminal and leaf.final_answer == "too many code errors"
    assert leaf.text.endswith(
        "<end_of_step><end_of_code>\n<output>NameError: name 'undefined_name' is not defined<end_of_output>"
    )
    assert tree.prediction is None and tree.correct is False


def test_depth_limit_gives_a_too_many_steps_leaf():
    def forever(prompt: str, n: int) -> list[str]:
        return ["\nx = 1\n<end_of_step>"] * n

    components = Components(ScriptedPolicy(forever), FakeInProcessVerifier(), FakeExactChecker())
    budget = Budget(samples=1, max_depth=3)
    tree = asyncio.run(
        Engine(components).run([PROBLEM], BestOfN(SamplingOptions()), StepFormat.from_options(), budget)
    )[0]
    assert max(n.depth for n in tree.nodes) == 4
    assert tree.node("0.1.1.1.1").final_answer == "too many steps"


@pytest.mark.parametrize("vote", ["reward", "weighted"])
def test_reward_votes_fall_back_to_majority_without_a_reward_model(vote):
    tree = search(BestOfN(SamplingOptions(vote=vote)), world(["5 + 3", "5 - 3", "5 + 3"]), 3)
    assert tree.prediction == "8" and tree.usage.reward_calls == 0


def test_without_a_reference_answer_correctness_is_unknown():
    problem = Problem("u", "What is 5 plus 3?", None)
    engine = Engine(Components(ScriptedPolicy(world(["5 + 3"])), FakeInProcessVerifier(), FakeExactChecker()))
    strategy = BestOfN(SamplingOptions())
    tree = asyncio.run(engine.run([problem], strategy, StepFormat.from_options(), Budget(samples=1)))[0]
    assert tree.prediction == "8" and tree.correct is None
    assert all(n.correct is None for n in tree.nodes)
