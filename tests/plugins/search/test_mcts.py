"""The ``mcts`` strategy: hand-worked trees (every visit count and Q-value), options, and invariants."""

from __future__ import annotations

import asyncio
import math
import random
import zlib

import pytest
from fakes import FakeExactChecker, FakeInProcessVerifier
from hypothesis import given, settings
from hypothesis import strategies as st
from rstar_search.mcts import MCTS, MCTSOptions, _Node, _Search, post_filter

from rstar.engine import Components, Engine
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy, ScriptedRewardModel
from rstar.types import Budget, Problem, Sample, Tree

PROBLEM = Problem("q", "What is 5 plus 3?", "8")
CODE = "<code>\n# Step 1: add\nresult = {expr}\n<end_of_step>"
PRINT = "\n# Now print the final answer\nprint({var})\n<end_of_code>"
ANSWER = "\n<answer>So \\boxed{{{value}}}.<end_of_answer>"


CHAIN_OF_FIVE = ("0", "0.1", "0.1.1", "0.1.1.1", "0.1.1.1.1")
"""A tree that is one path of four steps below the root."""


def partial(prompt: str) -> str:
    return prompt.rsplit("Question:", 1)[-1]


def world(exprs, prints=("result",)):
    """First step: ``exprs`` (one per sample, cycled); then the print steps; then the answer."""

    def fn(prompt: str, n: int) -> list[str]:
        tail = partial(prompt)
        if "<code>" not in tail:
            return [CODE.format(expr=exprs[i % len(exprs)]) for i in range(n)]
        if "<end_of_output>" not in tail:
            return [PRINT.format(var=prints[i % len(prints)]) for i in range(n)]
        value = tail.split("<output>")[-1].split("<end_of_output>")[0]
        return [ANSWER.format(value=value)] * n

    return fn


def run(policy_fn, budget: Budget, reward=None, problems=(PROBLEM,), max_in_flight=64, **options) -> list[Tree]:
    policy = ScriptedPolicy(policy_fn)
    reward_model = ScriptedRewardModel(reward) if reward is not None else None
    components = Components(policy, FakeInProcessVerifier(), FakeExactChecker(), reward_model)
    engine = Engine(components, max_in_flight=max_in_flight)
    strategy = MCTS(MCTSOptions(**options))
    return asyncio.run(engine.run(list(problems), strategy, StepFormat.from_options(), budget))


def search(policy_fn, rollouts: int, reward=None, max_depth: int = 16, **options) -> Tree:
    return run(policy_fn, Budget(samples=rollouts, max_depth=max_depth), reward, **options)[0]


def stats(tree: Tree) -> dict[str, tuple[int, float]]:
    return {n.id: (n.visits, round(n.q_value, 12)) for n in tree.nodes}


# --- (a) bootstrap: no reward model, ground-truth rewards ------------------------------------------


