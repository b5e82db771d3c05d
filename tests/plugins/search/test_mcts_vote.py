"""Multi-run MCTS (``runs``, ``vote``, ``vote_top_n``): K independent runs, a vote over their best answers."""

from __future__ import annotations

import asyncio

import pytest
from fakes import FakeExactChecker
from rstar_search.mcts import MCTS, MCTSOptions, run_seed
from rstar_search.vote import top_n_vote
from test_mcts import ANSWER, CODE, PRINT, partial, random_reward, random_world, run, stats

from rstar.types import Budget, Problem, Tree

PROBLEM = Problem("q", "What is 5 plus 3?", "8")
RUN_EXPRS = ["5 + 3", "5 - 3", "4 + 4", "5 * 3"]  # run r's first step computes RUN_EXPRS[r]
ANSWER_SCORES = {"5 + 3": 0.5, "5 - 3": 0.9, "4 + 4": 0.35, "5 * 3": 0.3}


def one_world_per_run():
    """The k-th request at the root (runs are sequential: run k's first request) gets RUN_EXPRS[k]."""
    roots = iter(RUN_EXPRS)

    def fn(prompt: str, n: int) -> list[str]:
        tail = partial(prompt)
        if "<code>" not in tail:
            return [CODE.format(expr=next(roots))] * n
        if "<end_of_output>" not in tail:
            return [PRINT.format(var="result")] * n
        value = tail.split("<output>")[-1].split("<end_of_output>")[0]
        return [ANSWER.format(value=value)] * n

    return fn


def scored_answers(text: str) -> float:
    tail = partial(text)
    if "boxed" not in tail:
        return 0.0
    return next(v for expr, v in ANSWER_SCORES.items() if expr in tail)


def four_runs(**options) -> Tree:
    # One rollout per run goes root -> code -> print -> answer; the answer's score is its Q.
    (tree,) = run(one_world_per_run(), Budget(samples=1), scored_answers, runs=4, mode="test", **options)
    return tree


def test_tree_of_four_runs():
    tree = four_runs()
    ids = [n.id for n in tree.nodes]
    assert ids[:5] == ["0", "0.1", "0.2", "0.3", "0.4"]
    assert ids[5:9] == ["0.1.1", "0.2.1", "0.3.1", "0.4.1"]  # breadth-first across runs
    assert len(ids) == len(set(ids)) == 1 + 4 * 4
    for n in tree.nodes:
        assert n.id == "0" or (n.parent == n.id.rsplit(".", 1)[0] and n.depth == n.id.count("."))
    assert tree.node("0.2").text == "" and tree.node("0.2").depth == 1
    answer = tree.node("0.2.1.1.1")
    assert (answer.depth, answer.final_answer, answer.q_value, answer.correct) == (4, "2", 0.9, False)
    root = tree.node("0")
    assert root.visits == 4 and root.q_value == pytest.approx((0.5 + 0.9 + 0.35 + 0.3) / 4)
    assert tree.node("0.3").visits == 1 and tree.node("0.3").q_value == 0.35
    assert tree.usage.policy_calls == 12 and tree.strategy == "mcts"


@pytest.mark.parametrize(
    ("vote", "top_n", "prediction"),
    [
        # Pool (run order): 8 (0.5), 2 (0.9), 8 (0.35), 15 (0.3).
        ("best", 4, "2"),
        ("majority", 4, "8"),  # two votes
        ("weighted", 4, "2"),  # 0.9 against 0.5 + 0.35 = 0.85
        ("majority", 3, "8"),  # top 3: 8, 2, 8
        ("majority", 2, "2"),  # top 2: 8 (0.5) and 2 (0.9): one vote each, 2 has the higher sum
        ("best", 1, "2"),
        ("weighted", 1, "2"),
    ],
)
def test_pooled_votes_by_hand(vote, top_n, prediction):
    tree = four_runs(vote=vote, vote_top_n=top_n)
    assert tree.prediction == prediction and tree.correct is (prediction == "8")


