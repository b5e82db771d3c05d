"""Turning generated samples into steps: parse, run the accumulated code, decide terminal states.

Shared by the strategies so that a step means the same thing in every one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rstar.engine import SearchContext
from rstar.steps import CODE_END, TOO_MANY_ERRORS, TOO_MANY_STEPS
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


async def make_steps(
    ctx: SearchContext,
    parents: Sequence[tuple[Sequence[str], int, int]],
    samples: Sequence[Sample],
    *,
    errors_threshold: int,
) -> list[StepResult]:
    """Build one step per ``(parent path texts, parent depth, parent consecutive errors)`` and sample.

    Code steps of all samples run in one verifier batch. A step that shows an error
    (ALGORITHM.md 2.5: the observation contains "error") ``errors_threshold`` times in a row becomes
    a terminal "too many code errors" leaf; a non-terminal step deeper than the budget's
    ``max_depth`` becomes a "too many steps" leaf; a sample that ended without a stop string and
    without an answer (end of sequence or length) is a terminal leaf without answer.
    """
    fmt = ctx.step_format
    parsed = [fmt.parse(s.text) for s in samples]
    jobs: list[CodeJob] = []
    job_of: dict[int, int] = {}
    for i, ((path, _, _), sample, p) in enumerate(zip(parents, samples, parsed, strict=True)):
        if not (p.is_answer and p.final_answer is not None):
            job_of[i] = len(jobs)
            jobs.append(CodeJob(fmt.program(path, sample.text)))
    verdicts = await ctx.execute(jobs) if jobs else []

    steps: list[StepResult] = []
    for i, ((_, depth, errors), sample, p) in enumerate(zip(parents, samples, parsed, strict=True)):
        if i not in job_of:
            steps.append(StepResult(sample.text, None, True, p.final_answer, 0))
            continue
        observation = fmt.observation(verdicts[job_of[i]])
        failed = fmt.is_error(observation)
        consecutive = errors + 1 if failed else 0
        text = sample.text
        shown = fmt.shows_output(text)
        if shown:
            text = fmt.with_output(text, observation)
        output = observation if shown else None
        if failed and consecutive >= errors_threshold:
            if not shown:
                text = fmt.with_output(text + CODE_END, observation)
            steps.append(StepResult(text, observation, True, TOO_MANY_ERRORS, consecutive))
        elif sample.finish_reason != "stop":
            steps.append(StepResult(text, output, True, None, consecutive))
        elif depth + 1 > ctx.budget.max_depth:
            steps.append(StepResult(text, output, True, TOO_MANY_STEPS, consecutive))
        else:
            steps.append(StepResult(text, output, False, None, consecutive))
    return steps