def test_bootstrap_tree_by_hand():
    # Root -> A (5 + 3, right) and B (5 - 3, wrong); each has one print step (the two identical print
    # samples are de-duplicated) and one answer (answer collapse).
    fn = world(["5 + 3", "5 - 3"])
    # Rollout 1: root expanded; A and B unvisited (Q = 0) -> first, A; A expanded, its print step
    # expanded, the answer 8 is right: +1 up to the root; the print node is closed.
    tree = search(fn, 1, expand_samples=2)
    assert stats(tree) == {"0": (1, 1.0), "0.1": (1, 1.0), "0.2": (0, 0.0), "0.1.1": (1, 1.0), "0.1.1.1": (1, 1.0)}
    assert tree.node("0.1.1").terminal and tree.node("0.1.1").final_answer is None
    assert tree.node("0.1.1").text.endswith("<end_of_code>\n<output>8<end_of_output>")
    assert tree.node("0.1.1").output == "8"
    assert tree.node("0.1.1.1").correct is True and tree.node("0.1.1.1").value == 1.0
    # Rollout 2: UCT(A) = 1 + 2 sqrt(ln 1 / 1) = 1 > Q(B) = 0 -> A, whose only child is terminal:
    # A is closed. Rollout 3: B is the only live child; its path ends on the wrong answer 2: -1.
    tree = search(fn, 3, expand_samples=2)
    assert stats(tree) == {
        "0": (2, 0.0),
        "0.1": (1, 1.0),
        "0.2": (1, -1.0),
        "0.1.1": (1, 1.0),
        "0.2.1": (1, -1.0),
        "0.1.1.1": (1, 1.0),
        "0.2.1.1": (1, -1.0),
    }
    assert tree.node("0.1").terminal and not tree.node("0.2").terminal and not tree.node("0").terminal
    assert tree.node("0.2.1.1").final_answer == "2" and tree.node("0.2.1.1").correct is False
    assert tree.prediction == "8" and tree.correct is True
    assert tree.usage.policy_calls == 5 and tree.usage.reward_calls == 0
    assert [n.id for n in tree.nodes] == ["0", "0.1", "0.2", "0.1.1", "0.2.1", "0.1.1.1", "0.2.1.1"]  # BFS
    assert tree.node("0.2.1").parent == "0.2" and tree.node("0.2.1").depth == 2
    # (f) Rollout 4 closes B, rollout 5 the root; later rollouts do nothing.
    tree = search(fn, 8, expand_samples=2)
    assert stats(tree)["0"] == (2, 0.0)
    assert all(n.terminal for n in tree.nodes)
    assert tree.usage.policy_calls == 5


def test_policy_requests_follow_the_options():
    policy = ScriptedPolicy(world(["5 + 3"]))
    engine = Engine(Components(policy, FakeInProcessVerifier(), FakeExactChecker()))
    strategy = MCTS(MCTSOptions(expand_samples=3))
    budget = Budget(samples=1, max_step_tokens=77)
    fmt = StepFormat.from_options()
    asyncio.run(engine.run([PROBLEM], strategy, fmt, budget))
    requests = [r for batch in policy.calls for r in batch]
    assert len(requests) == 3
    assert all(r.n == 3 and r.temperature == 0.7 and r.max_tokens == 77 and r.stop == fmt.stops for r in requests)
    assert requests[1].prompt == fmt.render_prompt(PROBLEM.question, CODE.format(expr="5 + 3"))


# --- (b) PPM-augmented sampling --------------------------------------------------------------------


def ppm(text: str) -> float:
    tail = partial(text)
    if "boxed" in tail:
        return 0.0  # never used in sampling mode
    if "<end_of_code>" in tail:
        return 0.4
    return 0.5 if "5 - 3" in tail else 0.2


def test_ppm_augmented_sampling_tree_by_hand():
    fn = world(["5 + 3", "5 - 3"])
    # Rollout 1: A = 0.2 and B = 0.5 as one visit each; root N = 0 -> greedy by Q: B. B's print step
    # gets 0.4 (N = 1), chosen (ln 1 = 0); its answer 2 is wrong: -1 from the answer to the root.
    tree = search(fn, 1, reward=ppm, expand_samples=2)
    assert stats(tree) == {
        "0": (1, -1.0),
        "0.1": (1, 0.2),
        "0.2": (2, -0.25),
        "0.2.1": (2, -0.3),
        "0.2.1.1": (1, -1.0),
    }
    assert tree.node("0.2").value == 0.5 and tree.node("0.2.1.1").value == -1.0
    # Rollout 2: UCT(A) = 0.2 + 2 sqrt(ln 1 / 1) = 0.2 > UCT(B) = -0.25 -> A; print step 0.4; answer 8: +1.
    tree = search(fn, 2, reward=ppm, expand_samples=2)
    assert stats(tree) == {
        "0": (2, 0.0),
        "0.1": (2, 0.6),
        "0.2": (2, -0.25),
        "0.1.1": (2, 0.7),
        "0.2.1": (2, -0.3),
        "0.1.1.1": (1, 1.0),
        "0.2.1.1": (1, -1.0),
    }
    assert tree.usage.reward_calls == 4  # A, B and the two print steps; answers are not scored
    assert tree.prediction == "8" and tree.correct is True


