"""Bundled plugin: the math-verify answer checker."""

from __future__ import annotations

from rstar import hookimpl
from rstar.registry import RegisterFn


@hookimpl
def register_answer_checkers(register: RegisterFn) -> None:
    register(
        "math_verify",
        "rstar_mathverify.checker:MathVerifyChecker",
        description="math-verify equivalence, run in worker processes so its timeouts work",
    )
