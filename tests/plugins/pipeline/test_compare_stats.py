"""The statistics of ``rstar compare`` on their own: McNemar's exact test, the paired bootstrap of a difference
in accuracy, one cell paired with the reference, the footer line and the choice of the reference cell."""

from __future__ import annotations

import math
import random

import pytest
from rstar_pipeline.compare import (
    CompareOptions,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_line,
    paired_test,
    reference_cell,
)

# --- McNemar's exact test ----------------------------------------------------------------------------


def binomial_p(b: int, c: int) -> float:
    """The two-sided exact p-value written out as in a textbook: 2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2)."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) * 0.5**n for k in range(min(b, c) + 1)))


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (12, 1, 2 * (1 + 13) / 2**13),  # 0.0034: the footer's example
        (5, 0, 2 / 2**5),  # 0.0625: five wins out of five is not enough at 5%
        (6, 0, 2 / 2**6),  # 0.03125: six is
        (10, 2, 2 * (1 + 12 + 66) / 2**12),  # 0.0386
        (3, 3, 1.0),  # 2 * 42/64 > 1: capped
        (0, 0, 1.0),  # no discordant problem: no evidence either way
        (1, 0, 1.0),
    ],
)
def test_mcnemar_on_known_tables(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)  # two-sided: symmetric


def test_mcnemar_matches_the_textbook_formula_and_stays_exact_for_large_counts():
    rng = random.Random(0)
    for _ in range(50):
        b, c = rng.randrange(0, 40), rng.randrange(0, 40)
        assert mcnemar_exact(b, c) == pytest.approx(binomial_p(b, c), rel=1e-9)
    # 2**2000 overflows a float; the integer arithmetic does not.
    assert 0 < mcnemar_exact(1000, 900) < 0.05
    assert mcnemar_exact(950, 950) == 1.0


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 3)


# --- the paired bootstrap ----------------------------------------------------------------------------


def outcomes(both: int, only_cell: int, only_reference: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Paired outcomes (cell, reference) with the given counts of each kind of problem."""
    cell = [True] * both + [True] * only_cell + [False] * only_reference + [False] * neither
    reference = [True] * both + [False] * only_cell + [True] * only_reference + [False] * neither
    return cell, reference


def test_paired_bootstrap_is_deterministic_with_its_seed_and_ignores_problem_order():
    cell, reference = outcomes(30, 12, 1, 17)
    a = paired_bootstrap_ci(cell, reference, 1000, 0.95, seed=7)
    assert a == paired_bootstrap_ci(cell, reference, 1000, 0.95, seed=7)
    pairs = list(zip(cell, reference, strict=True))
    random.Random(1).shuffle(pairs)
    assert a == paired_bootstrap_ci([p[0] for p in pairs], [p[1] for p in pairs], 1000, 0.95, seed=7)
    assert a is not None
    low, high = a
    # +11 of 60 = +18.3 points; the paired standard error is about 6 points.
    assert 0.05 <= low < 11 / 60 < high <= 0.32
    assert paired_bootstrap_ci(cell, reference, 1000, 0.95, seed=8) != a


def test_pairing_narrows_the_interval_when_the_cells_agree_on_most_problems():
    # The cell solves everything the reference solves and two more: unpaired, two 50%-ish accuracies on 20
    # problems have intervals of about +-20 points; paired, only the two discordant problems vary.
    cell, reference = outcomes(10, 2, 0, 8)
    interval = paired_bootstrap_ci(cell, reference, 1000, 0.95, seed=0)
    assert interval is not None
    low, high = interval
    assert 0.0 <= low <= 0.1 <= high <= 0.25


def test_paired_bootstrap_degenerate_cases():
    assert paired_bootstrap_ci([True, False], [True, False], 100) == (0.0, 0.0)
    assert paired_bootstrap_ci([True] * 4, [False] * 4, 100) == (1.0, 1.0)
    assert paired_bootstrap_ci([False] * 4, [True] * 4, 100) == (-1.0, -1.0)
    assert paired_bootstrap_ci([], [], 100) is None
    assert paired_bootstrap_ci([True], [False], 0) is None
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_ci([True], [True, False], 100)


