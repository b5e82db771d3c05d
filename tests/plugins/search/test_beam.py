"""The ``beam`` strategy: hand-built worlds (which nodes are expanded, where children go, the width) and
invariants on random worlds."""

from __future__ import annotations

import asyncio
import re

import pytest
from fakes import FakeExactChecker, FakeInProcessVerifier
from hypothesis import given, settings
from hypothesis import strategies as st
from rstar_search.beam import Beam, BeamOptions
from test_mcts import random_reward, random_world

from rstar.engine import Components, Engine
from rstar.errors import ConfigError
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy, ScriptedRewardModel
from rstar.types import Budget, Problem, Tree

PROBLEM = Problem("q", "What is 5 plus 3?", "8")
TOO_MANY = ("too many code errors", "too many steps")


def tags(text: str) -> list[str]:
    return re.findall(r"tag:(\w+)", text.rsplit("Question:", 1)[-1])


def code(tag: str) -> str:
    return f"\n# tag:{tag}\nv_{tag} = 1\n<end_of_step>"


def error(tag: str) -> str:
    return f"\n# tag:{tag}\nundefined_{tag}\n<end_of_step>"


def answer(tag: str, value: str) -> str:
    return f"\n<answer>tag:{tag} So \\boxed{{{value}}}.<end_of_answer>"


def world(table: dict[str, list[str]]):
    """The samples below the node whose last tag is the key ("root" for the root), cycled to ``n``."""

    def fn(prompt: str, n: int) -> list[str]:
        seen = tags(prompt)
        specs = table.get(seen[-1] if seen else "root", [code("deeper")])
        head = "" if seen else "<code>"
        out = [specs[i % len(specs)] for i in range(n)]
        return [s if "<answer>" in s else head + s for s in out]

    return fn


def scores(table: dict[str, float]):
    return lambda text: table.get(tags(text)[-1], 0.0)


def run(policy_fn, reward, samples: int, problems=(PROBLEM,), max_depth: int = 16, max_in_flight=64, **options):
    policy = ScriptedPolicy(policy_fn)
    reward_model = ScriptedRewardModel(reward) if reward is not None else None
    engine = Engine(
        Components(policy, FakeInProcessVerifier(), FakeExactChecker(), reward_model), max_in_flight=max_in_flight
    )
    budget = Budget(samples=samples, max_depth=max_depth)
    trees = asyncio.run(engine.run(list(problems), Beam(BeamOptions(**options)), StepFormat.from_options(), budget))
    return trees, policy


def tag_of(tree: Tree, node_id: str) -> str:
    found = tags(tree.node(node_id).text)
    return found[-1] if found else "root"


# The original's bug scenario (ALGORITHM.md section 5): terminal nodes in the candidate list.
BUGGY = {
    "root": [code("A"), error("X"), code("B")],
    "A": [code("A1"), answer("A2", "8"), error("A3")],
    "B": [code("B1"), code("B2"), code("B3")],
    "B1": [answer("B1a", "5"), answer("B1b", "8"), code("B1c")],
}
BUGGY_SCORES = {"A": 0.5, "B": 0.3, "A1": 0.2, "A2": 0.95, "B1": 0.9, "B2": 0.1, "B3": 0.4}
BUGGY_SCORES |= {"B1a": 0.97, "B1b": 0.7, "B1c": 0.99}


def test_beam_by_hand():
    (tree,), policy = run(world(BUGGY), scores(BUGGY_SCORES), 2, expand_samples=3, answer_collapse=False)
    # Level 1: A (0.5) and B (0.3) fill the width-2 beam; the error leaf X is not scored.
    # Level 2: A2 (0.95) is an answer: width 1; the next beam is the best live child B1 (0.9), not
    # the terminal A2 (the original's terminal-in-beam bug). Level 3: two answers: width
    # max(0, 1 - 2) = 0, the search stops although B1c (0.99) is live.
    expanded = [[tags(r.prompt)[-1] if tags(r.prompt) else "root" for r in batch] for batch in policy.calls]
    assert expanded == [["root"], ["A", "B"], ["B1"]]
    ids = {n.id: tag_of(tree, n.id) for n in tree.nodes}
    assert ids == {
        "0": "root",
        "0.1": "A",
        "0.2": "X",
        "0.3": "B",
        "0.1.1": "A1",
        "0.1.2": "A2",
        "0.1.3": "A3",
        "0.3.1": "B1",
        "0.3.2": "B2",
        "0.3.3": "B3",
        "0.3.1.1": "B1a",
        "0.3.1.2": "B1b",
        "0.3.1.3": "B1c",
    }
    assert [n.id for n in tree.nodes][:4] == ["0", "0.1", "0.2", "0.3"]  # breadth-first
    # Children hang off the node that generated them, and no terminal node has children.
    for n in tree.nodes:
        if n.parent is not None:
            parent_tag = tag_of(tree, n.parent)
            assert any(ids[n.id] in s for s in BUGGY[parent_tag])
            assert not tree.node(n.parent).terminal
    x, a3 = tree.node("0.2"), tree.node("0.1.3")
    for leaf in (x, a3):
        assert leaf.terminal and leaf.final_answer == "too many code errors"
        assert leaf.value is None and leaf.visits == 0 and leaf.q_value == 0.0
    a = tree.node("0.1")
    assert (a.visits, a.q_value, a.value, a.terminal) == (1, 0.5, 0.5, False)
    b1c = tree.node("0.3.1.3")
    assert (b1c.value, b1c.terminal) == (0.99, False)
    answers = {
        n.id: (n.final_answer, n.value, n.correct) for n in tree.nodes if n.final_answer not in (None, *TOO_MANY)
    }
    assert answers == {"0.1.2": ("8", 0.95, True), "0.3.1.1": ("5", 0.97, False), "0.3.1.2": ("8", 0.7, True)}
    # The answer with the highest reward, not the first answer found (the original's bug 15).
    assert tree.prediction == "5" and tree.correct is False and tree.strategy == "beam"
    assert tree.usage.policy_calls == 4
    assert tree.usage.reward_calls == 2 + 5 + 3  # error leaves are never scored


