"""Bundled plugin: searches split into shards without Ray, for batch schedulers (Slurm arrays), and merged back.

It registers the recipe section ``shard`` (``shard: i/N``: search only slice i of N of every search's problems,
typed as `rstar.executors.Shard`) and the command ``rstar merge SHARD_DIR... -o RUN``
(`rstar_shard.merge`), which makes one run folder of the N shard folders.
"""

from __future__ import annotations

from typing import Any

from rstar import hookimpl
from rstar.config import RecipeChecker
from rstar.executors import Shard
from rstar.hookspecs import RegisterFn


def check_shard(value: Any, data: Any, checker: RecipeChecker, path: str) -> tuple[Shard | None, list[str]]:
    """The ``shard`` section, as registered with ``register_sections``: ``i/N`` as a `Shard`."""
    try:
        return Shard.parse(value), []
    except ValueError as exc:
        return None, [f"{path}: {exc}"]


@hookimpl
def register_sections(register: RegisterFn) -> None:
    register("shard", "rstar_shard:check_shard", description="i/N: search only the i-th of N slices of the problems")


@hookimpl
def register_commands(register: RegisterFn) -> None:
    register("merge", "rstar_shard.merge:merge", description="merge the run folders of N shards into one")