def test_terminal_sample_ignores_the_reward_model_for_inner_nodes():
    tree = search(world(["5 + 3", "5 - 3"]), 3, reward=ppm, expand_samples=2, terminal_sample=True)
    assert stats(tree) == stats(search(world(["5 + 3", "5 - 3"]), 3, expand_samples=2))
    assert tree.usage.reward_calls == 0


# --- (c) test time: answers scored by the reward model ------------------------------------------------


def scored_at_test_time(text: str) -> float:
    tail = partial(text)
    if "boxed" in tail:
        return -0.3 if "result + 0" in tail else 0.9
    if "<end_of_code>" in tail:
        return 0.1 if "result + 0" in tail else 0.5
    return 0.6


def test_test_mode_tree_by_hand_matches_the_worked_example():
    # A (PPM 0.6) has two print steps P1 (0.5) and P2 (0.1), whose answers are scored 0.9 and -0.3.
    fn = world(["5 + 3"], prints=("result", "result + 0"))
    tree = search(fn, 2, reward=scored_at_test_time, expand_samples=2, mode="test")
    assert stats(tree) == {
        "0": (2, 0.3),
        "0.1": (3, 0.4),  # ALGORITHM.md 4.7: N = 3, W = 0.6 + 0.9 - 0.3 = 1.2, Q = 0.4
        "0.1.1": (2, 0.7),
        "0.1.2": (2, -0.1),
        "0.1.1.1": (1, 0.9),
        "0.1.2.1": (1, -0.3),
    }
    assert tree.node("0.1").value == 0.6
    assert tree.usage.reward_calls == 5
    assert tree.prediction == "8" and tree.correct is True
    assert tree.node("0.1.1.1").correct is True and tree.node("0.1.2.1").correct is True  # checked for the record
    # If A's parent had N = 5: UCT(A) = 0.4 + 2 sqrt(ln 5 / 3) ~ 1.87.
    parent = _Node("0", None, 0, visits=5)
    a = _Node("0.1", parent, 1, visits=3, value_sum=1.2)
    uct = _Search(MCTSOptions(), PROBLEM, _FakeCtx())._uct(a, parent)
    assert uct == pytest.approx(0.4 + 2 * math.sqrt(math.log(5) / 3)) == pytest.approx(1.87, abs=0.01)


class _FakeCtx:
    seed = 0

    class step_format:
        @staticmethod
        def render_prompt(question: str, partial: str = "") -> str:
            return question + partial


def test_test_mode_scores_new_inner_nodes_and_answers_but_not_invalid_leaves():
    # Root -> E (a NameError: with errors_threshold 1 a "too many code errors" leaf, -1 on itself, never
    # scored) and A (scored 0.6 as one visit). A -> P (0.5); P -> the answer, scored 0.9 and backed up to
    # the root: P = (0.5 + 0.9) / 2, A = (0.6 + 0.9) / 2. P is closed; rollout 2 closes A, rollout 3 the root.
    fn = world(["undefined_name", "5 + 3"])
    tree = search(fn, 3, reward=scored_at_test_time, expand_samples=2, mode="test", errors_threshold=1)
    assert stats(tree) == {"0": (1, 0.9), "0.1": (1, -1.0), "0.2": (2, 0.75), "0.2.1": (2, 0.7), "0.2.1.1": (1, 0.9)}
    assert tree.node("0.1").final_answer == "too many code errors" and tree.node("0.2").value == 0.6
    assert all(n.terminal for n in tree.nodes)
    assert tree.usage.reward_calls == 3 and tree.usage.policy_calls == 3
    assert tree.prediction == "8" and tree.correct is True


def test_without_a_reference_answers_are_scored_even_in_sampling_mode():
    problem = Problem("u", PROBLEM.question, None)
    fn = world(["5 + 3"], prints=("result", "result + 0"))
    tree = run(fn, Budget(samples=2), scored_at_test_time, problems=[problem], expand_samples=2)[0]
    assert stats(tree)["0.1"] == (3, 0.4)
    assert tree.prediction == "8" and tree.correct is None and all(n.correct is None for n in tree.nodes)


