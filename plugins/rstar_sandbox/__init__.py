"""Bundled plugin: step verifiers that run model-written code outside the rstar process."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_verifiers(register: RegisterFn) -> None:
    register(
        "subprocess",
        "rstar_sandbox.subprocess_verifier:SubprocessVerifier",
        description="each job forked from a warm, sandboxed (bubblewrap) worker, with limits and a deadline",
    )
    register(
        "docker",
        "rstar_sandbox.docker_verifier:DockerVerifier",
        description="the subprocess verifier's warm workers, each in a locked-down container",
    )


@hookimpl
def register_commands(register: RegisterFn) -> None:
    register("sandbox", "rstar_sandbox.cli:sandbox", description="run code through a step verifier")
