"""What the viewer shows, computed from tree files: where the trees of a folder are, each problem's status,
each node's outcome and the path to the chosen answer.

A *source* is one ``trees.jsonl``: the one file given, or each file under a folder — a search
(``search/trees.jsonl``), a run (``round_<k>/search/``, ``round_<k>/evaluate/<name>/``, ...) or a compare
folder (``cells/<label>/<axis>_<budget>/search/``, shown as ``label@budget``). Trees are read as plain JSON
(the tree format of ARCHITECTURE.md section 6) so that a tree written by another rstar version still shows;
a file is read incrementally, one whole line at a time, so a search still appending to it is followed.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstar.errors import DataError
from rstar.rundir import TREES
from rstar.steps import SENTINELS, TOO_MANY_ERRORS, TOO_MANY_STEPS, StepFormat

OUTCOMES = ("root", "step", "correct", "wrong", "answer", "error", "cut", "open")
"""Node outcomes (`node_outcomes`), in the order of the page's legend."""

STATUSES = ("correct", "wrong", "unanswered", "unchecked")
"""Problem statuses (`problem_status`)."""

_CELL = re.compile(r"(samples|tokens)_(\d+)")


def problem_status(tree: Mapping[str, Any]) -> str:
    """``correct``: the chosen answer equals the reference; ``wrong``: it does not; ``unanswered``: the search
    chose no answer; ``unchecked``: an answer, but no reference to check it against."""
    if tree.get("correct") is True:
        return "correct"
    if tree.get("prediction") is None:
        return "unanswered"
    if tree.get("correct") is False:
        return "wrong"
    return "unchecked"


