"""``rstar sandbox exec``: run Python files through a step verifier and print each verdict as JSON."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import click

from rstar.errors import UnknownComponentError
from rstar.types import CodeJob


@click.group(name="sandbox")
def sandbox() -> None:
    """Run code in the sandboxes (step verifiers) that search uses."""


@sandbox.command(name="exec")
@click.option(
    "--verifier", "verifier_name", default="subprocess", show_default=True, help="verifier to run the files in"
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="wall-clock limit per file in seconds [default: the verifier's timeout_s]",
)
@click.argument("files", nargs=-1, required=True, type=click.File("r", encoding="utf-8"))
def exec_files(verifier_name: str, timeout: float | None, files: tuple[Any, ...]) -> None:
    """Run each FILE ('-' reads stdin) as one job and print one verdict per file, in order, as a JSON line.

    The exit status is 0 whatever the programs did; their failures are in the verdicts.
    """
    from rstar.registry import get_registry

    programs = [f.read() for f in files]
    try:
        verifier = get_registry().build("verifier", {"name": verifier_name})
    except UnknownComponentError as exc:
        raise click.BadParameter(str(exc), param_hint="'--verifier'") from None
    jobs = [_job(program, timeout) for program in programs]
    for verdict in asyncio.run(_run_and_close(verifier, jobs)):
        click.echo(json.dumps(verdict.to_dict()))


async def _run_and_close(verifier: Any, jobs: list[CodeJob]) -> list[Any]:
    try:
        return list(await verifier.run(jobs))
    finally:
        close = getattr(verifier, "close", None)
        if close is not None:
            closing = close()
            if inspect.isawaitable(closing):
                await closing


def _job(program: str, timeout: float | None) -> CodeJob:
    """A job with the verifier's own limits, except the time limit when --timeout is given."""
    return CodeJob(program=program, timeout_s=timeout)
