"""Bundled plugin: search strategies."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_search_strategies(register: RegisterFn) -> None:
    register("greedy", "rstar_search.sampling:Greedy", description="one solution at temperature 0")
    register(
        "best_of_n",
        "rstar_search.sampling:BestOfN",
        description="N full solutions; majority vote, or best reward-model score",
    )
    register(
        "self_consistency",
        "rstar_search.sampling:SelfConsistency",
        description="N full solutions; majority vote over equivalent answers (no reward model)",
    )
    register("mcts", "rstar_search.mcts:MCTS", description="rStar-Math's Monte Carlo Tree Search over steps")
    register("beam", "rstar_search.beam:Beam", description="step-level beam search ranked by a reward model")
