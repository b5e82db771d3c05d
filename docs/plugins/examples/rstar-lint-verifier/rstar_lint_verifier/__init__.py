"""The ``lint`` verifier: a static check on each program, then another verifier runs what passes."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from rstar import CodeJob, Options, RegisterFn, Verdict, hookimpl
from rstar.registry import get_registry


class LintOptions(Options):
    """Options of the ``lint`` verifier."""

    forbidden: list[str] = Field(
        default_factory=lambda: ["os", "subprocess", "socket", "shutil", "ctypes"],
        description="modules a program may not import",
    )
    inner: dict[str, Any] = Field(
        default_factory=lambda: {"name": "subprocess"},
        description="the verifier that runs the programs that pass, as in a recipe",
    )


def lint(program: str, forbidden: Sequence[str]) -> str | None:
    """Why ``program`` is refused, or None. A syntax error is left to the inner verifier to report."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Name) and node.id == "__import__":
            return "__import__ is not allowed"
        else:
            continue
        for name in names:
            if name.split(".")[0] in forbidden:
                return f"import of {name!r} is not allowed"
    return None


class LintVerifier:
    """Refuses programs that import a forbidden module; hands the others to the inner verifier."""

    Options = LintOptions

    def __init__(self, options: LintOptions) -> None:
        self.options = options
        self.inner = get_registry().build("verifier", options.inner)

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        problems = [lint(job.program, self.options.forbidden) for job in jobs]
        passed = [job for job, problem in zip(jobs, problems, strict=True) if problem is None]
        verdicts = iter(await self.inner.run(passed))
        return [
            next(verdicts) if problem is None else Verdict("error", "", f"LintError: {problem}") for problem in problems
        ]

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


@hookimpl
def register_verifiers(register: RegisterFn) -> None:
    register("lint", LintVerifier, description="a static check on each program, then another verifier")
