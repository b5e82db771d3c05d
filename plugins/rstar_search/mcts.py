"""``mcts``: rStar-Math's Monte Carlo Tree Search over steps (ALGORITHM.md section 4).

One problem's tree is grown by ``budget.samples`` rollouts, each written as plain sequential code on
the `SearchContext`; the engine batches the requests of all trees in flight, so there is no
lock-step driver. Because the original's lock-step driver only synchronised independent trees, a
tree grown here goes through exactly the same states as in the original (ALGORITHM.md 4.4):

* a rollout starts with one selection step from the root (or stays at the root while it has no
  children), then makes at most ``budget.max_depth`` steps; each step expands the current node if it
  has no children (one policy request for ``expand_samples`` samples), then moves to its best child;
  the rollout ends when the chosen child is terminal or no child is eligible (the node is then
  "closed": marked terminal);
* so the first rollout creates nodes down to depth ``max_depth``, and later rollouts can expand a
  node at depth ``max_depth``, whose code children become "too many steps" leaves at ``max_depth + 1``
  (an answer there is still a valid answer);
* children are made by `rstar_search.expand.make_steps` as the original's ``create_child``: a sample that
  ended without a stop string is an ordinary step (``unfinished: leaf`` makes it an invalid leaf), and a
  step that closed the code block and hits the error threshold gets its output block twice
  (``double_output``).

Values (ALGORITHM.md 4.6, 4.7, 4.10): an invalid leaf gets -1 on itself only; in ``sampling`` mode an
answer gets +1 or -1 from the reference answer, backed up to the root at once; with a reward model,
each new non-terminal child gets the model's score as one visit (unless ``terminal_sample``), and in
``test`` mode each answer gets the model's score, backed up to the root. The chosen answer is the
answer node with the highest Q-value; ties are broken as the original's ``eval_output.py`` does
(ALGORITHM.md 4.9, `_Search.answer_walk`): the shallower answer wins, and at one depth the answer
that comes first once every level is stable-sorted by Q (higher-Q parents first), not simply the
first in breadth-first order.

Several runs (``runs > 1``, ALGORITHM.md 4.9, the paper's "N trajectories"): the whole search is
repeated ``runs`` times, one run after the other, run ``r`` (from 0) seeded with ``ctx.seed`` for
``r = 0`` and a hash of ``(ctx.seed, r)`` otherwise, so the runs are independent and a single run is
exactly the search above. Each run's best answer joins a pool; `rstar_search.vote.top_n_vote` picks
the prediction. The runs' trees hang under a synthetic root ``"0"``: run ``r``'s root is ``"0.r"``
(r from 1) and its node ``"0.x.y"`` becomes ``"0.r.x.y"``, one level deeper.

With a token cap (``budget.max_tokens``), a rollout that has started always finishes, but none starts
once the problem's generated tokens reach the cap, and neither does a further run: the tree is the
one an uncapped search with fewer rollouts would have grown, and the cap is exceeded by at most one
rollout.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from rstar.engine import problem_seed
from rstar.interfaces import SearchContext
from rstar.options import Options
from rstar.types import GenerationRequest, Node, Problem, RewardRequest, Tree
from rstar_search.expand import StepNode, make_steps, post_filter
from rstar_search.vote import PooledVote, top_n_vote


class MCTSOptions(Options):
    expand_samples: int = Field(4, ge=1, description="samples per expansion (the original's n_generate_sample)")
    c: float = Field(2.0, ge=0, description="UCT exploration constant (the original's c_puct)")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the policy")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)",
    )
    mode: Literal["sampling", "test"] = Field(
        "sampling",
        description="sampling: answers get +1/-1 from the reference answer (training data); "
        "test: answers get the reward model's score and the reference is not used by the search",
    )
    errors_threshold: int = Field(
        2, ge=1, description="consecutive erroring steps that make a 'too many code errors' leaf"
    )
    terminal_sample: bool = Field(
        False, description="ignore the reward model for non-terminal nodes (no reward-model initial value)"
    )
    unvisited: Literal["zero", "inf"] = Field("zero", description="UCT score of an unvisited child: its Q (0) or +inf")
    tie_break: Literal["first", "random"] = Field("first", description="equal UCT scores: earliest child or random")
    invalid_backup: Literal["node", "path"] = Field(
        "node", description="an invalid leaf's -1 updates the leaf only, or is backed up to the root"
    )
    dedupe: bool = Field(True, description="drop samples whose text repeats an earlier sample of the same request")
    answer_collapse: bool = Field(
        True, description="if a sample stopped on <end_of_answer>, keep only the first such sample"
    )
    unfinished: Literal["step", "leaf"] = Field(
        "step",
        description="a sample that ended without a stop string and without an answer: an ordinary step "
        "(step, as the original) or a terminal leaf without answer that gets -1 (leaf)",
    )
    double_output: bool = Field(
        True,
        description="a step that closed the code block and ends the solution with too many code errors "
        "gets its output block wrapped twice, as the original did (false: once)",
    )
    runs: int = Field(1, ge=1, description="independent MCTS runs per problem; their best answers are pooled")
    vote: PooledVote = Field(
        "best",
        description="with runs > 1: the pooled answer with the highest Q (best), the most frequent "
        "equivalent answer (majority) or the answer class with the highest summed Q (weighted)",
    )
    vote_top_n: int = Field(4, ge=1, description="with runs > 1: vote among this many highest-Q pooled answers")


@dataclass(eq=False)
class _Node(StepNode):
    """A step with the original's statistics (ALGORITHM.md 4.1): visits, value sum, first value."""

    parent: _Node | None  # narrowed: an MCTS tree holds only _Node
    children: list[_Node] = field(default_factory=list)  # type: ignore[assignment]
    visits: int = 0
    value_sum: float = 0.0

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def update(self, v: float) -> None:
        if self.value is None:
            self.value = v
        self.visits += 1
        self.value_sum += v

    def backup(self, v: float) -> None:
        node: _Node | None = self
        while node is not None:
            node.update(v)
            node = node.parent


