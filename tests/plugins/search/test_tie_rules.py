"""The MCTS answer's tie rule of the original, worked out by hand (ALGORITHM.md 4.9; the SFT rule of 6.1 is in
tests/plugins/pipeline/test_sft_tie_rules.py).

The chosen MCTS answer among equal-Q answers: the original's ``eval_output.py`` walks the tree
  level by level; each level (the children of the previous level's kept nodes, in that order) is
  stable-sorted by Q, descending; its answer leaves are collected in that order and its inner nodes,
  in that order, make the next level; then the collected answers are stable-sorted by Q and the
  first wins. So the shallower answer wins, and at one depth the one whose ancestors ranked higher.
"""

from __future__ import annotations

from rstar_search.mcts import MCTSOptions, _Node, _Search
from test_mcts import PROBLEM, _FakeCtx, partial, search, stats, world

# --- 4.9: the chosen answer among equal-Q answers --------------------------------------------------------


def inner(node_id: str, parent: _Node, q: float) -> _Node:
    """A step with one visit whose Q is ``q``."""
    n = _Node(node_id, parent, parent.depth + 1, visits=1, value_sum=q)
    parent.children.append(n)
    return n


def answer(node_id: str, parent: _Node, q: float, final: str) -> _Node:
    """A valid answer leaf with one visit whose Q is ``q``."""
    n = _Node(
        node_id, parent, parent.depth + 1, terminal=True, final_answer=final, valid_answer=True, visits=1, value_sum=q
    )
    parent.children.append(n)
    return n


def chosen(root: _Node) -> _Node | None:
    s = _Search(MCTSOptions(), PROBLEM, _FakeCtx())
    s.root = root
    return s.best_answer()


def test_spec_example_the_answer_under_the_higher_q_parent_wins():
    # ALGORITHM.md 4.9: root -> s1 (Q 0), s2 (Q 0.5); s1 -> x1 (Q 1); s2 -> x2 (Q 1).
    # Level 1: [s1 (0), s2 (0.5)] sorted -> [s2, s1]. Level 2: children of s2, then of s1: [x2, x1],
    # both Q 1 (the stable sort keeps them) -> collected [x2, x1] -> x2. (First in breadth-first
    # order would be x1.)
    root = _Node("0", None, 0)
    s1, s2 = inner("0.1", root, 0.0), inner("0.2", root, 0.5)
    answer("0.1.1", s1, 1.0, "x1")
    x2 = answer("0.2.1", s2, 1.0, "x2")
    assert chosen(root) is x2


def test_ties_at_one_level_are_broken_by_the_order_of_the_level_above():
    # root -> A (Q 0), B (Q 0.5); A -> a (Q 0.3), B -> b (Q 0.3); a -> xa (Q 1), b -> xb (Q 1).
    # Level 1: [B, A]. Level 2: children of B, then of A: [b, a]; equal Q, the stable sort keeps
    # [b, a]. Level 3: [xb, xa] -> xb, although a and b tie and xa is first breadth-first.
    root = _Node("0", None, 0)
    a_, b_ = inner("0.1", root, 0.0), inner("0.2", root, 0.5)
    a, b = inner("0.1.1", a_, 0.3), inner("0.2.1", b_, 0.3)
    answer("0.1.1.1", a, 1.0, "xa")
    xb = answer("0.2.1.1", b, 1.0, "xb")
    assert chosen(root) is xb


def test_a_level_is_re_sorted_so_a_lower_ranked_grandparent_can_win():
    # root -> A (Q 0.5), B (Q 0); A -> a (Q -0.4), B -> b (Q -0.2); a -> xa (Q -1), b -> xb (Q -1).
    # Level 1: [A, B]. Level 2: [a, b] sorted by Q -> [b (-0.2), a (-0.4)]. Level 3: [xb, xa] -> xb.
    root = _Node("0", None, 0)
    a_, b_ = inner("0.1", root, 0.5), inner("0.2", root, 0.0)
    a, b = inner("0.1.1", a_, -0.4), inner("0.2.1", b_, -0.2)
    answer("0.1.1.1", a, -1.0, "xa")
    xb = answer("0.2.1.1", b, -1.0, "xb")
    assert chosen(root) is xb


def test_the_shallower_answer_wins_a_tie_and_leaves_without_answer_drop_out():
    # root -> A (Q 0.9), B (Q 0.1), C (Q 0.95, a leaf without answer); A -> a (Q 0.9) -> xa (Q 0.5);
    # B -> xb (Q 0.5). Level 1: [C, A, B]: C is a leaf without answer (dropped). Level 2: [a, xb]:
    # xb is collected here; level 3: [xa]. Collected [xb, xa], equal Q -> xb (depth 2 beats depth 3).
    root = _Node("0", None, 0)
    a_, b_ = inner("0.1", root, 0.9), inner("0.2", root, 0.1)
    inner("0.3", root, 0.95)
    a = inner("0.1.1", a_, 0.9)
    answer("0.1.1.1", a, 0.5, "xa")
    xb = answer("0.2.1", b_, 0.5, "xb")
    assert chosen(root) is xb
    # A strictly higher Q still wins whatever its depth.
    a.children[0].value_sum = 0.6
    assert chosen(root) is a.children[0]


def ppm(text: str) -> float:
    tail = partial(text)
    if "<end_of_code>" in tail:  # the print steps
        return 0.6 if "5 * 3" in tail else 0.2
    return 0.5  # both first steps


def test_search_prediction_follows_the_original_tie_order():
    # Sampling mode with a reward model; root -> A (5 - 3, PPM 0.5), B (5 * 3, PPM 0.5); both answers
    # (2 and 15) are wrong: -1.
    # Rollout 1: root N = 0 -> greedy by Q, a tie -> A. A's print step P (0.2), then the answer 2: -1
    # up to the root. P = (0.2 - 1) / 2 = -0.4, A = (0.5 - 1) / 2 = -0.25; P is closed.
    # Rollout 2: root N = 1 (ln 1 = 0) -> Q: A -0.25 < B 0.5 -> B. B's print step P' (0.6), answer 15:
    # -1. P' = (0.6 - 1) / 2 = -0.2, B = -0.25.
    # Answer walk: level 1 [A, B] (equal Q); level 2 [P, P'] sorted -> [P', P]; level 3 [15, 2], both
    # -1 -> 15. (First in breadth-first order would be 2.)
    tree = search(world(["5 - 3", "5 * 3"]), 2, reward=ppm, expand_samples=2)
    assert stats(tree) == {
        "0": (2, -1.0),
        "0.1": (2, -0.25),
        "0.2": (2, -0.25),
        "0.1.1": (2, -0.4),
        "0.2.1": (2, -0.2),
        "0.1.1.1": (1, -1.0),
        "0.2.1.1": (1, -1.0),
    }
    assert tree.node("0.1.1.1").final_answer == "2" and tree.node("0.2.1.1").final_answer == "15"
    assert tree.prediction == "15" and tree.correct is False