def test_test_mode_without_a_reward_model_leaves_answers_unscored():
    fn = world(["5 - 3", "5 + 3"])
    tree = search(fn, 3, expand_samples=2, mode="test")
    assert all(n.visits == 0 and n.q_value == 0 and n.value is None for n in tree.nodes)
    # Nothing is ever visited: every rollout follows the first live child; the first answer wins.
    assert tree.node("0.1.1.1").final_answer == "2" and tree.node("0.2.1.1").final_answer == "8"
    assert tree.prediction == "2" and tree.correct is False


# --- (d) de-duplication and answer collapse ----------------------------------------------------------


def sample(text: str, stop: str | None = "<end_of_step>") -> Sample:
    return Sample(text + (stop or ""), "stop" if stop else "eos", stop)


def test_post_filter():
    a, a2, b = sample("x = 1\n"), sample("x = 1\n", "<end_of_code>"), sample("y = 2\n")
    ans1, ans2 = sample("\\boxed{1}", "<end_of_answer>"), sample("\\boxed{2}", "<end_of_answer>")
    assert post_filter([a, a2, b, a]) == [a, b]  # the stop string is not part of the comparison
    assert post_filter([a, a, b], dedupe=False) == [a, a, b]
    assert post_filter([a, ans1, b, ans2]) == [ans1]
    assert post_filter([a, ans1, b, ans2], answer_collapse=False) == [a, ans1, b, ans2]
    boxed_in_code = sample("# \\boxed{3}\n")
    assert post_filter([boxed_in_code, b]) == [boxed_in_code, b]  # only <end_of_answer> collapses


def test_dedupe_and_answer_collapse_in_the_tree():
    def fn(prompt: str, n: int) -> list[str]:
        if "<code>" not in partial(prompt):
            return [CODE.format(expr="1"), ANSWER.format(value=1), CODE.format(expr="1"), ANSWER.format(value=2)]
        return [ANSWER.format(value=9)] * n

    tree = search(fn, 1, expand_samples=4)
    assert [n.id for n in tree.nodes] == ["0", "0.1"] and tree.node("0.1").final_answer == "1"
    assert tree.node("0").terminal  # its only child is terminal: closed at once
    tree = search(fn, 1, expand_samples=4, answer_collapse=False)
    assert [n.final_answer for n in tree.nodes if n.depth == 1] == [None, "1", "2"]
    tree = search(fn, 1, expand_samples=4, answer_collapse=False, dedupe=False)
    assert [n.final_answer for n in tree.nodes if n.depth == 1] == [None, "1", None, "2"]


# --- (e) invalid leaves: too many code errors, too many steps -------------------------------------------


def erroring(prompt: str, n: int) -> list[str]:
    if "<code>" not in partial(prompt):
        return [CODE.format(expr="undefined_name")] * n
    return ["\nz = 1\n<end_of_step>"] * n


def test_error_threshold_two_tolerates_one_error_and_the_leaf_gets_minus_one_alone():
    tree = search(erroring, 2, expand_samples=1)
    # Step 1 errs (1 error in a row); step 2 re-runs it as history and errs again: terminal, -1 on itself.
    assert stats(tree) == {"0": (0, 0.0), "0.1": (0, 0.0), "0.1.1": (1, -1.0)}
    leaf = tree.node("0.1.1")
    assert leaf.terminal and leaf.final_answer == "too many code errors" and leaf.value == -1.0
    assert leaf.text.endswith(
        "<end_of_step><end_of_code>\n<output>NameError: name 'undefined_name' is not defined<end_of_output>"
    )
    # 0.1's only child is terminal: it is closed in the same rollout, and the root in the next.
    assert tree.node("0").terminal
    assert tree.node("0.1").terminal and tree.prediction is None and tree.correct is False


