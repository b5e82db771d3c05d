"""The SFT top-k's tie rule of the original, worked out by hand (ALGORITHM.md 6.1): the original enumerates
root-to-leaf paths depth first (children in creation order) and its sort is stable, so among equal (mean Q,
min Q) the earlier path in depth-first order wins, even when it is deeper than a later one."""

from __future__ import annotations

from rstar_pipeline.extract import ExtractOptions, sft_records
from test_extract import DEFAULTS, SFT, node, path_text, right, tree, wrong

# --- 6.1: the SFT top-k among equal keys ---------------------------------------------------------------------


def test_spec_example_equal_keys_keep_depth_first_order():
    # ALGORITHM.md 6.1: three correct paths of equal keys ending at 0.1.1.1, 0.2.1 and 0.3.1 (every
    # step Q 1: mean 1, min 1). Depth first: 0.1.1.1, 0.2.1, 0.3.1 -> the top two are 0.1.1.1 and
    # 0.2.1. The nodes are listed breadth-first, as a search writes them, so breadth-first order of
    # the leaves (0.2.1, 0.3.1, 0.1.1.1) would keep 0.2.1 and 0.3.1 instead.
    t = tree(
        node("0.1", 1.0),
        node("0.2", 1.0),
        node("0.3", 1.0),
        node("0.1.1", 1.0),
        right("0.2.1"),
        right("0.3.1"),
        right("0.1.1.1"),
    )
    records = sft_records(t, SFT, DEFAULTS)
    assert [r["response"] for r in records] == [path_text("0.1", "0.1.1", "0.1.1.1"), path_text("0.2", "0.2.1")]
    three = sft_records(t, SFT, ExtractOptions(sft_top_k=3))
    assert [r["response"] for r in three][2] == path_text("0.3", "0.3.1")


def test_equal_mean_and_min_ties_go_to_the_earlier_depth_first_path():
    # Correct paths (breadth-first listing below):
    #   0.1 -> 0.1.1 -> 0.1.1.1: Q [0.0, 0.5, 1.0], mean 0.5, min 0.0
    #   0.2 -> 0.2.1:            Q [0.0, 1.0],      mean 0.5, min 0.0
    #   0.2 -> 0.2.2 -> 0.2.2.1: Q [0.0, 0.75, 0.75], mean 0.5, min 0.0
    #   0.3 -> 0.3.1:            Q [0.25, 1.0],     mean 0.625 (the best)
    # plus a wrong answer 0.1.2 (ignored). Sorted by (mean, min) descending, stable over depth-first
    # order [0.1.1.1, 0.2.1, 0.2.2.1, 0.3.1]: 0.3.1, then the three ties in that order -> the top two
    # are 0.3.1 and 0.1.1.1 (breadth-first, the tie would go to the shallow 0.2.1).
    t = tree(
        node("0.1", 0.0),
        node("0.2", 0.0),
        node("0.3", 0.25),
        node("0.1.1", 0.5),
        wrong("0.1.2"),
        right("0.2.1"),
        node("0.2.2", 0.75),
        right("0.3.1"),
        right("0.1.1.1"),
        right("0.2.2.1", 0.75),
    )
    ranked = sft_records(t, SFT, ExtractOptions(sft_top_k=4))
    assert [r["response"] for r in ranked] == [
        path_text("0.3", "0.3.1"),
        path_text("0.1", "0.1.1", "0.1.1.1"),
        path_text("0.2", "0.2.1"),
        path_text("0.2", "0.2.2", "0.2.2.1"),
    ]
    assert [(r["mean_q"], r["min_q"]) for r in ranked] == [(0.625, 0.25), (0.5, 0.0), (0.5, 0.0), (0.5, 0.0)]
    assert [r["response"] for r in sft_records(t, SFT, DEFAULTS)] == [
        path_text("0.3", "0.3.1"),
        path_text("0.1", "0.1.1", "0.1.1.1"),
    ]
