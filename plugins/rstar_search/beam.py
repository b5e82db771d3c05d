"""``beam``: step-level beam search guided by a reward model (ALGORITHM.md section 5), without the
original's bugs (ALGORITHM.md section 10, items 14 and 15).

The beam starts as the root. At each level every beam node is expanded (one policy request for
``expand_samples`` samples each, filtered as in MCTS); the reward model scores each new child that
is not terminal and each valid answer (error and too-many-steps leaves are not scored, so they cost
no reward call). Every valid answer found shrinks the width by one, never below zero; the next beam
is the ``width`` best-scored children that are not terminal (equal scores: the child created first).
The search ends when the width is 0 or the beam is empty; because a code step deeper than
``budget.max_depth`` is a "too many steps" leaf, that happens at depth ``max_depth + 1`` at the
latest. With a token cap (``budget.max_tokens``) it also ends before a level once the problem's
generated tokens have reached it (so the cap is exceeded by at most one level). The answer is the
answer with the highest score (ties: first in breadth-first order).

Where the original went wrong, this one does not: children hang off the node that generated them,
terminal nodes never take a beam slot, the width cannot go negative, and the choice reads the scores.
"""

from __future__ import annotations

from pydantic import Field

from rstar.errors import ConfigError
from rstar.interfaces import SearchContext
from rstar.options import Options
from rstar.types import GenerationRequest, Node, Problem, RewardRequest, Tree
from rstar_search.expand import StepNode, make_steps, post_filter


class BeamOptions(Options):
    expand_samples: int | None = Field(
        None, ge=1, description="samples per beam node; None: the beam width (budget.samples), as the original's 8/8"
    )
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the policy")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)",
    )
    errors_threshold: int = Field(
        1,
        ge=1,
        description="consecutive erroring steps that make a 'too many code errors' leaf; "
        "1 (any error ends the branch) is the original's beam search",
    )
    dedupe: bool = Field(True, description="drop samples whose text repeats an earlier sample of the same request")
    answer_collapse: bool = Field(
        True, description="if a sample stopped on <end_of_answer>, keep only the first such sample"
    )

    def needs(self) -> tuple[str, ...]:
        return ("reward_model",)


_Node = StepNode
"""Beam nodes are plain steps; ``value`` holds the reward model's score."""


class Beam:
    """Step-level beam search: width ``budget.samples``, children ranked by the reward model."""

    Options = BeamOptions
    name = "beam"

    def __init__(self, options: BeamOptions) -> None:
        self.options = options

    async def search(self, problem: Problem, ctx: SearchContext) -> Tree:
        if not ctx.has_reward_model:
            raise ConfigError(
                [
                    "search 'beam' ranks steps with a reward model, and the recipe has none: "
                    "set `reward_model: {name: ...}` (for instance ppm), or use best_of_n or mcts"
                ]
            )
        opts = self.options
        root = _Node("0", None, 0)
        width = ctx.budget.samples
        n = opts.expand_samples or width
        beam = [root]
        while beam and width > 0 and not ctx.token_cap_reached:
            children = await self._expand(problem, ctx, beam, n)
            found = [ch for ch in children if ch.valid_answer]
            width = max(0, width - len(found))
            live = [ch for ch in children if not ch.terminal]
            beam = sorted(live, key=lambda ch: -(ch.value or 0.0))[:width]  # a stable sort: ties keep order
        return await _tree(problem, ctx, root)

    async def _expand(self, problem: Problem, ctx: SearchContext, beam: list[_Node], n: int) -> list[_Node]:
        """Expand every beam node (one batch of requests), attach the children, score them."""
        opts, fmt = self.options, ctx.step_format
        paths = [node.path_texts() for node in beam]
        requests = [
            GenerationRequest(
                prompt=fmt.render_prompt(problem.question, "".join(path)),
                n=n,
                max_tokens=ctx.budget.max_step_tokens,
                temperature=opts.temperature,
                top_p=opts.top_p,
                stop=fmt.stops,
            )
            for path in paths
        ]
        results = await ctx.generate(requests)
        parents = []
        samples = []
        for node, path, result in zip(beam, paths, results, strict=True):
            kept = post_filter(result.samples, dedupe=opts.dedupe, answer_collapse=opts.answer_collapse)
            parents += [(node, path)] * len(kept)
            samples += kept
        steps = await make_steps(
            ctx,
            [(path, node.depth, node.consecutive_errors) for node, path in parents],
            samples,
            errors_threshold=opts.errors_threshold,
        )
        children = []
        for (node, _), step in zip(parents, steps, strict=True):
            child = node.add_child(_Node, step)
            children.append(child)
        to_score = [ch for ch in children if ch.valid_answer or not ch.terminal]
        prompt = fmt.render_prompt(problem.question)
        values = await ctx.score([RewardRequest(prompt, "".join(ch.path_texts())) for ch in to_score])
        for ch, v in zip(to_score, values, strict=True):
            ch.value = v
        return children


def _bfs(root: _Node) -> list[_Node]:
    order = [root]
    i = 0
    while i < len(order):
        order.extend(order[i].children)
        i += 1
    return order


async def _tree(problem: Problem, ctx: SearchContext, root: _Node) -> Tree:
    order = _bfs(root)
    answers = [n for n in order if n.valid_answer]
    if problem.answer is not None and answers:
        verdicts = await ctx.check([(n.final_answer or "", problem.answer) for n in answers])
        for n, ok in zip(answers, verdicts, strict=True):
            n.correct = ok
    chosen = max(answers, key=lambda n: n.value or 0.0) if answers else None  # max keeps the first of equals
    correct = None
    if problem.answer is not None:
        correct = bool(chosen.correct) if chosen is not None else False
    nodes = tuple(
        Node(
            id=n.id,
            parent=n.parent.id if n.parent is not None else None,
            depth=n.depth,
            text=n.text,
            output=n.output,
            visits=1 if n.value is not None else 0,
            q_value=n.value or 0.0,
            value=n.value,
            terminal=n.terminal,
            final_answer=n.final_answer,
            correct=n.correct,
        )
        for n in order
    )
    return Tree(
        id=problem.id,
        question=problem.question,
        answer=problem.answer,
        strategy=Beam.name,
        prediction=chosen.final_answer if chosen is not None else None,
        correct=correct,
        usage=ctx.usage,
        nodes=nodes,
    )


__all__ = ["Beam", "BeamOptions"]