def test_error_threshold_one_is_zero_tolerance():
    tree = search(erroring, 1, expand_samples=1, errors_threshold=1)
    assert stats(tree) == {"0": (0, 0.0), "0.1": (1, -1.0)}
    assert tree.node("0.1").final_answer == "too many code errors"


def forever(prompt: str, n: int) -> list[str]:
    return ["\nx = 1\n<end_of_step>"] * n


def test_depth_limit_first_and_later_rollouts():
    # The first rollout stays at the root, then makes max_depth steps: nodes down to depth 3, none terminal.
    tree = search(forever, 1, max_depth=3, expand_samples=1)
    assert [n.id for n in tree.nodes] == ["0", "0.1", "0.1.1", "0.1.1.1"]
    assert not any(n.terminal for n in tree.nodes)
    # The second starts with a selection step from the root, so it expands the depth-3 node: its child
    # at depth 4 is a "too many steps" leaf with -1 on itself only; its parent is closed.
    tree = search(forever, 2, max_depth=3, expand_samples=1)
    assert stats(tree) == {
        "0": (0, 0.0),
        "0.1": (0, 0.0),
        "0.1.1": (0, 0.0),
        "0.1.1.1": (0, 0.0),
        "0.1.1.1.1": (1, -1.0),
    }
    assert tree.node("0.1.1.1.1").final_answer == "too many steps" and tree.node("0.1.1.1").terminal
    tree = search(forever, 5, max_depth=3, expand_samples=1)  # rollouts 3, 4, 5 close depth 2, 1, 0
    assert all(n.terminal for n in tree.nodes) and max(n.depth for n in tree.nodes) == 4


def test_an_answer_beyond_the_depth_limit_is_still_valid():
    def fn(prompt: str, n: int) -> list[str]:
        tail = partial(prompt)
        if "<code>" not in tail:
            return [CODE.format(expr="5 + 3")] * n
        if tail.count("<end_of_step>") < 2:
            return ["\nz = 1\n<end_of_step>"] * n
        if "<end_of_output>" not in tail:
            return [PRINT.format(var="result")] * n
        return [ANSWER.format(value=8)] * n

    tree = search(fn, 2, max_depth=3, expand_samples=1)
    answer = tree.node("0.1.1.1.1")
    assert answer.depth == 4 and answer.final_answer == "8" and answer.correct is True
    assert stats(tree) == {tag: (1, 1.0) for tag in CHAIN_OF_FIVE}


def unfinished_first_step(prompt: str, n: int) -> list[str]:
    """The first step ends with the end-of-sequence token (no stop string), the rest as in ``world``."""
    tail = partial(prompt)
    if "<code>" not in tail:
        return ["<code>\n# Step 1: add\nresult = 5 + 3"] * n
    return world(["5 + 3"])(prompt, n)


def test_a_sample_without_stop_string_is_an_ordinary_step_as_in_the_original():
    # ALGORITHM.md 2.3: the step text is the generated text + "" (no stop string); it is parsed and run
    # like any step, so the next step continues the code block: print(result) shows 8, the answer is right.
    tree = search(unfinished_first_step, 1, expand_samples=1)
    assert stats(tree) == {"0": (1, 1.0), "0.1": (1, 1.0), "0.1.1": (1, 1.0), "0.1.1.1": (1, 1.0)}
    assert not tree.node("0.1").terminal and tree.node("0.1").text == "<code>\n# Step 1: add\nresult = 5 + 3"
    assert tree.node("0.1.1").output == "8" and tree.prediction == "8"


def test_unfinished_leaf_makes_such_a_sample_an_invalid_leaf():
    tree = search(unfinished_first_step, 1, expand_samples=1, unfinished="leaf")
    assert stats(tree) == {"0": (0, 0.0), "0.1": (1, -1.0)}
    assert tree.node("0.1").terminal and tree.node("0.1").final_answer is None
    assert tree.node("0").terminal and tree.prediction is None


