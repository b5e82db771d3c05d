"""``budget.max_tokens``: every strategy starts no new unit of work (an MCTS rollout, a beam level, a wave of
chains) once the problem's generated tokens reach the cap, so it spends at most one unit more; the results stay
deterministic, and without a cap nothing changes (the other tests of this folder check that node for node)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest
from fakes import FakeExactChecker, FakeInProcessVerifier
from rstar_search.beam import Beam, BeamOptions
from rstar_search.mcts import MCTS, MCTSOptions
from rstar_search.sampling import BestOfN, Greedy, GreedyOptions, SamplingOptions, SelfConsistency
from test_mcts import random_reward, random_world
from test_sampling import world as chain_world

from rstar.engine import Components, Engine
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy, ScriptedRewardModel
from rstar.types import Budget, GenerationRequest, GenerationResult, Problem, Tree

PROBLEM = Problem("q", "What is 5 plus 3?", "8")
PROBLEMS = [Problem(f"p{i}", f"What is {i} plus 3?", "8") for i in range(4)]


class TokenRecordingPolicy(ScriptedPolicy):
    """The scripted policy, also recording the tokens it generated in each batch."""

    def __init__(self, fn) -> None:
        super().__init__(fn)
        self.spent: list[int] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = await super().generate(requests)
        self.spent.append(sum(s.num_tokens for r in results for s in r.samples))
        return results


def run(strategy, policy_fn, budget: Budget, reward=None, problems=(PROBLEM,), max_in_flight=64):
    policy = TokenRecordingPolicy(policy_fn)
    reward_model = ScriptedRewardModel(reward) if reward is not None else None
    engine = Engine(
        Components(policy, FakeInProcessVerifier(), FakeExactChecker(), reward_model), max_in_flight=max_in_flight
    )
    trees = asyncio.run(engine.run(list(problems), strategy, StepFormat.from_options(), budget))
    return trees, policy


def comparable(trees: list[Tree]) -> list[dict]:
    out = []
    for tree in trees:
        data = tree.to_dict()
        data["usage"].pop("wall_time_s")
        out.append(data)
    return out


def units_until(spent: list[int], cap: int) -> int:
    """How many units (of ``spent`` tokens each) a capped search runs: up to the first that reaches ``cap``."""
    totals = list(itertools.accumulate(spent))
    return next((k + 1 for k, total in enumerate(totals) if total >= cap), len(spent))


# --- mcts: no new rollout ------------------------------------------------------------------------------------

MCTS_OPTIONS = {"expand_samples": 3, "mode": "test"}


def mcts(budget: Budget, problems=(PROBLEM,), max_in_flight=64, **options) -> list[Tree]:
    strategy = MCTS(MCTSOptions(**{**MCTS_OPTIONS, **options}))
    return run(strategy, random_world(10), budget, random_reward, problems, max_in_flight)[0]


def test_mcts_under_a_cap_is_the_search_with_fewer_rollouts():
    rollouts = 12
    # tokens after k rollouts, uncapped
    totals = [mcts(Budget(samples=k, max_depth=4))[0].usage.generated_tokens for k in range(1, rollouts + 1)]
    per_rollout = [b - a for a, b in zip([0, *totals], totals, strict=False)]
    assert sum(1 for t in per_rollout if t > 0) >= 3  # the world keeps spending over several rollouts
    for cap in sorted({1, totals[0], totals[0] + 1, totals[2] - 1, totals[2], totals[-1] + 100}):
        [capped] = mcts(Budget(samples=rollouts, max_depth=4, max_tokens=cap))
        k = units_until(per_rollout, cap)
        [fewer] = mcts(Budget(samples=k, max_depth=4))
        assert comparable([capped])[0]["nodes"] == comparable([fewer])[0]["nodes"], cap
        spent = capped.usage.generated_tokens
        assert spent == totals[k - 1]
        assert spent >= cap or k == rollouts  # it stopped at the cap, or ran every rollout
        assert spent - per_rollout[k - 1] < cap  # the overshoot is the last rollout


def test_mcts_starts_no_further_run_once_the_cap_is_reached():
    [first] = mcts(Budget(samples=3, max_depth=4))
    cap = first.usage.generated_tokens
    [tree] = mcts(Budget(samples=3, max_depth=4, max_tokens=cap), runs=3)
    assert tree.usage.generated_tokens == cap
    assert any(n.id.startswith("0.1.") for n in tree.nodes)
    assert not any(n.id.startswith(("0.2", "0.3")) for n in tree.nodes)
    [uncapped] = mcts(Budget(samples=3, max_depth=4), runs=3)
    assert any(n.id.startswith("0.3") for n in uncapped.nodes)


def test_mcts_under_a_cap_does_not_depend_on_the_problems_in_flight():
    budget = Budget(samples=10, max_depth=4, max_tokens=60)
    one = mcts(budget, PROBLEMS, max_in_flight=1)
    four = mcts(budget, PROBLEMS, max_in_flight=4)
    assert comparable(one) == comparable(four)
    assert comparable(one) != comparable(mcts(Budget(samples=10, max_depth=4), PROBLEMS))  # the cap did cut


# --- beam: no new level ----------------------------------------------------------------------------------------


def beam(budget: Budget, problems=(PROBLEM,), max_in_flight=64):
    return run(Beam(BeamOptions()), random_world(3), budget, random_reward, problems, max_in_flight)


def test_beam_under_a_cap_stops_after_the_level_that_reached_it():
    [full], uncapped = beam(Budget(samples=3, max_depth=4))
    levels = uncapped.spent  # one policy batch per level
    assert len(levels) >= 3
    for cap in (1, levels[0], levels[0] + 1, levels[0] + levels[1], sum(levels) + 1):
        [tree], policy = beam(Budget(samples=3, max_depth=4, max_tokens=cap))
        k = units_until(levels, cap)
        assert policy.spent == levels[:k], cap  # the same levels, up to the one that reached the cap
        assert tree.usage.generated_tokens == sum(levels[:k])
        assert sum(levels[: k - 1]) < cap  # the overshoot is the last level
        assert {n.id for n in tree.nodes} == {n.id for n in full.nodes if n.depth <= k}
        answers = {n.final_answer for n in tree.nodes if n.terminal and n.value is not None}
        assert tree.prediction is None or tree.prediction in answers  # the best answer it has


def test_beam_under_a_cap_does_not_depend_on_the_problems_in_flight():
    budget = Budget(samples=3, max_depth=4, max_tokens=40)
    assert comparable(beam(budget, PROBLEMS, 1)[0]) == comparable(beam(budget, PROBLEMS, 4)[0])


# --- best_of_n and self_consistency: waves; greedy ------------------------------------------------------------

EXPRS = ["5 + 3", "5 - 3", "5 + 3", "5 * 3"]
"""Chain k computes EXPRS[k]; every chain is three policy calls (code, print, answer)."""


def sampled(strategy, budget: Budget, problems=(PROBLEM,), max_in_flight=64):
    return run(strategy, chain_world(EXPRS), budget, None, problems, max_in_flight)


def chain_tokens(policy: TokenRecordingPolicy) -> list[int]:
    """Tokens per wave of one chain, from a search that drew its chains one at a time."""
    assert len(policy.spent) % 3 == 0
    return [sum(policy.spent[i : i + 3]) for i in range(0, len(policy.spent), 3)]


def test_best_of_n_under_a_cap_draws_one_chain_at_a_time_and_stops_at_the_cap():
    [never], policy = sampled(BestOfN(SamplingOptions()), Budget(samples=4, max_tokens=10**6))
    per_chain = chain_tokens(policy)
    assert len(per_chain) == 4 and never.prediction == "8"
    assert [len(batch) for batch in policy.calls] == [1] * 12  # one chain per wave
    for cap in (1, per_chain[0], per_chain[0] + 1, sum(per_chain[:3])):
        [tree], _ = sampled(BestOfN(SamplingOptions()), Budget(samples=4, max_tokens=cap))
        k = units_until(per_chain, cap)
        assert tree.node("0").visits == k, cap  # the root counts the chains drawn
        assert {n.id.split(".")[1] for n in tree.nodes if n.depth} == {str(i) for i in range(1, k + 1)}
        assert tree.usage.generated_tokens == sum(per_chain[:k]) >= cap
        assert sum(per_chain[: k - 1]) < cap  # the overshoot is the last wave
    [two], _ = sampled(BestOfN(SamplingOptions()), Budget(samples=4, max_tokens=per_chain[0] + 1))
    assert two.prediction == "8"  # the vote is over the chains drawn: 8 and 2, the first seen wins


def test_a_larger_wave_draws_that_many_chains_together():
    [tree], policy = sampled(BestOfN(SamplingOptions(wave=3)), Budget(samples=4, max_tokens=1))
    assert [(len(batch), batch[0].n) for batch in policy.calls] == [(1, 3), (3, 1), (3, 1)]
    assert tree.node("0").visits == 3 and tree.prediction == "8"


def test_self_consistency_under_a_cap_votes_over_the_chains_drawn():
    [tree], policy = sampled(SelfConsistency(SamplingOptions(vote="majority")), Budget(samples=4, max_tokens=1))
    assert tree.node("0").visits == 1 and len(policy.calls) == 3 and tree.prediction == "8"


def test_greedy_runs_its_one_chain_whatever_the_cap():
    [uncapped], _ = sampled(Greedy(GreedyOptions()), Budget())
    [capped], _ = sampled(Greedy(GreedyOptions()), Budget(max_tokens=1))
    assert comparable([capped]) == comparable([uncapped])


@pytest.mark.parametrize("wave", [1, 2])
def test_best_of_n_under_a_cap_does_not_depend_on_the_problems_in_flight(wave: int):
    strategy = BestOfN(SamplingOptions(wave=wave))
    budget = Budget(samples=4, max_tokens=30)
    one, _ = sampled(strategy, budget, PROBLEMS, 1)
    four, _ = sampled(strategy, budget, PROBLEMS, 4)
    assert comparable(one) == comparable(four)
    assert all(t.node("0").visits < 4 for t in one)
