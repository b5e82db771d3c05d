"""Turning generated samples into steps: parse, run the accumulated code, decide terminal states.

Shared by the strategies so that a step means the same thing in every one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from rstar.interfaces import SearchContext
from rstar.steps import ANSWER_END, CODE_END, OUTPUT, OUTPUT_END, TOO_MANY_ERRORS, TOO_MANY_STEPS
from rstar.types import CodeJob, Sample


@dataclass(frozen=True)
class StepResult:
    """A new step: its text as the model sees it afterwards, the interpreter output and its state."""

    text: str
    output: str | None
    terminal: bool
    final_answer: str | None
    consecutive_errors: int

    @property
    def is_valid_answer(self) -> bool:
        return (
            self.terminal
            and self.final_answer is not None
            and self.final_answer not in (TOO_MANY_ERRORS, TOO_MANY_STEPS)
        )


N = TypeVar("N", bound="StepNode")


@dataclass(eq=False)
class StepNode:
    """A step in a strategy's tree: what the step format made of a sample, and its place in the tree.

    Strategies with statistics subclass it (`rstar_search.mcts`); node ids follow the tree format:
    the k-th child of node t is "t.k"."""

    id: str
    parent: StepNode | None
    depth: int
    text: str = ""
    output: str | None = None
    terminal: bool = False
    final_answer: str | None = None
    valid_answer: bool = False
    consecutive_errors: int = 0
    children: list[StepNode] = field(default_factory=list)
    value: float | None = None
    correct: bool | None = None

    def add_child(self, cls: type[N], step: StepResult) -> N:
        """A new child of class ``cls`` made from ``step``, appended to ``children``."""
        child = cls(
            f"{self.id}.{len(self.children) + 1}",
            self,
            self.depth + 1,
            text=step.text,
            output=step.output,
            terminal=step.terminal,
            final_answer=step.final_answer,
            valid_answer=step.is_valid_answer,
            consecutive_errors=step.consecutive_errors,
        )
        self.children.append(child)
        return child

    def path_texts(self) -> list[str]:
        """The texts of the steps from the root's first child down to this node."""
        texts: list[str] = []
        node: StepNode | None = self
        while node is not None and node.parent is not None:
            texts.append(node.text)
            node = node.parent
        return texts[::-1]


def post_filter(samples: Sequence[Sample], *, dedupe: bool = True, answer_collapse: bool = True) -> list[Sample]:
    """The original's per-request filter (ALGORITHM.md 2.3): drop repeated texts (the stop string is
    not part of the comparison), then, if a sample stopped on ``<end_of_answer>``, keep only the first
    such sample."""
    kept = list(samples)
    if dedupe:
        seen: set[str] = set()
        unique = []
        for s in kept:
            key = s.text[: len(s.text) - len(s.stop)] if s.stop and s.text.endswith(s.stop) else s.text
            if key not in seen:
                seen.add(key)
                unique.append(s)
        kept = unique
    if answer_collapse:
        answers = [s for s in kept if s.finish_reason == "stop" and s.stop == ANSWER_END]
        if answers:
            kept = answers[:1]
    return kept


async def make_steps(
    ctx: SearchContext,
    parents: Sequence[tuple[Sequence[str], int, int]],
    samples: Sequence[Sample],
    *,
    errors_threshold: int,
    unfinished_leaf: bool = True,
    double_output: bool = False,
) -> list[StepResult]:
    """Build one step per ``(parent path texts, parent depth, parent consecutive errors)`` and sample.

    As the original's ``create_child`` (ALGORITHM.md 2.4, 2.5, 4.5): an answer step with an answer
    is a terminal answer; an answer step without one (``boxed`` but nothing extracted) is an ordinary
    step whose text is not run; every other step is code, run with the code block's earlier steps
    (all samples in one verifier batch). A code step that shows an error (its observation contains
    "error") ``errors_threshold`` times in a row becomes a terminal "too many code errors" leaf, its
    text closed with ``<end_of_code>`` and given its output block (twice over if the step had closed
    the block itself and ``double_output``, as the original did). A step that is not terminal and is
    deeper than the budget's ``max_depth`` becomes a "too many steps" leaf.

    ``unfinished_leaf``: a sample that ended without a stop string (end of sequence or length) and
    without an answer is a terminal leaf without answer; otherwise (the original) it is an ordinary
    step.
    """
    fmt = ctx.step_format
    parsed = [fmt.parse(s.text) for s in samples]
    jobs: list[CodeJob] = []
    job_of: dict[int, int] = {}
    for i, ((path, _, _), sample, p) in enumerate(zip(parents, samples, parsed, strict=True)):
        if not p.is_answer:
            job_of[i] = len(jobs)
            jobs.append(CodeJob(fmt.program(path, sample.text)))
    verdicts = await ctx.execute(jobs) if jobs else []

    steps: list[StepResult] = []
    for i, ((_, depth, errors), sample, p) in enumerate(zip(parents, samples, parsed, strict=True)):
        text, output, consecutive = sample.text, None, 0
        if p.is_answer and p.final_answer is not None:
            steps.append(StepResult(text, None, True, p.final_answer, 0))
            continue
        if i in job_of:
            observation = fmt.observation(verdicts[job_of[i]])
            failed = fmt.is_error(observation)
            consecutive = errors + 1 if failed else 0
            shown = fmt.shows_output(text)
            if shown:
                text = fmt.with_output(text, observation)
                output = observation
            if failed and consecutive >= errors_threshold:
                if not shown:
                    text = fmt.with_output(sample.text + CODE_END, observation)
                elif double_output:
                    text = fmt.with_output(sample.text, f"{OUTPUT}{observation}{OUTPUT_END}")
                steps.append(StepResult(text, observation, True, TOO_MANY_ERRORS, consecutive))
                continue
        if unfinished_leaf and sample.finish_reason != "stop":
            steps.append(StepResult(text, output, True, None, consecutive))
        elif depth + 1 > ctx.budget.max_depth:
            steps.append(StepResult(text, output, True, TOO_MANY_STEPS, consecutive))
        else:
            steps.append(StepResult(text, output, False, None, consecutive))
    return steps