def test_an_answer_step_without_answer_is_an_ordinary_step_that_is_not_run():
    # "boxed" makes it an answer step (ALGORITHM.md 2.4); \boxed{} yields no answer, so it stays a normal,
    # non-terminal step (consecutive errors 0) whose code is neither run nor part of later programs (2.5).
    def fn(prompt: str, n: int) -> list[str]:
        tail = partial(prompt)
        if "<code>" not in tail:
            return [CODE.format(expr="5 + 3")] * n
        if "boxed" not in tail:
            return ["\nresult = 0  # \\boxed{}\n<end_of_step>"] * n
        return world(["5 + 3"])(prompt, n)

    tree = search(fn, 1, expand_samples=1)
    step = tree.node("0.1.1")
    assert not step.terminal and step.final_answer is None and step.output is None
    assert tree.node("0.1.1.1").output == "8"  # result = 0 was not run
    assert stats(tree) == {tag: (1, 1.0) for tag in CHAIN_OF_FIVE}
    assert tree.usage.verifier_jobs == 2 and tree.correct is True


def test_a_failing_step_that_closed_the_block_gets_two_output_blocks_as_in_the_original():
    def fn(prompt: str, n: int) -> list[str]:
        return ["<code>\nprint(undefined_name)\n<end_of_code>"] * n

    error = "NameError: name 'undefined_name' is not defined"
    tree = search(fn, 1, expand_samples=1, errors_threshold=1)
    leaf = tree.node("0.1")
    assert leaf.final_answer == "too many code errors" and stats(tree) == {"0": (0, 0.0), "0.1": (1, -1.0)}
    assert (
        leaf.text
        == f"<code>\nprint(undefined_name)\n<end_of_code>\n<output><output>{error}<end_of_output><end_of_output>"
    )
    assert leaf.output == error
    once = search(fn, 1, expand_samples=1, errors_threshold=1, double_output=False).node("0.1")
    assert once.text == f"<code>\nprint(undefined_name)\n<end_of_code>\n<output>{error}<end_of_output>"
    # Below the threshold the step keeps one output block and stays open.
    tree = search(fn, 1, expand_samples=1, errors_threshold=2, max_depth=1)
    assert tree.node("0.1").text == once.text and not tree.node("0.1").final_answer


# --- (g) option variants -----------------------------------------------------------------------------------


def test_unvisited_inf_explores_unvisited_children_first():
    fn = world(["5 + 3", "5 - 3"])
    zero = search(fn, 2, expand_samples=2)
    assert not any(n.id.startswith("0.2.") for n in zero.nodes)  # rollout 2 went back to A (and closed it)
    inf = search(fn, 2, expand_samples=2, unvisited="inf")
    assert stats(inf) == {
        "0": (2, 0.0),
        "0.1": (1, 1.0),
        "0.2": (1, -1.0),
        "0.1.1": (1, 1.0),
        "0.2.1": (1, -1.0),
        "0.1.1.1": (1, 1.0),
        "0.2.1.1": (1, -1.0),
    }
    assert not inf.node("0.1").terminal


def test_invalid_backup_path_sends_minus_one_to_the_root():
    tree = search(erroring, 1, expand_samples=1, invalid_backup="path")
    assert stats(tree) == {"0": (1, -1.0), "0.1": (1, -1.0), "0.1.1": (1, -1.0)}


def test_random_tie_break_is_seeded():
    fn = world(["5 - 3", "5 * 3", "5 - 1", "5 + 4"])  # every answer is wrong
    problems = [Problem(f"p{i}", PROBLEM.question, "8") for i in range(6)]
    budget = Budget(samples=2)
    trees = [run(fn, budget, None, problems, expand_samples=4, tie_break="random") for _ in range(2)]
    assert [stats(t) for t in trees[0]] == [stats(t) for t in trees[1]]
    firsts = set()
    for tree in trees[0]:
        expanded = [n.id for n in tree.nodes if n.depth == 2]
        assert len(expanded) == 2  # after a -1 the other (unvisited, Q = 0) children tie
        firsts.add(expanded[0])
    assert firsts != {"0.1.1"}
    first = run(fn, budget, None, problems, expand_samples=4)
    assert all([n.id for n in t.nodes if n.depth == 2] == ["0.1.1", "0.2.1"] for t in first)