def by_id(values: list[bool]) -> dict[str, bool]:
    """Outcomes keyed by problem id, as a cell's trees give them."""
    return {f"p{i}": v for i, v in enumerate(values)}


# --- one pair and its footer line --------------------------------------------------------------------


OPTIONS = CompareOptions.model_validate({"strategies": {"greedy": {"budgets": [1]}, "mcts": {}}, "bootstrap": 500})


def test_paired_test_counts_the_problems_both_cells_have():
    cell = {"p1": True, "p2": True, "p3": False, "p4": True, "only_cell": True}
    reference = {"p1": True, "p2": False, "p3": True, "p4": False, "only_reference": False}
    test = paired_test("mcts@4", "greedy@1", cell, reference, OPTIONS)
    assert test["problems"] == 4
    assert (test["accuracy"], test["reference_accuracy"], test["difference"]) == (0.75, 0.5, 0.25)
    assert (test["only_cell_correct"], test["only_reference_correct"]) == (2, 1)
    assert test["p_value"] == 1.0
    assert test["ci_low"] <= 0.25 <= test["ci_high"]


def test_paired_test_without_common_problems():
    test = paired_test("mcts@4", "greedy@1", {"a": True}, {"b": True}, OPTIONS)
    assert test["problems"] == 0 and test["difference"] is None and test["p_value"] is None
    assert paired_line(test) == "mcts@4 vs greedy@1: no problem with a reference answer in common"


def test_the_footer_line_states_the_difference_its_interval_and_the_test():
    cell, reference = outcomes(30, 12, 1, 17)
    test = paired_test("mcts@4", "greedy@1", by_id(cell), by_id(reference), OPTIONS)
    low, high = 100 * test["ci_low"], 100 * test["ci_high"]
    assert paired_line(test, 0.95) == (
        f"mcts@4 vs greedy@1: +18.3 points (paired 95% CI [{low:+.1f}, {high:+.1f}]), "
        "McNemar p = 0.0034 (12 vs 1 discordant problems, of 60)"
    )
    worse = paired_test("greedy@1", "mcts@4", by_id(reference), by_id(cell), OPTIONS)
    assert paired_line(worse).startswith("greedy@1 vs mcts@4: -18.3 points (paired 95% CI [-")
    assert paired_line(worse).endswith("McNemar p = 0.0034 (1 vs 12 discordant problems, of 60)")


def test_the_footer_line_without_an_interval_and_with_extreme_p_values():
    cell, reference = outcomes(0, 40, 0, 0)
    no_bootstrap = OPTIONS.model_copy(update={"bootstrap": 0})
    test = paired_test("a@1", "b@1", by_id(cell), by_id(reference), no_bootstrap)
    assert paired_line(test) == "a@1 vs b@1: +100.0 points, McNemar p < 0.0001 (40 vs 0 discordant problems, of 40)"
    same = paired_test("a@1", "b@1", {"x": True}, {"x": True}, no_bootstrap)
    assert paired_line(same) == "a@1 vs b@1: +0.0 points, McNemar p = 1.0 (0 vs 0 discordant problems, of 1)"


# --- the reference cell ------------------------------------------------------------------------------


def grid(reference: str | None) -> CompareOptions:
    return CompareOptions.model_validate(
        {
            "budgets": [4, 2],
            "strategies": {"greedy": {"budgets": [1]}, "mcts": {}, "bon": {"budgets": [64, 8]}},
            "reference": reference,
        }
    )


@pytest.mark.parametrize(
    ("reference", "cell"),
    [(None, "greedy@1"), ("mcts", "mcts@2"), ("mcts@4", "mcts@4"), ("bon", "bon@8"), ("bon@64", "bon@64")],
)
def test_the_reference_cell(reference, cell):
    assert reference_cell(grid(reference)) == cell


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("beam", "'beam' is not a strategy label; the labels are greedy, mcts, bon"),
        ("mcts@3", "mcts has no budget '3'; its budgets are 2, 4"),
        ("@4", "'' is not a strategy label"),
        ("mcts@", "mcts has no budget ''"),
    ],
)
def test_a_reference_naming_no_cell_says_which_cells_exist(reference, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        reference_cell(grid(reference))
