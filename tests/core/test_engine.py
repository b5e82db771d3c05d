"""The batching engine: requests of concurrent searches reach components as batches, and results do
not depend on how many problems are in flight."""

from __future__ import annotations

import asyncio

from fakes import FakeExactChecker, FakeInProcessVerifier
from helpers import adder_problems
from rstar_search.sampling import BestOfN, SamplingOptions

from rstar.engine import Components, Engine, problem_seed
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy
from rstar.testing.worlds import adder
from rstar.types import Budget, GenerationRequest


def run_search(max_in_flight: int, n_problems: int = 12, samples: int = 4):
    policy = ScriptedPolicy(adder)
    verifier = FakeInProcessVerifier()
    engine = Engine(Components(policy, verifier, FakeExactChecker()), max_in_flight=max_in_flight, seed=7)
    strategy = BestOfN(SamplingOptions())
    trees = asyncio.run(
        engine.run(adder_problems(n_problems), strategy, StepFormat.from_options(), Budget(samples=samples))
    )
    return trees, policy, verifier, engine


def comparable(tree):
    data = tree.to_dict()
    data["usage"].pop("wall_time_s")
    return data


def test_concurrent_searches_reach_the_policy_as_batches():
    trees, policy, verifier, engine = run_search(max_in_flight=12)
    assert len(trees) == 12
    # best-of-4 with the adder world: step 1 (one n=4 request per problem), print step, answer step.
    sizes = [len(batch) for batch in policy.calls]
    assert sizes == [12, 48, 48], sizes
    assert max(verifier.batches) == 48
    assert engine.policy.stats.mean_batch == 36
    assert engine.policy.stats.searches == [12, 12, 12] and engine.policy.stats.live == [12, 12, 12]
    assert engine.policy.stats.mean_fill == 1.0


def test_one_problem_at_a_time_gives_batches_of_one_problem():
    _, policy, _, _ = run_search(max_in_flight=1, n_problems=3)
    assert [len(b) for b in policy.calls] == [1, 4, 4] * 3


def test_results_do_not_depend_on_concurrency():
    reference = [comparable(t) for t in run_search(max_in_flight=1)[0]]
    for in_flight in (3, 12):
        assert [comparable(t) for t in run_search(max_in_flight=in_flight)[0]] == reference


def test_max_batch_splits_large_queues():
    policy = ScriptedPolicy(adder)
    engine = Engine(Components(policy, FakeInProcessVerifier(), FakeExactChecker()), max_in_flight=12, max_batch=5)
    asyncio.run(engine.run(adder_problems(12), BestOfN(SamplingOptions()), StepFormat.from_options(), Budget()))
    assert max(len(b) for b in policy.calls) <= 5
    # The first batch holds 5 of the 12 searches that are alive: a fill under 1.
    assert engine.policy.stats.searches[0] == 5 and engine.policy.stats.live[0] == 12
    assert 0 < engine.policy.stats.mean_fill < 1


def test_requests_get_seeds_from_the_problem():
    _, policy, _, _ = run_search(max_in_flight=4, n_problems=2)
    seeds = [r.seed for batch in policy.calls for r in batch]
    assert all(isinstance(s, int) for s in seeds)
    assert problem_seed(7, "p0") == problem_seed(7, "p0") != problem_seed(8, "p0")


def test_usage_is_accounted_per_problem():
    trees, _, _, _ = run_search(max_in_flight=4, n_problems=2)
    usage = trees[0].usage
    assert usage.policy_calls == 1 + 4 + 4
    assert usage.verifier_jobs == 8
    assert usage.generated_tokens > 0


def test_a_failing_component_fails_the_run_with_its_error():
    class Broken:
        async def generate(self, requests: list[GenerationRequest]):
            raise RuntimeError("engine exploded")

    engine = Engine(Components(Broken(), FakeInProcessVerifier(), FakeExactChecker()), max_in_flight=4)
    try:
        asyncio.run(engine.run(adder_problems(4), BestOfN(SamplingOptions()), StepFormat.from_options(), Budget()))
    except RuntimeError as exc:
        assert "engine exploded" in str(exc)
    else:
        raise AssertionError("expected the policy's error")


def test_a_backend_that_batches_itself_gets_requests_as_they_come():
    class EagerScriptedPolicy(ScriptedPolicy):
        batches_itself = True

    policy = EagerScriptedPolicy(adder)
    engine = Engine(Components(policy, FakeInProcessVerifier(), FakeExactChecker()), max_in_flight=12, seed=7)
    trees = asyncio.run(
        engine.run(adder_problems(12), BestOfN(SamplingOptions()), StepFormat.from_options(), Budget(samples=4))
    )
    assert max(len(b) for b in policy.calls) < 48  # no waiting for every search to block
    assert [comparable(t) for t in trees] == [comparable(t) for t in run_search(max_in_flight=12)[0]]