def test_c_changes_the_exploration():
    # With c = 0, UCT is Q: after A's +1 the first live child stays A until it is closed.
    fn = world(["5 + 3", "5 - 3"])
    assert stats(search(fn, 3, expand_samples=2, c=0.0)) == stats(search(fn, 3, expand_samples=2))


# --- invariants on random worlds -------------------------------------------------------------------------


def random_world(world_seed: int):
    def fn(prompt: str, n: int, seed: int | None = None) -> list[str]:
        tail = partial(prompt)
        rng = random.Random(f"{world_seed}:{tail}:{seed}")
        out: list[str] = []
        for _ in range(n):
            k = rng.randrange(3)
            kind = rng.choice(["code", "code", "code", "error", "print", "right", "wrong", "eos", "repeat"])
            if kind == "repeat" and out:
                out.append(out[-1])
                continue
            head = "" if "<code>" in tail else "<code>"
            if kind in ("code", "repeat"):
                out.append(f"{head}\nx = {k}\n<end_of_step>")
            elif kind == "error":
                out.append(f"{head}\nx = undefined_{k}\n<end_of_step>")
            elif kind == "print":
                out.append(f"{head}\nx = {k}\nprint(x)\n<end_of_code>")
            elif kind == "right":
                out.append("\n<answer>\\boxed{8}<end_of_answer>")
            elif kind == "wrong":
                out.append(f"\n<answer>\\boxed{{{k}}}<end_of_answer>")
            else:
                out.append(f"{head}\nx = {k}")
        return out

    return fn


def random_reward(text: str) -> float:
    return (zlib.crc32(text.encode()) % 2001 - 1000) / 1000


worlds = st.fixed_dictionaries(
    {
        "world": st.integers(0, 10_000),
        "rollouts": st.integers(1, 6),
        "max_depth": st.integers(1, 4),
        "expand_samples": st.integers(1, 3),
        "reward": st.booleans(),
        "mode": st.sampled_from(["sampling", "test"]),
        "terminal_sample": st.booleans(),
        "errors_threshold": st.integers(1, 2),
        "unvisited": st.sampled_from(["zero", "inf"]),
        "invalid_backup": st.sampled_from(["node", "path"]),
        "unfinished": st.sampled_from(["step", "leaf"]),
        "double_output": st.booleans(),
    }
)