def test_answers_shrink_the_width_one_by_one():
    table = {
        "root": [code("A"), code("B"), code("C")],
        "A": [answer("A1", "8"), code("A2")],
        "B": [code("B1"), code("B2")],
        "C": [code("C1")],
        "A2": [answer("A2a", "8")],
        "B1": [answer("B1a", "7")],
        "C1": [answer("C1a", "1")],
    }
    values = {"A": 0.9, "B": 0.8, "C": 0.7, "A1": 0.1, "A2": 0.3, "B1": 0.6, "B2": 0.5, "C1": 0.4}
    values |= {"A2a": 0.2, "B1a": 0.95, "C1a": 0.3}
    (tree,), policy = run(world(table), scores(values), 3, expand_samples=3, answer_collapse=False)
    expanded = [sorted(tags(r.prompt)[-1] for r in batch) for batch in policy.calls[1:3]]
    # Width 3: A, B, C; A1 is an answer: width 2 -> B1 (0.6), B2 (0.5) over C1 (0.4) and A2 (0.3).
    assert expanded == [["A", "B", "C"], ["B1", "B2"]]
    # B1's answer: width 1 -> B2's child (the only live one at depth 3) is the new beam.
    assert tag_of(tree, "0.2.2.1") == "deeper" and not tree.node("0.2.2.1").terminal
    # Default expand_samples is the beam width; the search goes on with width 1 until the depth limit.
    (tree,), policy = run(world(table), scores(values), 3, max_depth=4, answer_collapse=False)
    assert all(r.n == 3 for batch in policy.calls for r in batch)
    assert all(len(batch) <= 3 for batch in policy.calls)
    assert tree.prediction == "7" and tree.node("0.2.1.1").value == 0.95


def test_the_width_never_goes_negative():
    # Three answers at once with width 2: width 0, nothing more is expanded; no beam from a negative slice.
    table = {"root": [answer("P", "1"), answer("Q", "2"), answer("R", "3"), code("S")]}
    (tree,), policy = run(world(table), scores({"P": 0.1, "Q": 0.7, "R": 0.3, "S": 0.9}), 2, answer_collapse=False)
    assert len(policy.calls) == 1 and policy.calls[0][0].n == 2
    assert [n.id for n in tree.nodes] == ["0", "0.1", "0.2"]
    (tree,), policy = run(
        world(table), scores({"P": 0.1, "Q": 0.7, "R": 0.3, "S": 0.9}), 2, expand_samples=4, answer_collapse=False
    )
    assert len(policy.calls) == 1 and len(tree.nodes) == 5
    assert tree.prediction == "2" and not tree.node("0.4").terminal


def test_answer_collapse_and_dedupe_filter_each_request():
    table = {"root": [code("A"), code("A"), answer("P", "8"), answer("Q", "9")]}
    (tree,), _ = run(world(table), scores({"P": 0.5}), 4)
    assert [n.id for n in tree.nodes] == ["0", "0.1"] and tree.prediction == "8"
    (tree,), _ = run(world(table), scores({"P": 0.5}), 4, answer_collapse=False, dedupe=False)
    assert [tag_of(tree, n.id) for n in tree.nodes if n.depth == 1] == ["A", "A", "P", "Q"]


def test_depth_limit_and_error_threshold():
    table = {"root": [code("A"), error("E")]}
    # Every code step goes one deeper; at max_depth + 1 it is a "too many steps" leaf, not scored.
    (tree,), _ = run(world(table), scores({"A": 0.5, "E": 0.9}), 2, max_depth=2)
    assert max(n.depth for n in tree.nodes) == 3
    deepest = [n for n in tree.nodes if n.depth == 3]
    assert deepest and all(n.final_answer == "too many steps" and n.value is None for n in deepest)
    assert tree.prediction is None and tree.correct is False
    assert tree.node("0.2").final_answer == "too many code errors"
    # With errors_threshold 2, an erroring step is an ordinary step: scored and in the beam.
    (tree,), policy = run(world(table), scores({"A": 0.5, "E": 0.9}), 2, max_depth=1, errors_threshold=2)
    assert tree.node("0.2").value == 0.9 and not tree.node("0.2").terminal
    assert sorted(tags(r.prompt)[-1] for r in policy.calls[1]) == ["A", "E"]


