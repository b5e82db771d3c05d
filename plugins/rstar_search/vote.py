"""Voting over the best answers of independent searches (ALGORITHM.md 4.9, the original's ``eval_maj.py``).

The paper's "N trajectories" are N independent MCTS runs: each run gives its single best answer with
a value, the answers are pooled, the ``top_n`` highest-valued are kept, and one of three rules picks
the answer. Unlike the original, ties never depend on unseeded randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rstar.interfaces import SearchContext
from rstar_search.sampling import equivalence_groups

PooledVote = Literal["best", "majority", "weighted"]


async def top_n_vote(
    ctx: SearchContext, candidates: Sequence[tuple[str, float]], *, top_n: int, mode: PooledVote
) -> int | None:
    """The index (into ``candidates``) of the chosen ``(answer, value)``, or None when there are none.

    Only the ``top_n`` highest-valued candidates take part (equal values: the earlier candidate).
    ``best``: the highest value (ties: the earlier one). ``majority``: the largest class of equivalent
    answers (`equivalence_groups`); ties go to the class with the highest summed value, then to the
    class seen first. ``weighted``: the class with the highest summed value, ties to the class seen
    first. Within the winning class the highest-valued member (then the earlier one) is chosen.
    """
    if not candidates:
        return None
    ranked = sorted(range(len(candidates)), key=lambda i: -candidates[i][1])[:top_n]
    kept = sorted(ranked)  # candidate order: "first seen" means the earlier candidate
    value = [candidates[i][1] for i in kept]
    if mode == "best":
        return kept[max(range(len(kept)), key=lambda k: value[k])]
    groups = await equivalence_groups(ctx, [candidates[i][0] for i in kept])

    def strength(group: list[int]) -> tuple[float, ...]:
        total = sum(value[k] for k in group)
        return (len(group), total) if mode == "majority" else (total,)

    winner = max(groups, key=strength)  # max keeps the first of equals: the class seen first
    return kept[max(winner, key=lambda k: value[k])]


__all__ = ["PooledVote", "top_n_vote"]
