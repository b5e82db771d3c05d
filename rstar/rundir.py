"""Run-folder I/O, in one place: atomic writes, JSON Lines, tree files and stage done-markers.

Everything rstar writes into a run folder goes through here, so that a crash never leaves half a
file: whole files are written to a temporary name and renamed over the target; ``trees.jsonl`` is
appended one fsynced line per finished problem, and a last line cut short by a crash is dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rstar.errors import DataError, RstarError
from rstar.types import Tree

DONE = "DONE"
"""The marker file a finished stage leaves in its folder; a re-run skips that stage."""
SUMMARY = "summary.json"
TREES = "trees.jsonl"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, then rename it over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, atomically (streamed to a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file (blank lines skipped). Errors name the file and line: a line that is
    not JSON, not an object, or lacks one of the ``required`` keys."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    required = tuple(required)
    records = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i}: not a JSON line ({exc})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(record).__name__}")
            missing = [key for key in required if key not in record]
            if missing:
                raise DataError(f"{path}:{i}: missing key(s) {', '.join(missing)}")
            records.append(record)
    return records


class JsonlAppender:
    """Appends one JSON object per line, flushed and fsynced: a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def append(self, record: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trees(path: Path, repair: bool = False) -> dict[str, Tree]:
    """Trees of a ``trees.jsonl`` by problem id. With ``repair``, a last line cut short by a crash is
    removed from the file (its problem will be searched again)."""
    trees: dict[str, Tree] = {}
    if not path.exists():
        return trees
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good: list[str] = []
    for i, line in enumerate(lines):
        try:
            tree = Tree.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            if i == len(lines) - 1 and repair:
                break
            raise RstarError(f"{path}:{i + 1}: not a tree line ({exc})") from None
        trees[tree.id] = tree
        good.append(line if line.endswith("\n") else line + "\n")
    if repair and len(good) != len(lines):
        write_atomic(path, "".join(good))
    return trees


def is_done(folder: Path) -> bool:
    """Whether the stage that writes ``folder`` finished."""
    return (folder / DONE).exists()


def read_summary(folder: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished stage."""
    return json.loads((folder / SUMMARY).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def mark_done(folder: Path, summary: Mapping[str, Any]) -> None:
    """Write the stage's summary, then its done-marker (in that order: a marker always has a summary)."""
    write_json(folder / SUMMARY, dict(summary))
    (folder / DONE).touch()


PLACEMENT_KEYS = ("executor",)
"""Recipe keys that say where a search runs, not what it computes (trees are the same whichever worker grows
them): a run may be resumed with them changed."""


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the keys whose values differ between two recipes."""
    keys = sorted(set(old) | set(new))
    changed: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += changed_keys(a, b, path + ".")
        elif a != b:
            changed.append(path)
    return changed
