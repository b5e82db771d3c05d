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


@sandbox.command(name="build-image")
@click.option("--tag", default="rstar-sandbox:latest", show_default=True, help="name of the image to create")
@click.option("--suite", default="bookworm", show_default=True, help="Debian release to install")
@click.option("--mirror", default="http://deb.debian.org/debian", show_default=True, help="Debian mirror")
@click.option(
    "--packages",
    default="python3,python3-sympy,python3-numpy",
    show_default=True,
    help="comma-separated Debian packages to install",
)
def build_image(tag: str, suite: str, mirror: str, packages: str) -> None:
    """Build the docker verifier's image without a registry: debootstrap a minimal Debian, then import it.

    Needs root, debootstrap and a running Docker engine; the mirror may be a local one.
    """
    import shutil
    import subprocess
    import tarfile
    import tempfile

    from rstar_sandbox.docker_verifier import docker_client

    if shutil.which("debootstrap") is None:
        raise click.ClickException("debootstrap is not installed (Debian/Ubuntu: apt-get install debootstrap)")
    client = docker_client()
    with tempfile.TemporaryDirectory(prefix="rstar-image-") as tmp:
        root = f"{tmp}/root"
        command = ["debootstrap", "--variant=minbase", f"--include={packages}", suite, root, mirror]
        click.echo(f"$ {' '.join(command)}", err=True)
        if subprocess.run(command, check=False).returncode != 0:
            raise click.ClickException("debootstrap failed (see above)")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(f"{root}/{cache}", ignore_errors=True)
        archive = f"{tmp}/root.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
        client.api.import_image(src=archive, repository=repository, tag=version)
    image = client.images.get(tag)
    click.echo(f"built {tag} ({image.id[:19]})")