class MCTS:
    """rStar-Math's MCTS: ``budget.samples`` rollouts of UCT selection and expansion per problem."""

    Options = MCTSOptions
    name = "mcts"

    def __init__(self, options: MCTSOptions) -> None:
        self.options = options

    async def search(self, problem: Problem, ctx: SearchContext) -> Tree:
        if self.options.runs == 1:
            return await _Search(self.options, problem, ctx).run()
        return await _multi_run(self.options, problem, ctx)


class _Search:
    def __init__(self, options: MCTSOptions, problem: Problem, ctx: SearchContext, seed: int | None = None) -> None:
        self.opts = options
        self.problem = problem
        self.ctx = ctx
        self.root = _Node("0", None, 0)
        # Answers get ground-truth rewards only in sampling mode and only when a reference exists.
        self.sampling = options.mode == "sampling" and problem.answer is not None
        self.prompt = ctx.step_format.render_prompt(problem.question)
        self.seed = ctx.seed if seed is None else seed
        # Each policy request gets a seed from this run's generator, drawn as ctx.generate would
        # draw it from ctx.rng (seeded with ctx.seed), so a single run is the same either way.
        self.rng = random.Random(self.seed)
        self.tie_rng = random.Random(f"{self.seed}:tie_break")

    async def run(self) -> Tree:
        await self.grow()
        return await self._tree()

    async def grow(self) -> None:
        """Run the ``budget.samples`` rollouts, or fewer: none starts once the token cap is reached."""
        max_depth = self.ctx.budget.max_depth
        for _ in range(self.ctx.budget.samples):
            if self.ctx.token_cap_reached:
                break
            node = self._select_from_root()
            for _ in range(max_depth):
                if node is None or node.terminal or node.depth > max_depth:
                    break
                if not node.children:
                    await self._expand(node)
                node = self._select_child(node)

    # --- selection ---------------------------------------------------------------------------

    def _select_from_root(self) -> _Node | None:
        """The first move of a rollout: stay at a childless root, else one selection step."""
        if not self.root.children and not self.root.terminal:
            return self.root
        return self._select_child(self.root)

    def _uct(self, child: _Node, parent: _Node) -> float:
        if child.visits == 0 and self.opts.unvisited == "inf":
            return math.inf
        if parent.visits > 0 and child.visits > 0:
            return child.q + self.opts.c * math.sqrt(math.log(parent.visits) / child.visits)
        return child.q

    def _select_child(self, node: _Node) -> _Node | None:
        """The best non-terminal child by UCT; with none, the node is closed (made terminal)."""
        live = [ch for ch in node.children if not ch.terminal]
        if not live:
            node.terminal = True
            return None
        scores = [self._uct(ch, node) for ch in live]
        best = max(scores)
        tied = [ch for ch, s in zip(live, scores, strict=True) if s == best]
        if self.opts.tie_break == "random" and len(tied) > 1:
            return self.tie_rng.choice(tied)
        return tied[0]

    # --- expansion and evaluation ------------------------------------------------------------

    async def _expand(self, node: _Node) -> None:
        opts, ctx = self.opts, self.ctx
        path = node.path_texts()
        request = GenerationRequest(
            prompt=ctx.step_format.render_prompt(self.problem.question, "".join(path)),
            n=opts.expand_samples,
            max_tokens=ctx.budget.max_step_tokens,
            temperature=opts.temperature,
            top_p=opts.top_p,
            stop=ctx.step_format.stops,
            seed=self.rng.randrange(2**31),
        )
        (result,) = await ctx.generate([request])
        samples = post_filter(result.samples, dedupe=opts.dedupe, answer_collapse=opts.answer_collapse)
        parent = (path, node.depth, node.consecutive_errors)
        steps = await make_steps(
            ctx,
            [parent] * len(samples),
            samples,
            errors_threshold=opts.errors_threshold,
            unfinished_leaf=opts.unfinished == "leaf",
            double_output=opts.double_output,
        )

        children = [node.add_child(_Node, step) for step in steps]

        answers = [ch for ch in children if ch.valid_answer]
        if self.sampling and answers:
            verdicts = await ctx.check([(ch.final_answer or "", self.problem.answer) for ch in answers])
            for ch, ok in zip(answers, verdicts, strict=True):
                ch.correct = ok

        to_score: list[_Node] = []
        for ch in children:
            if ch.terminal and not ch.valid_answer:  # too many errors / steps, or no stop string
                if opts.invalid_backup == "path":
                    ch.backup(-1.0)
                else:
                    ch.update(-1.0)
            elif ch.valid_answer and self.sampling:
                ch.backup(1.0 if ch.correct else -1.0)
            elif ch.valid_answer:
                to_score.append(ch)
        if ctx.has_reward_model and not opts.terminal_sample:
            to_score.extend(ch for ch in children if not ch.terminal)
        if not ctx.has_reward_model or not to_score:
            return  # test mode without a reward model: answers stay unscored
        values = await ctx.score([RewardRequest(self.prompt, "".join([*path, ch.text])) for ch in to_score])
        for ch, v in zip(to_score, values, strict=True):
            if ch.valid_answer:
                ch.backup(v)
            else:
                ch.update(v)

    # --- output ------------------------------------------------------------------------------

    async def _tree(self) -> Tree:
        await _check_answers(self.ctx, self.problem, [self])
        chosen = self.best_answer()
        return _make_tree(self.problem, self.ctx, chosen, self.nodes())

    def best_answer(self) -> _Node | None:
        """The answer node with the highest Q (ties: first in `answer_walk` order, ALGORITHM.md 4.9)."""
        answers = self.answer_walk()
        return max(answers, key=lambda n: n.q) if answers else None  # max keeps the first of equals

    def answer_walk(self) -> list[_Node]:
        """The answer leaves in the order the original's ``eval_output.py`` collects them (ALGORITHM.md 4.9).

        Level by level from the root: the children of the current level's nodes, listed in that
        level's order, are stable-sorted by Q (highest first); the answer leaves among them are
        collected in that order, and the nodes with children, in that order, make the next level.
        Leaves without an answer drop out. So among equal-Q answers the shallower one comes first,
        and at one depth the one whose parent ranked higher (recursively).
        """
        answers: list[_Node] = []
        level = [self.root]
        while level:
            ranked = sorted((ch for n in level for ch in n.children), key=lambda n: n.q, reverse=True)  # stable
            answers += [n for n in ranked if n.valid_answer and not n.children]
            level = [n for n in ranked if n.children]
        return answers

    def nodes(self, run: int | None = None) -> list[Node]:
        """The tree's nodes in breadth-first order; for ``run`` r, renamed below the synthetic root."""

        def rename(node_id: str) -> str:
            return node_id if run is None else f"0.{run}{node_id[1:]}"

        shift = 0 if run is None else 1
        return [
            Node(
                id=rename(n.id),
                parent=rename(n.parent.id) if n.parent is not None else (None if run is None else "0"),
                depth=n.depth + shift,
                text=n.text,
                output=n.output,
                visits=n.visits,
                q_value=n.q,
                value=n.value,
                terminal=n.terminal,
                final_answer=n.final_answer,
                correct=n.correct if n.valid_answer else None,
            )
            for n in self._bfs()
        ]

    def _bfs(self) -> list[_Node]:
        order = [self.root]
        i = 0
        while i < len(order):
            order.extend(order[i].children)
            i += 1
        return order