def test_requests_follow_the_options():
    (_,), policy = run(world(BUGGY), scores(BUGGY_SCORES), 2, expand_samples=3, temperature=0.5, top_p=0.9)
    requests = [r for batch in policy.calls for r in batch]
    assert all(r.n == 3 and r.temperature == 0.5 and r.top_p == 0.9 for r in requests)
    assert all(r.stop == StepFormat.from_options().stops for r in requests)


def test_a_reward_model_is_required():
    with pytest.raises(ConfigError, match=r"reward_model: \{name: \.\.\.\}"):
        run(world(BUGGY), None, 2)


def test_without_a_reference_correctness_is_unknown():
    problem = Problem("u", PROBLEM.question, None)
    (tree,), _ = run(world(BUGGY), scores(BUGGY_SCORES), 2, problems=[problem], expand_samples=3)
    assert tree.prediction is not None and tree.correct is None
    assert all(n.correct is None for n in tree.nodes)


# --- invariants on random worlds -------------------------------------------------------------------------


def strip(trees: list[Tree]) -> list[dict]:
    out = []
    for t in trees:
        d = t.to_dict()
        d["usage"].pop("wall_time_s")
        out.append(d)
    return out


def test_results_do_not_depend_on_the_number_of_problems_in_flight():
    problems = [Problem(f"p{i}", f"What is {i} plus 3?", "8") for i in range(5)]
    one, _ = run(random_world(3), random_reward, 3, problems, max_depth=4, max_in_flight=1)
    many, _ = run(random_world(3), random_reward, 3, problems, max_depth=4, max_in_flight=5)
    assert strip(one) == strip(many)
    assert sum(len(t.nodes) for t in one) > 5 * 4


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([None, 1, 3]),
    st.integers(1, 2),
    st.booleans(),
)
def test_invariants_on_random_worlds(world_seed, width, max_depth, expand_samples, threshold, collapse):
    (tree,), _ = run(
        random_world(world_seed),
        random_reward,
        width,
        max_depth=max_depth,
        expand_samples=expand_samples,
        errors_threshold=threshold,
        answer_collapse=collapse,
    )
    nodes = {n.id: n for n in tree.nodes}
    children: dict[str, list[str]] = {i: [] for i in nodes}
    for n in tree.nodes:
        if n.parent is not None:
            children[n.parent].append(n.id)
            assert n.id.rsplit(".", 1)[0] == n.parent and n.depth == nodes[n.parent].depth + 1
            assert not nodes[n.parent].terminal

    def valid_answer(n) -> bool:
        return n.final_answer is not None and n.final_answer not in TOO_MANY

    for n in tree.nodes:
        assert n.depth <= max_depth + 1 and (n.terminal or n.depth <= max_depth)
        scored = n.id != "0" and (valid_answer(n) or not n.terminal)
        assert (n.value is not None) == scored and n.visits == int(scored)
        assert n.q_value == (n.value or 0.0)
        assert len(children[n.id]) <= (expand_samples or width)
    # Level by level: the width shrinks by one per answer (never below 0); the expanded nodes are
    # the best-scored live nodes of their level, as many as the width allows.
    remaining = width
    for depth in range(1, max_depth + 2):
        level = [n for n in tree.nodes if n.depth == depth]
        remaining = max(0, remaining - sum(valid_answer(n) for n in level))
        live = [n for n in level if not n.terminal]
        expanded = [n for n in live if children[n.id]]
        assert len(expanded) == min(remaining, len(live))
        others = [n.value for n in live if not children[n.id]]
        assert all(e.value >= max(others) for e in expanded) if others and expanded else True
    answers = [n for n in tree.nodes if valid_answer(n)]
    if answers:
        assert tree.prediction == max(answers, key=lambda n: n.value).final_answer
    else:
        assert tree.prediction is None


def test_validate_reports_a_beam_search_without_a_reward_model():
    from rstar.config import check_recipe
    from rstar.registry import get_registry

    recipe = {
        "output_dir": "runs/beam",
        "dataset": {"name": "jsonl", "path": "problems.jsonl"},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "search": {"name": "beam"},
    }
    problems = check_recipe(recipe, get_registry())
    assert any(p.startswith("search: search 'beam' needs a 'reward_model' section") for p in problems), problems
    recipe["reward_model"] = {"name": "scripted", "fn": "rstar.testing.worlds:prefers_short"}
    assert check_recipe(recipe, get_registry()) == []