def node_outcomes(nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each node's outcome, from its fields (the rules of `rstar_search.expand.make_steps`):

    * ``root`` — the empty root step;
    * ``correct`` / ``wrong`` / ``answer`` — a final answer, equal to the reference or not, or not checked;
    * ``error`` — a code error: a "too many code errors" leaf, or a step whose interpreter output shows an
      error (`rstar.steps.StepFormat.is_error`, the rule the search itself applies);
    * ``cut`` — a leaf ended without an answer: "too many steps", or a sample that stopped without one;
    * ``step`` — an inner step that has children;
    * ``open`` — a leaf that is not terminal: the search would have expanded it further.
    """
    parents = {n.get("parent") for n in nodes}
    outcomes = []
    for node in nodes:
        answer = node.get("final_answer")
        output = node.get("output")
        if node.get("parent") is None:
            outcome = "root"
        elif answer == TOO_MANY_ERRORS:
            outcome = "error"
        elif answer == TOO_MANY_STEPS:
            outcome = "cut"
        elif answer is not None:
            correct = node.get("correct")
            outcome = "correct" if correct is True else "wrong" if correct is False else "answer"
        elif isinstance(output, str) and StepFormat.is_error(output):
            outcome = "error"
        elif node.get("id") in parents:
            outcome = "step"
        elif node.get("terminal"):
            outcome = "cut"
        else:
            outcome = "open"
        outcomes.append(outcome)
    return outcomes


def chosen_node(tree: Mapping[str, Any]) -> str | None:
    """The node of the tree's chosen answer (``prediction``): of the nodes whose final answer is exactly the
    prediction, the one with the highest Q-value, then the most visits, then the shallowest, then the first in
    the file. None when there is no prediction or no node carries it."""
    prediction = tree.get("prediction")
    if prediction is None or prediction in SENTINELS:
        return None
    best: tuple[float, int, int, int] | None = None
    chosen = None
    for index, node in enumerate(tree.get("nodes", ())):
        if node.get("final_answer") != prediction:
            continue
        key = (float(node.get("q_value") or 0.0), int(node.get("visits") or 0), -int(node.get("depth") or 0), -index)
        if best is None or key > best:
            best, chosen = key, node.get("id")
    return str(chosen) if chosen is not None else None


def path_to(nodes: Sequence[Mapping[str, Any]], node_id: str | None) -> list[str]:
    """The ids from the root down to ``node_id`` (empty for None)."""
    parent_of = {n.get("id"): n.get("parent") for n in nodes}
    path: list[str] = []
    current = node_id
    while current is not None and current in parent_of and current not in path:
        path.append(current)
        current = parent_of[current]
    return path[::-1]


def tree_view(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The tree as the page draws it: its own fields, plus ``status``, ``chosen`` (a node id or None), ``path``
    (root to chosen) and each node's ``outcome``."""
    nodes = list(tree.get("nodes", ()))
    chosen = chosen_node(tree)
    return {
        **tree,
        "status": problem_status(tree),
        "chosen": chosen,
        "path": path_to(nodes, chosen),
        "nodes": [{**n, "outcome": o} for n, o in zip(nodes, node_outcomes(nodes), strict=True)],
    }


def problem_entry(source: str, tree: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the page's problem list: what the list shows and filters on, without the nodes."""
    usage = tree.get("usage") or {}
    return {
        "source": source,
        "id": str(tree.get("id")),
        "question": tree.get("question", ""),
        "answer": tree.get("answer"),
        "strategy": tree.get("strategy", ""),
        "prediction": tree.get("prediction"),
        "status": problem_status(tree),
        "nodes": len(tree.get("nodes", ())),
        "tokens": usage.get("generated_tokens", 0) if isinstance(usage, Mapping) else 0,
    }


# --- sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One trees file: ``key`` is its folder relative to the folder given (``.`` for the folder itself, the
    file's name for a file given directly); ``label`` is how the page names it."""

    key: str
    label: str
    path: Path


def _natural(text: str) -> list[Any]:
    """Sort key: ``round_2`` before ``round_10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def source_label(relative: str) -> str:
    """``cells/<label>/samples_<n>/search`` (a compare cell) → ``label@n`` (``label@n tokens`` on the tokens
    axis); any other folder keeps its relative path."""
    parts = relative.split("/")
    if len(parts) == 4 and parts[0] == "cells" and parts[3] == "search":
        cell = _CELL.fullmatch(parts[2])
        if cell:
            return f"{parts[1]}@{cell.group(2)}" + (" tokens" if cell.group(1) == "tokens" else "")
    return relative


def find_sources(target: Path) -> list[Source]:
    """The trees files of ``target``: the file itself, or every ``trees.jsonl`` under the folder, in natural
    order of their folders. A folder without one yet gives an empty list (a search that has not finished a
    problem); a path that does not exist is a `DataError`."""
    if target.is_file():
        return [Source(target.name, str(target), target)]
    if not target.is_dir():
        raise DataError(f"{target}: no such file or folder; give a run, search or compare folder, or a trees.jsonl")
    found = []
    for path in target.rglob(TREES):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(target).parts[:-1]):
            continue
        relative = path.parent.relative_to(target).as_posix()
        label = source_label(relative) if relative != "." else (target.resolve().name or str(target))
        found.append(Source(relative, label, path))
    return sorted(found, key=lambda s: _natural(s.key))


@dataclass(frozen=True)
class Entry:
    """Where one problem's tree is in its file, and what the problem list shows of it (`problem_entry`)."""

    offset: int
    length: int
    summary: dict[str, Any]


@dataclass
class TreeFile:
    """A trees file read incrementally: each `refresh` reads the whole lines appended since the last one (a line
    still being written waits for its newline). A file that shrank or was replaced is read again from the start.
    A later line for a problem replaces an earlier one, as `rstar.rundir.read_trees` does. Lines that are not
    trees are skipped and listed in ``warnings``.

    Only each tree's summary and place in the file are kept (``entries``); `read` parses the whole tree when it
    is asked for, so a run with gigabytes of trees does not have to fit in memory."""

    path: Path
    entries: dict[str, Entry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    generation: int = 0
    """Counts the changes: a new value whenever ``entries`` changed."""
    _signature: tuple[int, int, int] | None = None
    _offset: int = 0
    _newlines: int = 0

    CHUNK = 1 << 24

    def refresh(self, final: bool = False) -> bool:
        """Read what was appended; True when the trees changed. ``final``: the file is complete, so a last line
        without a newline is read too."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            changed = bool(self.entries)
            self._reset()
            return changed
        signature = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if signature == self._signature:
            return False
        changed = False
        if self._signature is not None and (stat.st_ino != self._signature[2] or stat.st_size < self._offset):
            changed = bool(self.entries)
            self._reset()
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            pending = b""
            while chunk := fh.read(self.CHUNK):
                pending += chunk
                end = pending.rfind(b"\n") + 1
                for raw in pending[:end].split(b"\n")[:-1]:
                    changed |= self._add(raw)
                    self._offset += len(raw) + 1
                    self._newlines += 1
                pending = pending[end:]
        if pending.strip() and (final or _is_json(pending)):
            # A last line without a newline: a file written by hand, or the end of a finished one.
            changed |= self._add(pending)
            self._offset += len(pending)
        self._signature = signature if self._offset == stat.st_size else None
        if changed:
            self.generation += 1
        return changed

    def read(self, problem: str) -> dict[str, Any] | None:
        """The whole tree of ``problem`` as it is in the file, or None."""
        entry = self.entries.get(problem)
        if entry is None:
            return None
        try:
            with self.path.open("rb") as fh:
                fh.seek(entry.offset)
                record = json.loads(fh.read(entry.length))
        except (OSError, ValueError):
            return None  # replaced since the last refresh: the next one finds it again
        return record if isinstance(record, dict) and str(record.get("id")) == problem else None

    def _reset(self) -> None:
        self.entries, self.warnings, self._signature, self._offset, self._newlines = {}, [], None, 0, 0
        self.generation += 1

    def _add(self, raw: bytes) -> bool:
        if not raw.strip():
            return False
        where = f"{self.path}:{self._newlines + 1}"
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.warnings.append(f"{where}: not a JSON line ({exc})")
            return False
        if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("nodes"), list):
            self.warnings.append(f"{where}: not a tree (a JSON object with 'id' and 'nodes')")
            return False
        summary = problem_entry("", record)
        del summary["source"]
        self.entries[str(record["id"])] = Entry(self._offset, len(raw), summary)
        return True


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


class TreeStore:
    """The trees of one file or folder, kept up to date: `refresh` finds new trees files and reads what was
    appended to the known ones (at most once per ``min_interval_s``). Safe to use from several threads."""

    KEEP_VIEWS = 32
    """Trees kept ready to serve again (the ones on screen, mostly)."""

    def __init__(self, target: Path, min_interval_s: float = 0.5) -> None:
        self.target = target
        self.min_interval_s = min_interval_s
        self._files: dict[str, tuple[Source, TreeFile]] = {}
        self._views: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._last = -float("inf")
        self.version = ""

    def refresh(self, final: bool = False, force: bool = False) -> str:
        """Look again; returns the version, a string that changes whenever the trees do."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.min_interval_s:
                return self.version
            self._last = now
            # A folder removed while it is served (a run started again) has no trees until it is back.
            sources = find_sources(self.target) if self.target.exists() else []
            keys = {s.key for s in sources}
            for key in [k for k in self._files if k not in keys]:
                del self._files[key]
            for source in sources:
                if source.key not in self._files:
                    self._files[source.key] = (source, TreeFile(source.path))
                self._files[source.key][1].refresh(final=final)
            self._files = {s.key: self._files[s.key] for s in sources}
            digest = hashlib.sha1()
            for key, (_, file) in self._files.items():
                digest.update(f"{key}\0{file.generation}\n".encode())
            self.version = digest.hexdigest()[:16]
            return self.version

    def index(self) -> dict[str, Any]:
        """The sources and the problem list (no nodes)."""
        with self._lock:
            sources: list[dict[str, Any]] = []
            problems: list[dict[str, Any]] = []
            warnings: list[str] = []
            for key, (source, file) in self._files.items():
                entries = file.entries.values()
                strategies = sorted({str(e.summary["strategy"]) for e in entries})
                sources.append({"key": key, "label": source.label, "trees": len(entries), "strategies": strategies})
                problems.extend({"source": key, **e.summary} for e in entries)
                warnings.extend(file.warnings)
            return {
                "version": self.version,
                "target": str(self.target),
                "report": self.report() is not None,
                "sources": sources,
                "problems": problems,
                "warnings": warnings,
            }

    def report(self) -> Path | None:
        """The folder's ``report.md`` (written by `rstar run` and `rstar report`), when it has one."""
        folder = self.target if self.target.is_dir() else self.target.parent
        path = folder / "report.md"
        return path if path.is_file() else None

    def tree(self, source: str, problem: str) -> dict[str, Any] | None:
        """One problem's tree of one source, as `tree_view` makes it, or None. The last few are kept."""
        with self._lock:
            file = self._files[source][1] if source in self._files else None
            entry = file.entries.get(problem) if file else None
            if file is None or entry is None:
                return None
            key = (source, problem, entry.offset)
            view = self._views.get(key)
            if view is not None:
                self._views.move_to_end(key)
                return view
            tree = file.read(problem)
        if tree is None:
            return None
        view = tree_view(tree)
        with self._lock:
            self._views[key] = view
            while len(self._views) > self.KEEP_VIEWS:
                self._views.popitem(last=False)
        return view

    def all_trees(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every tree by source and problem id, as `tree_view` makes it (for a page with the trees embedded)."""
        with self._lock:
            files = [(key, file) for key, (_, file) in self._files.items()]
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key, file in files:
            for problem in list(file.entries):
                tree = file.read(problem)
                if tree is not None:
                    out.setdefault(key, {})[problem] = tree_view(tree)
        return out