@settings(max_examples=30, deadline=None)
@given(worlds)
def test_invariants_on_random_worlds(w):
    reward = random_reward if w["reward"] else None
    keys = ("expand_samples", "mode", "terminal_sample", "errors_threshold", "unvisited", "invalid_backup")
    keys += ("unfinished", "double_output")
    options = {k: w[k] for k in keys}
    tree = search(random_world(w["world"]), w["rollouts"], reward=reward, max_depth=w["max_depth"], **options)
    nodes = {n.id: n for n in tree.nodes}
    children: dict[str, list[str]] = {i: [] for i in nodes}
    for n in tree.nodes:
        if n.parent is not None:
            children[n.parent].append(n.id)
    answers_scored = w["mode"] == "sampling" or w["reward"]  # sampling mode: the reference is known
    inits = w["reward"] and not w["terminal_sample"]

    def valid_answer(n) -> bool:
        return n.final_answer is not None and n.final_answer not in ("too many code errors", "too many steps")

    def invalid_leaf(n) -> bool:
        return n.terminal and not children[n.id] and not valid_answer(n)

    def backed_up(node_id: str) -> tuple[int, float]:
        """Backups that started at or below a node: (count, sum of values)."""
        count, total = 0, 0.0
        stack = [node_id]
        while stack:
            n = nodes[stack.pop()]
            stack.extend(children[n.id])
            if valid_answer(n) and answers_scored:
                count, total = count + 1, total + (n.value or 0.0)
            elif invalid_leaf(n) and w["invalid_backup"] == "path":
                count, total = count + 1, total - 1.0
        return count, total

    for n in tree.nodes:
        assert -1.0 <= n.q_value <= 1.0 and (n.value is None or -1.0 <= n.value <= 1.0)
        assert n.depth <= w["max_depth"] + 1 and (n.terminal or n.depth <= w["max_depth"])
        assert n.id == "0" or n.id.rsplit(".", 1)[0] == n.parent
        if n.depth == w["max_depth"] + 1:
            assert n.terminal
        own, own_value = 0, 0.0
        if invalid_leaf(n):
            assert n.final_answer is not None or w["unfinished"] == "leaf"  # else only sentinels end a path
            own, own_value = (0, 0.0) if w["invalid_backup"] == "path" else (1, -1.0)
            assert n.value == -1.0 and n.visits == 1
        elif valid_answer(n):
            assert not children[n.id]
            if answers_scored:
                assert n.visits == 1
            if w["mode"] == "sampling":
                assert n.q_value == (1.0 if n.correct else -1.0)
        elif n.id != "0" and inits:  # an inner node initialised by the reward model
            own, own_value = 1, n.value or 0.0
        count, total = backed_up(n.id)
        assert n.visits == own + count
        assert n.q_value * n.visits == pytest.approx(own_value + total, abs=1e-9)
        # A parent's visits: its own initial visit plus what each child passed up.
        if children[n.id]:
            assert n.depth <= w["max_depth"]  # no expansion past the depth limit
            passed = sum(backed_up(c)[0] for c in children[n.id])
            assert n.visits == (1 if (n.id != "0" and inits) else 0) + passed
    answers = [n for n in tree.nodes if valid_answer(n)]
    if answers:
        # The highest Q wins; which of equal-Q answers wins is the walk of ALGORITHM.md 4.9 (test_tie_rules).
        best = max(n.q_value for n in answers)
        assert tree.prediction in {n.final_answer for n in answers if n.q_value == best}
    else:
        assert tree.prediction is None


def test_results_do_not_depend_on_the_number_of_problems_in_flight():
    problems = [Problem(f"p{i}", f"What is {i} plus 3?", "8") for i in range(5)]

    def strip(trees: list[Tree]) -> list[dict]:
        out = []
        for t in trees:
            d = t.to_dict()
            d["usage"].pop("wall_time_s")
            out.append(d)
        return out

    for reward in (None, random_reward):
        one = run(random_world(7), Budget(samples=5, max_depth=4), reward, problems, max_in_flight=1, expand_samples=3)
        four = run(random_world(7), Budget(samples=5, max_depth=4), reward, problems, max_in_flight=4, expand_samples=3)
        assert strip(one) == strip(four)
        assert len({len(t.nodes) for t in one}) > 1  # the problems' trees differ


def test_end_to_end_through_the_runner(tmp_path, adder_jsonl):
    from rstar.plugins import make_plugin_manager
    from rstar.registry import Registry
    from rstar.rundir import read_trees
    from rstar.runner import Runner

    recipe = {
        "output_dir": str(tmp_path / "run"),
        "seed": 1,
        "dataset": {"name": "jsonl", "path": str(adder_jsonl), "limit": 2},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "answer_checker": {"name": "math_verify"},
        "search": {"name": "mcts", "expand_samples": 2},
        "budget": {"samples": 3, "max_depth": 4},
    }
    pm = make_plugin_manager([])
    result = Runner(recipe, Registry.from_plugin_manager(pm), pm).search()
    trees = read_trees(tmp_path / "run" / "search" / "trees.jsonl")
    assert sorted(trees) == ["p0", "p1"] and result.summary["problems"] == 2
    for tree in trees.values():
        assert tree.strategy == "mcts" and tree.nodes[0].id == "0"
        answers = [n for n in tree.nodes if n.final_answer not in (None, "too many code errors", "too many steps")]
        assert answers and all(n.q_value == (1.0 if n.correct else -1.0) for n in answers)
        assert tree.nodes[0].visits == len(answers)
