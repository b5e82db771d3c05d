"""Independent-sample strategies: ``greedy``, ``best_of_n`` and ``self_consistency``.

Each solution is a chain of steps grown one policy call at a time (a code step, its execution, the
next step, ... the answer). The N chains of one problem hang off the root of one tree: the k-th
chain's first step is node ``0.k``, its next step ``0.k.1``, and so on.

Without a token cap the N chains grow together, as one wave. With one (``budget.max_tokens``) they
are drawn in waves of ``wave`` chains, each wave grown to its end before the next starts, and no
wave starts once the problem's generated tokens reach the cap: the vote is over the chains drawn, and
the cap is exceeded by at most one wave. Waves are fixed by the options, not by timing, so the
result stays deterministic; but their requests differ from one wave's, so the samples differ from an
uncapped search's even when the cap is never reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from rstar.interfaces import SearchContext
from rstar.options import Options
from rstar.steps import STOPS_BLOCK
from rstar.types import GenerationRequest, Node, Problem, RewardRequest, Tree
from rstar_search.expand import StepResult, make_steps

Vote = Literal["majority", "reward", "weighted"]


class ChainOptions(Options):
    """How each chain is sampled: the options every independent-sample strategy shares."""

    temperature: float = Field(0.7, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)",
    )
    granularity: Literal["step", "block"] = Field(
        "step", description="one policy call per step, or per code block (then one for the answer)"
    )
    errors_threshold: int = Field(1, ge=1, description="consecutive erroring steps that end a solution")
    wave: int = Field(
        1,
        ge=1,
        description="with a token cap (budget.max_tokens): chains drawn at a time; no new wave starts once "
        "the cap is reached, so the cap is exceeded by at most one wave",
    )


class SamplingOptions(ChainOptions):
    vote: Vote = Field("majority", description="majority vote, best reward-model score, or reward-weighted vote")


class GreedyOptions(SamplingOptions):
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: the most likely token)")


class SelfConsistencyOptions(ChainOptions):
    """``best_of_n``'s options without ``vote``: self-consistency is always a majority vote."""


@dataclass
class _Chain:
    """One solution being grown."""

    index: int
    steps: list[StepResult] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.steps]

    @property
    def done(self) -> bool:
        return bool(self.steps) and self.steps[-1].terminal

    @property
    def answer(self) -> str | None:
        return self.steps[-1].final_answer if self.steps and self.steps[-1].is_valid_answer else None


class BestOfN:
    """N independent solutions (N = ``budget.samples``); the answer by vote or by reward."""

    Options: type[ChainOptions] = SamplingOptions
    name = "best_of_n"

    def __init__(self, options: ChainOptions) -> None:
        self.options = options
        self.vote: Vote = options.vote if isinstance(options, SamplingOptions) else "majority"

    def num_samples(self, ctx: SearchContext) -> int:
        return ctx.budget.samples

    async def search(self, problem: Problem, ctx: SearchContext) -> Tree:
        n = self.num_samples(ctx)
        wave = n if ctx.budget.max_tokens is None else self.options.wave
        chains: list[_Chain] = []
        while len(chains) < n and not ctx.token_cap_reached:
            drawn = [_Chain(k + 1) for k in range(len(chains), min(n, len(chains) + wave))]
            await self._grow(problem, ctx, drawn)
            chains += drawn

        scores = await self._scores(problem, ctx, chains)
        chosen = await self._choose(ctx, chains, scores)
        return await _tree(problem, ctx, self.name, chains, scores, chosen)

    async def _grow(self, problem: Problem, ctx: SearchContext, chains: list[_Chain]) -> None:
        """Grow ``chains`` together, one step each per round, until every one has ended."""
        opts = self.options
        fmt = ctx.step_format
        stops = STOPS_BLOCK if opts.granularity == "block" else fmt.stops

        def request(chain: _Chain, count: int = 1) -> GenerationRequest:
            return GenerationRequest(
                prompt=fmt.render_prompt(problem.question, "".join(chain.texts)),
                n=count,
                max_tokens=ctx.budget.max_step_tokens,
                temperature=opts.temperature,
                top_p=opts.top_p,
                stop=stops,
            )

        while live := [c for c in chains if not c.done and len(c.steps) <= ctx.budget.max_depth]:
            if all(not c.steps for c in live):
                # The first step of every chain shares one prompt: one request with n samples.
                results = await ctx.generate([request(live[0], len(live))])
                samples = list(results[0].samples)
            else:
                results = await ctx.generate([request(c) for c in live])
                samples = [r.samples[0] for r in results]
            parents = [(c.texts, len(c.steps), c.steps[-1].consecutive_errors if c.steps else 0) for c in live]
            new_steps = await make_steps(ctx, parents, samples, errors_threshold=opts.errors_threshold)
            for chain, step in zip(live, new_steps, strict=True):
                parent_id = chain.node_ids[-1] if chain.node_ids else "0"
                chain.node_ids.append(f"{parent_id}.{chain.index}" if parent_id == "0" else f"{parent_id}.1")
                chain.steps.append(step)

    async def _scores(self, problem: Problem, ctx: SearchContext, chains: list[_Chain]) -> dict[int, float]:
        if self.vote == "majority" or not ctx.has_reward_model:
            return {}
        answered = [c for c in chains if c.answer is not None]
        prompt = ctx.step_format.render_prompt(problem.question)
        values = await ctx.score([RewardRequest(prompt, "".join(c.texts)) for c in answered])
        return {c.index: v for c, v in zip(answered, values, strict=True)}

    async def _choose(self, ctx: SearchContext, chains: list[_Chain], scores: dict[int, float]) -> _Chain | None:
        """The chain whose answer is chosen: best score, or the first of the winning vote group."""
        answered = [c for c in chains if c.answer is not None]
        if not answered:
            return None
        if self.vote == "reward" and scores:
            return max(answered, key=lambda c: scores[c.index])
        groups = await equivalence_groups(ctx, [c.answer for c in answered if c.answer is not None])
        weighted = self.vote == "weighted" and scores
        weight = (lambda i: vote_weight(scores[answered[i].index])) if weighted else (lambda i: 1.0)
        best = max(groups, key=lambda g: sum(weight(i) for i in g))
        return answered[best[0]]


