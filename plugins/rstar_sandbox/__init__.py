"""Bundled plugin: step verifiers that run model-written code outside the rstar process."""

from __future__ import annotations

from rstar import hookimpl
from rstar.registry import RegisterFn


@hookimpl
def register_verifiers(register: RegisterFn) -> None:
    register(
        "subprocess",
        "rstar_sandbox.subprocess_verifier:SubprocessVerifier",
        description="each job in a fresh Python process with a timeout",
    )


@hookimpl
def register_commands(register: RegisterFn) -> None:
    register("sandbox", "rstar_sandbox.cli:sandbox", description="run code through a step verifier")