async def _check_answers(ctx: SearchContext, problem: Problem, searches: Sequence[_Search]) -> None:
    """Check every answer not yet checked against the reference (for the record), in one batch."""
    if problem.answer is None:
        return
    unchecked = [n for s in searches for n in s._bfs() if n.valid_answer and n.correct is None]
    if unchecked:
        verdicts = await ctx.check([(n.final_answer or "", problem.answer) for n in unchecked])
        for n, ok in zip(unchecked, verdicts, strict=True):
            n.correct = ok


def _make_tree(problem: Problem, ctx: SearchContext, chosen: _Node | None, nodes: Sequence[Node]) -> Tree:
    correct = None
    if problem.answer is not None:
        correct = bool(chosen.correct) if chosen is not None else False
    return Tree(
        id=problem.id,
        question=problem.question,
        answer=problem.answer,
        strategy=MCTS.name,
        prediction=chosen.final_answer if chosen is not None else None,
        correct=correct,
        usage=ctx.usage,
        nodes=tuple(nodes),
    )


def run_seed(seed: int, run: int) -> int:
    """Run ``run``'s seed (runs counted from 0): the problem's own seed for the first run."""
    return seed if run == 0 else problem_seed(seed, f"mcts-run-{run}")


async def _multi_run(options: MCTSOptions, problem: Problem, ctx: SearchContext) -> Tree:
    """``options.runs`` independent searches, one after the other (none starts once the token cap is
    reached); a vote over their best answers."""
    searches = []
    for r in range(options.runs):
        if ctx.token_cap_reached:
            break
        search = _Search(options, problem, ctx, seed=run_seed(ctx.seed, r))
        await search.grow()
        searches.append(search)
    await _check_answers(ctx, problem, searches)
    best = [b for b in (s.best_answer() for s in searches) if b is not None]
    pick = await top_n_vote(
        ctx, [(b.final_answer or "", b.q) for b in best], top_n=options.vote_top_n, mode=options.vote
    )
    chosen = best[pick] if pick is not None else None

    roots = [s.root for s in searches]
    visits = sum(r.visits for r in roots)
    root = Node(
        id="0",
        parent=None,
        depth=0,
        text="",
        visits=visits,
        q_value=sum(r.value_sum for r in roots) / visits if visits else 0.0,
        terminal=all(r.terminal for r in roots),
    )
    runs = [node for k, s in enumerate(searches, start=1) for node in s.nodes(run=k)]
    nodes = [root, *sorted(runs, key=lambda n: n.depth)]  # a stable sort: breadth-first over all runs
    return _make_tree(problem, ctx, chosen, nodes)


__all__ = ["MCTS", "MCTSOptions", "post_filter", "run_seed"]