def vote_weight(score: float) -> float:
    """A chain's weight in the ``weighted`` vote: its score mapped from [-1, 1] (the PPM's range) to [0, 1],
    clipped. Summing raw scores would let a chain count *against* its answer: five chains scored -0.2 would
    weigh -1.0 and lose to one chain scored -0.5, so the more often an answer is found, the less it would win."""
    return min(1.0, max(0.0, (1.0 + score) / 2.0))


class Greedy(BestOfN):
    """One solution at temperature 0."""

    Options = GreedyOptions
    name = "greedy"

    def num_samples(self, ctx: SearchContext) -> int:
        return 1


class SelfConsistency(BestOfN):
    """Self-consistency (Wang et al.): N = ``budget.samples`` sampled solutions, majority vote over
    equivalent answers; ties go to the answer seen first. No reward model is used."""

    Options = SelfConsistencyOptions
    name = "self_consistency"


async def equivalence_groups(ctx: SearchContext, answers: list[str]) -> list[list[int]]:
    """Group answer indices by equivalence (exact text first, then the answer checker), in order of
    first appearance, so ties go to the answer seen first."""
    by_text: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        by_text.setdefault(a.strip(), []).append(i)
    reps = list(by_text)
    pairs = [(reps[i], reps[j]) for i in range(len(reps)) for j in range(i)]
    same = await ctx.check(list(pairs)) if pairs else []
    parent = list(range(len(reps)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    k = 0
    for i in range(len(reps)):
        for j in range(i):
            if same[k]:
                parent[find(i)] = find(j)
            k += 1
    groups: dict[int, list[int]] = {}
    for r, text in enumerate(reps):
        groups.setdefault(find(r), []).extend(by_text[text])
    return [sorted(g) for g in groups.values()]


async def _tree(
    problem: Problem,
    ctx: SearchContext,
    strategy: str,
    chains: list[_Chain],
    scores: dict[int, float],
    chosen: _Chain | None,
) -> Tree:
    answered = [c for c in chains if c.answer is not None]
    correct_of: dict[int, bool | None] = {c.index: None for c in answered}
    correct = None
    if problem.answer is not None:  # without a reference, correctness stays unknown (None)
        checks = await ctx.check([(c.answer, problem.answer) for c in answered if c.answer is not None])
        correct_of = {c.index: ok for c, ok in zip(answered, checks, strict=True)}
        correct = False if chosen is None else correct_of[chosen.index]
    nodes = [Node(id="0", parent=None, depth=0, text="", visits=len(chains))]
    for chain in chains:
        for depth, (node_id, step) in enumerate(zip(chain.node_ids, chain.steps, strict=True), start=1):
            last = depth == len(chain.steps)
            nodes.append(
                Node(
                    id=node_id,
                    parent=node_id.rsplit(".", 1)[0],
                    depth=depth,
                    text=step.text,
                    output=step.output,
                    visits=1,
                    q_value=scores.get(chain.index, 0.0) if last else 0.0,
                    value=scores.get(chain.index) if last else None,
                    terminal=step.terminal,
                    final_answer=step.final_answer,
                    correct=correct_of.get(chain.index) if last and step.is_valid_answer else None,
                )
            )
    return Tree(
        id=problem.id,
        question=problem.question,
        answer=problem.answer,
        strategy=strategy,
        prediction=chosen.answer if chosen else None,
        correct=correct,
        usage=ctx.usage,
        nodes=tuple(nodes),
    )