def test_one_run_is_the_single_search_and_the_first_run_of_many():
    fn = random_world(11)
    options = {"expand_samples": 3, "mode": "test"}
    budget = Budget(samples=4, max_depth=4)
    (single,) = run(fn, budget, random_reward, **options)
    (explicit,) = run(fn, budget, random_reward, runs=1, vote="majority", **options)
    assert single.to_dict()["nodes"] == explicit.to_dict()["nodes"] and single.prediction == explicit.prediction
    (multi,) = run(fn, budget, random_reward, runs=3, **options)
    first = {n.id: n for n in multi.nodes if n.id == "0.1" or n.id.startswith("0.1.")}
    renamed = {"0" + node_id[3:]: n for node_id, n in first.items()}
    assert stats(single) == {k: (n.visits, round(n.q_value, 12)) for k, n in renamed.items()}
    assert [n.text for n in single.nodes] == [renamed[n.id].text for n in single.nodes]
    second = sorted(n.text for n in multi.nodes if n.id.startswith("0.2."))
    assert second != sorted(n.text for n in single.nodes if n.id != "0")  # another seed, another tree


def test_run_seeds():
    assert run_seed(123, 0) == 123
    assert len({run_seed(123, r) for r in range(10)}) == 10
    assert run_seed(123, 1) == run_seed(123, 1) != run_seed(124, 1)


def strip(trees: list[Tree]) -> list[dict]:
    out = []
    for t in trees:
        d = t.to_dict()
        d["usage"].pop("wall_time_s")
        out.append(d)
    return out


@pytest.mark.parametrize("vote", ["best", "majority", "weighted"])
def test_results_do_not_depend_on_the_number_of_problems_in_flight(vote):
    problems = [Problem(f"p{i}", f"What is {i} plus 3?", "8") for i in range(4)]
    options = {"expand_samples": 2, "mode": "test", "runs": 3, "vote": vote, "vote_top_n": 2}
    budget = Budget(samples=3, max_depth=3)
    one = run(random_world(5), budget, random_reward, problems, max_in_flight=1, **options)
    many = run(random_world(5), budget, random_reward, problems, max_in_flight=4, **options)
    assert strip(one) == strip(many)


# --- the vote on its own ------------------------------------------------------------------------------------


class _Ctx:
    async def check(self, pairs):
        return await FakeExactChecker().check(pairs)


def vote(candidates, mode, top_n=4):
    return asyncio.run(top_n_vote(_Ctx(), candidates, top_n=top_n, mode=mode))


def test_vote_ties_are_deterministic():
    assert vote([], "majority") is None
    # One vote each, equal sums: the class seen first (the original drew at random).
    assert vote([("1", 0.5), ("2", 0.5)], "majority") == 0
    assert vote([("1", 0.5), ("2", 0.5)], "weighted") == 0
    assert vote([("1", 0.5), ("2", 0.5)], "best") == 0
    # Equal counts: the higher summed value wins.
    assert vote([("1", 0.2), ("2", 0.5), ("1", 0.2), ("2", 0.1)], "majority") == 1
    # Within the winning class, its best-valued member is the one returned.
    assert vote([("3", 0.1), ("3", 0.4), ("4", 0.45)], "majority") == 1
    assert vote([("3", 0.1), ("3", 0.4), ("4", 0.45)], "weighted") == 1
    # Only the top_n values vote; equal values keep the earlier candidate.
    assert vote([("5", 0.1), ("5", 0.1), ("6", 0.3), ("7", 0.2)], "majority", top_n=2) == 2
    assert vote([("5", 0.3), ("6", 0.3), ("6", 0.3)], "majority", top_n=2) == 0


def test_options():
    assert MCTSOptions().runs == 1 and MCTSOptions().vote == "best" and MCTSOptions().vote_top_n == 4
    with pytest.raises(ValueError):
        MCTSOptions(runs=0)
    with pytest.raises(ValueError):
        MCTSOptions(vote="reward")
    assert isinstance(MCTS(MCTSOptions(runs=2)), MCTS)
