"""The batching engine: requests of concurrent searches reach components as batches, and results do
not depend on how many problems are in flight."""

from __future__ import annotations

import asyncio

from fakes import FakeExactChecker, FakeInProcessVerifier
from helpers import adder_problems
from rstar_search.sampling import BestOfN, SamplingOptions

from rstar.engine import Components, Engine, problem_seed
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy, ScriptedRewardModel
from rstar.testing.worlds import adder
from rstar.types import Budget, CodeJob, GenerationRequest, RewardRequest, Verdict


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


class FakeCountingRewardModel(ScriptedRewardModel):
    """Test fake: scores as the scripted model and reads one token per character of ``prompt + solution``."""

    async def score_with_tokens(self, items: list[RewardRequest]) -> list[tuple[float, int]]:
        scores = await self.score(items)
        return [(s, len(i.prompt + i.solution)) for s, i in zip(scores, items, strict=True)]


class FakeCachingRewardModel(FakeCountingRewardModel):
    """Test fake: reads as `FakeCountingRewardModel` and says in ``tokens_computed`` that it ran only a tenth of
    those tokens (a cache served the rest)."""

    def __init__(self, fn, tokens_computed: int = 0) -> None:
        super().__init__(fn)
        self.tokens_computed = tokens_computed

    async def score_with_tokens(self, items: list[RewardRequest]) -> list[tuple[float, int]]:
        scored = await super().score_with_tokens(items)
        self.tokens_computed += sum(tokens for _, tokens in scored) // 10
        return scored


def reward_vote_search(reward, n_problems: int = 3) -> list:
    components = Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker(), reward)
    engine = Engine(components, max_in_flight=n_problems, seed=7)
    strategy = BestOfN(SamplingOptions(vote="reward"))
    return asyncio.run(engine.run(adder_problems(n_problems), strategy, StepFormat.from_options(), Budget(samples=2)))


def test_reward_tokens_are_counted_per_problem_from_a_shared_batch():
    reward = FakeCountingRewardModel(lambda text: float(len(text)))
    trees = reward_vote_search(reward)
    assert [len(batch) for batch in reward.calls] == [6]  # the three problems' requests in one batch
    for tree, problem_items in zip(trees, (reward.calls[0][k : k + 2] for k in (0, 2, 4)), strict=True):
        assert tree.usage.reward_calls == 2
        assert tree.usage.reward_tokens == sum(len(i.prompt + i.solution) for i in problem_items)


def test_a_reward_model_that_cannot_count_reads_zero_tokens():
    counted = reward_vote_search(FakeCountingRewardModel(lambda text: float(len(text))))
    uncounted = reward_vote_search(ScriptedRewardModel(lambda text: float(len(text))))
    assert [t.usage.reward_calls for t in uncounted] == [2, 2, 2]
    assert [t.usage.reward_tokens for t in uncounted] == [0, 0, 0]
    assert [t.prediction for t in uncounted] == [t.prediction for t in counted]  # the same scores either way


def test_the_token_cap_is_reached_by_the_problem_s_own_tokens():
    from rstar.engine import ProblemContext

    engine = Engine(Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker()))
    problem = adder_problems(1)[0]
    capped = ProblemContext(engine, problem, StepFormat.from_options(), Budget(max_tokens=10))
    uncapped = ProblemContext(engine, problem, StepFormat.from_options(), Budget())
    assert not capped.token_cap_reached
    capped._spend(generated_tokens=9)
    assert not capped.token_cap_reached
    capped._spend(generated_tokens=1)
    assert capped.token_cap_reached
    uncapped._spend(generated_tokens=10**9)
    assert not uncapped.token_cap_reached


# --- busy seconds and the snapshot ------------------------------------------------------------------------


