"""``rstar merge SHARD_DIR... -o RUN``: the run folders of the N shards of a search made into one run folder.

Each shard is a run of the same recipe with ``shard=i/N`` and its own ``output_dir`` (a Slurm array task per
shard, say). Merging checks that the folders are the N shards of one recipe (each ``i`` once, the recipes
equal but for ``shard`` and ``output_dir``) and that every search in them is finished, then writes into RUN:

* ``config.yaml``: the recipe without ``shard``, with ``output_dir: RUN``; ``plugins.json`` and
  ``environment.json`` of the first shard;
* per search folder (``search/``, ``round_<k>/<stage>/``): ``trees.jsonl``, the shards' trees in shard order
  (a problem found twice is kept once), ``summary.json`` recomputed from them (`rstar.runner.search_summary`;
  ``seconds`` is the longest shard's, they ran side by side) and the ``DONE`` marker; per round whose shards
  finished it, ``round_<k>/summary.json``.

So RUN reads as one run of the unsharded recipe: ``rstar extract``, the reports and a resumed ``rstar search``
(which finds the search done) work on it. Only searches merge: a shard folder holding a finished stage of
another kind (extract, training) is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from rstar.errors import RstarError
from rstar.executors import Shard
from rstar.rundir import (
    DONE,
    SUMMARY,
    TREES,
    changed_keys,
    mark_done,
    read_jsonl,
    read_summary,
    write_atomic,
    write_json,
    write_jsonl,
)
from rstar.runner import search_summary
from rstar.types import Tree

CONFIG = "config.yaml"
COPIED = ("plugins.json", "environment.json")
"""Files of the first shard copied into the merged run as they are."""
PER_SHARD = ("output_dir", "shard")
"""The recipe keys that differ between the shards of one search."""


@dataclass(frozen=True)
class MergedSearch:
    """One search folder of the merged run."""

    folder: str
    """Relative to the run folder (``search``, ``round_1/search``)."""
    problems: int
    duplicates: int
    """Trees dropped because an earlier shard had the same problem."""


def merge_shards(shards: Sequence[Path], output: Path) -> list[MergedSearch]:
    """Merge the run folders ``shards`` into ``output`` (see the module's docstring); an `RstarError` saying what
    to fix when they are not the finished shards of one search."""
    if not shards:
        raise RstarError("merge: give the shards' run folders")
    configs = [read_config(path) for path in shards]
    check_shards(shards, configs)
    if any(path.resolve() == output.resolve() for path in shards):
        raise RstarError(f"merge: the output folder {output} is one of the shards; choose a new folder")
    first = configs[0]
    merged_config = {k: v for k, v in first.items() if k != "shard"}
    merged_config["output_dir"] = str(output)
    searches = search_folders(shards)
    write_config(output, merged_config)
    for name in COPIED:
        if (shards[0] / name).is_file():
            shutil.copyfile(shards[0] / name, output / name)
    results = [merge_search(shards, output, folder) for folder in searches]
    write_round_summaries(shards, output, searches)
    return results


def read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG
    if not path.is_file():
        raise RstarError(f"merge: {run} is not a run folder (no {CONFIG})")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise RstarError(f"merge: {path} is not a recipe")
    return config


def check_shards(shards: Sequence[Path], configs: Sequence[dict[str, Any]]) -> None:
    """The folders are the N shards of one recipe, each once."""
    found: dict[int, Path] = {}
    counts = set()
    for path, config in zip(shards, configs, strict=True):
        if "shard" not in config:
            raise RstarError(f"merge: {path} is a run without shard=i/N, not a shard")
        try:
            shard = Shard.parse(config["shard"])
        except ValueError as exc:
            raise RstarError(f"merge: {path / CONFIG}: shard: {exc}") from None
        if shard.index in found:
            raise RstarError(f"merge: {found[shard.index]} and {path} are both shard {shard}")
        found[shard.index] = path
        counts.add(shard.count)
    if len(counts) > 1:
        raise RstarError(f"merge: the shards split the problems in different numbers of slices: {sorted(counts)}")
    (count,) = counts
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in found]
    if missing:
        raise RstarError(f"merge: shard {', '.join(missing)} missing; give all {count} shards' folders")
    base = {k: v for k, v in configs[0].items() if k not in PER_SHARD}
    for path, config in zip(shards[1:], configs[1:], strict=True):
        changed = changed_keys(base, {k: v for k, v in config.items() if k not in PER_SHARD})
        if changed:
            raise RstarError(
                f"merge: {path} ran a different recipe than {shards[0]} (changed: {', '.join(changed)}); "
                "the shards of one search differ only in shard and output_dir"
            )


def search_folders(shards: Sequence[Path]) -> list[str]:
    """The search folders of the shards (relative paths), each finished in every shard."""
    found: dict[str, None] = {}
    for run in shards:
        for folder in sorted(p for p in run.rglob("*") if p.is_dir()):
            relative = folder.relative_to(run).as_posix()
            if is_search(folder):
                found.setdefault(relative, None)
            elif (folder / DONE).exists():
                raise RstarError(f"merge: {folder} is a finished stage that is not a search; only searches merge")
    if not found:
        raise RstarError(f"merge: no search in {', '.join(str(s) for s in shards)}")
    for relative in found:
        for run in shards:
            if not (run / relative / DONE).exists():
                raise RstarError(
                    f"merge: {run / relative} is not finished (no {DONE} marker): run that shard's command again "
                    "to finish it, then merge"
                )
    return list(found)


def is_search(folder: Path) -> bool:
    if (folder / TREES).exists():
        return True
    return (folder / DONE).exists() and (folder / SUMMARY).is_file() and "strategy" in read_summary(folder)


def merge_search(shards: Sequence[Path], output: Path, relative: str) -> MergedSearch:
    records: dict[str, dict[str, Any]] = {}
    duplicates = 0
    summaries = [read_summary(run / relative) for run in shards]
    for run in shards:
        path = run / relative / TREES
        for record in read_jsonl(path, required=("id",)) if path.exists() else []:
            if record["id"] in records:
                duplicates += 1
                continue
            records[record["id"]] = record
    folder = output / relative
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / TREES, records.values())
    trees = [Tree.from_dict(r) for r in records.values()]
    seconds = max(float(s.get("seconds", 0.0)) for s in summaries)
    summary = search_summary(trees, seconds, str(summaries[0].get("strategy", "")))
    if "models" in summaries[0]:
        summary["models"] = summaries[0]["models"]
    summary["shards"] = len(shards)
    mark_done(folder, summary)
    return MergedSearch(relative, len(records), duplicates)


def write_round_summaries(shards: Sequence[Path], output: Path, searches: Sequence[str]) -> None:
    """``round_<k>/summary.json`` (every stage's summary) for each round that every shard finished."""
    rounds = sorted({s.split("/", 1)[0] for s in searches if "/" in s})
    for round_dir in rounds:
        if not all((run / round_dir / SUMMARY).is_file() for run in shards):
            continue
        stages = sorted(s.split("/", 1)[1] for s in searches if s.startswith(round_dir + "/"))
        summary = {stage: read_summary(output / round_dir / stage) for stage in stages}
        write_json(output / round_dir / SUMMARY, summary)


def write_config(output: Path, config: dict[str, Any]) -> None:
    """The merged run's recipe; a folder that holds another run already is refused."""
    path = output / CONFIG
    if path.is_file():
        changed = changed_keys(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, config)
        if changed:
            raise RstarError(f"merge: {output} holds a run of a different recipe (changed: {', '.join(changed)})")
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(config, sort_keys=False))


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="the merged run folder"
)
def merge(shards: tuple[Path, ...], output: Path) -> None:
    """Merge the run folders of the N shards of a search (run with shard=i/N) into one run folder.

    The shards must be the same recipe (but for shard and output_dir), each i of 1..N once, every search in
    them finished. OUTPUT gets the trees of every search, deduplicated, with summaries recomputed and done
    markers, and reads as one unsharded run.
    """
    from rstar.cli import out

    for merged in merge_shards(list(shards), output):
        dropped = f" ({merged.duplicates} duplicate trees dropped)" if merged.duplicates else ""
        out.print(f"{merged.folder}: {merged.problems} problems{dropped}")
    out.print(f"merged {len(shards)} shards into {output}")


__all__ = ["MergedSearch", "merge", "merge_shards"]