class FakeSleepingVerifier:
    """Test fake: every batch takes ``seconds`` of wall time, asleep (so that concurrent batches overlap), and
    every program passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def run(self, jobs: list[CodeJob]) -> list[Verdict]:
        await asyncio.sleep(self.seconds)
        return [Verdict("ok", "") for _ in jobs]


def test_busy_seconds_are_the_union_of_the_batches_in_flight_not_their_sum():
    verifier = FakeSleepingVerifier(0.2)
    engine = Engine(Components(ScriptedPolicy(adder), verifier, FakeExactChecker()), max_batch=1)
    busy: list[float] = []

    async def submit() -> None:
        # Two jobs with max_batch 1: two batches of 0.2 s, sent together, in flight at once.
        await engine.verifier.submit([CodeJob("print(1)"), CodeJob("print(2)")])
        busy.append(engine.verifier.stats.busy_s)
        await asyncio.sleep(0.3)  # idle: not busy
        await engine.verifier.submit([CodeJob("print(3)")])
        busy.append(engine.verifier.stats.busy_s)

    asyncio.run(submit())
    assert engine.verifier.stats.sizes == [1, 1, 1]
    assert 0.19 <= busy[0] < 0.35  # the sum would be 0.4
    assert 0.19 <= busy[1] - busy[0] < 0.35  # the idle 0.3 s are not counted
    assert engine.verifier.busy_s == engine.verifier.stats.busy_s  # nothing in flight: no open interval
    snapshot = engine.snapshot()
    assert snapshot.verifier_busy_s == busy[1]
    assert snapshot.policy_busy_s == 0.0 == snapshot.reward_busy_s  # no policy call; no reward model


def test_the_busy_seconds_of_a_batch_in_flight_count_in_the_snapshot():
    engine = Engine(Components(ScriptedPolicy(adder), FakeSleepingVerifier(0.2), FakeExactChecker()))
    seen: list[float] = []

    async def submit() -> None:
        job = asyncio.ensure_future(engine.verifier.submit([CodeJob("print(1)")]))
        await asyncio.sleep(0.1)
        seen.append(engine.snapshot().verifier_busy_s)
        await job

    asyncio.run(submit())
    assert 0.05 <= seen[0] < engine.verifier.stats.busy_s


def test_a_snapshot_reports_busy_seconds_and_the_reward_models_tokens_computed():
    reward = FakeCachingRewardModel(lambda text: float(len(text)), tokens_computed=1000)  # earlier work
    components = Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker(), reward)
    engine = Engine(components, max_in_flight=3, seed=7)
    strategy = BestOfN(SamplingOptions(vote="reward"))
    trees = asyncio.run(engine.run(adder_problems(3), strategy, StepFormat.from_options(), Budget(samples=2)))
    final = engine.snapshot()
    assert final.reward_tokens == sum(t.usage.reward_tokens for t in trees) > 0
    # The model's counter since the engine was made, not its 1000 earlier tokens.
    assert final.reward_tokens_computed == reward.tokens_computed - 1000 == final.reward_tokens // 10
    assert 0 < final.verifier_busy_s <= final.seconds and 0 < final.policy_busy_s <= final.seconds
    assert 0 < final.reward_busy_s <= final.seconds
    assert {"policy_busy_s", "verifier_busy_s", "reward_busy_s", "reward_tokens_computed"} <= set(final.to_dict())


def test_a_reward_model_without_a_counter_computes_every_token_it_reads():
    reward = FakeCountingRewardModel(lambda text: float(len(text)))
    components = Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker(), reward)
    engine = Engine(components, max_in_flight=3, seed=7)
    strategy = BestOfN(SamplingOptions(vote="reward"))
    asyncio.run(engine.run(adder_problems(3), strategy, StepFormat.from_options(), Budget(samples=2)))
    final = engine.snapshot()
    assert final.reward_tokens_computed == final.reward_tokens > 0
    without = Engine(Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker())).snapshot()
    assert (without.reward_busy_s, without.reward_tokens_computed) == (0.0, 0)
