"""The report of a run, a search or a comparison: ``report.md`` (tables) and ``report.png`` (plots).

Built from the ``summary.json`` files a folder holds, nothing else, so it can be written for any folder at any
time: after every round of ``rstar run`` (this plugin's ``round_end`` hook) and by ``rstar report FOLDER``. Three
kinds of folder are understood:

* a **run** (``rstar run``: ``round_<k>/<stage>/``): one row per round (problems searched and solved, the
  search's accuracy, SFT examples and PPM pairs extracted, the trainers' final metrics, each ``evaluate``
  run's accuracy);
* a **search** (``rstar search``: ``search/``), or one search's own folder;
* a **comparison** (``rstar compare``: ``cells/<label>/<budget>/search/``).

For every kind: a table of every search in the folder (``rescore-<name>/`` re-scorings of ``rstar rescore``
included) with its accuracy and spend, and where the time went, stage by stage (a comparison: cell by cell).
The plot has up to three panels: accuracy per round (runs), accuracy against generated tokens per problem
(every search; the searches of one series, such as ``evaluate/greedy`` across rounds or one strategy across
budgets, joined by a line) and the time per stage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rstar.errors import RstarError
from rstar.rundir import write_atomic

COLUMNS = (
    ("round", "round"),
    ("solved", "solved"),
    ("search_acc", "search acc."),
    ("sft_examples", "SFT examples"),
    ("pairs", "PPM pairs"),
    ("sft_loss", "SFT loss"),
    ("ppm_acc", "PPM held-out acc."),
    ("minutes", "minutes"),
)
ROUND = re.compile(r"^round_(\d+)$")
Kind = Literal["run", "search", "compare"]
PLOT_MISSING = "(no plot: install matplotlib, e.g. `pip install 'rstar[plot]'`)"


@dataclass(frozen=True)
class SearchRow:
    """One search found in a folder, from its ``summary.json``."""

    path: str
    """Its folder, relative to the reported folder (``round_1/evaluate/greedy``, ``cells/vote/samples_4/search``)."""
    series: str
    """What it is across rounds or budgets (``evaluate/greedy``, ``vote``): the line it belongs to in the plot."""
    point: str
    """Where it lies on that line: its round (``r1``) or budget (``samples_4``); empty when alone."""
    summary: dict[str, Any]

    @property
    def tokens_per_problem(self) -> float | None:
        problems = self.summary.get("problems") or 0
        tokens = self.summary.get("generated_tokens")
        return tokens / problems if problems and tokens is not None else None


@dataclass
class Report:
    """What a folder holds, read from its summaries: what `write_report` writes out."""

    folder: Path
    kind: Kind
    rounds: list[dict[str, Any]] = field(default_factory=list)
    searches: list[SearchRow] = field(default_factory=list)
    times: dict[str, dict[str, float]] = field(default_factory=dict)
    """Group (``round 1``, a cell, ``search``) -> stage -> seconds, in the order they ran."""


# --- reading -----------------------------------------------------------------------------------------


def folder_kind(folder: Path) -> Kind:
    """Which kind of folder ``folder`` is; an error saying what was expected when it is none of them."""
    if (folder / "cells").is_dir() or (folder / "compare.json").is_file():
        return "compare"
    if any(ROUND.match(p.name) and p.is_dir() for p in folder.glob("round_*")):
        return "run"
    if (folder / "search" / "summary.json").is_file() or "strategy" in _read(folder / "summary.json"):
        return "search"
    raise RstarError(
        f"{folder}: not a run, search or compare folder with results (no round_<k>/, search/summary.json, "
        "summary.json or cells/ in it); give the output_dir of `rstar run`, `rstar search` or `rstar compare`"
    )


def read_report(folder: str | Path) -> Report:
    """Every summary of ``folder`` (a run, a search or a comparison), gathered for the report."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RstarError(f"{folder}: no such folder")
    report = Report(folder, folder_kind(folder))
    if report.kind == "run":
        report.rounds = round_rows(folder)
    report.searches = search_rows(folder, _stage_order(folder))
    report.times = stage_times(folder, report.kind, report.searches)
    return report


def round_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One dict per round folder that has at least one finished stage."""
    rows = []
    for k, folder in _rounds(run_dir):
        stages = {p.parent.name: _read(p) for p in folder.glob("*/summary.json")}
        if not stages:
            continue
        search = stages.get("search", {})
        extract = stages.get("extract", {})
        sft = stages.get("train_sft", {})
        ppm = stages.get("train_ppm", {})
        evaluate = stages.get("evaluate", {}).get("runs", {})
        row: dict[str, Any] = {
            "round": k,
            "problems": search.get("problems"),
            "solved": search.get("solved"),
            "search_acc": search.get("accuracy"),
            "sft_examples": extract.get("sft_records"),
            "pairs": _pairs(extract),
            "sft_loss": sft.get("train_loss"),
            "ppm_acc": ppm.get("val_accuracy"),
            "minutes": round(sum(_seconds(s) for s in stages.values()) / 60, 1),
            "eval": {label: run.get("accuracy") for label, run in evaluate.items()},
        }
        rows.append(row)
    return rows


def search_rows(folder: Path, stages: Sequence[str] = ()) -> list[SearchRow]:
    """Every search under ``folder`` (a ``summary.json`` naming a strategy), in the order they ran: by round,
    then by stage (in the order of ``stages``), then as the folders sort; a search's re-scorings right after it."""
    found = []
    for path in folder.rglob("summary.json"):
        summary = _read(path)
        if "strategy" not in summary:
            continue
        parts = path.parent.relative_to(folder).parts
        series, point = _series(parts)
        found.append(SearchRow("/".join(parts) or ".", series, point, summary))

    def order(row: SearchRow) -> tuple[int, int, str]:
        first, _, rest = row.path.partition("/")
        match = ROUND.match(first)
        if match is None:
            return (-1, 0, row.path)
        stage = rest.split("/", 1)[0]
        return (int(match.group(1)), stages.index(stage) if stage in stages else len(stages), row.path)

    return sorted(found, key=order)


def _series(parts: Sequence[str]) -> tuple[str, str]:
    """The series and the point of a search folder: rounds and budgets are points on one series."""
    if parts and ROUND.match(parts[0]):
        return "/".join(parts[1:]), f"r{ROUND.match(parts[0]).group(1)}"  # type: ignore[union-attr]
    if len(parts) >= 3 and parts[0] == "cells":
        rest = [p for p in parts[3:] if p != "search"]
        return "/".join([parts[1], *rest]), parts[2]
    return "/".join(parts) or "search", ""


def stage_times(folder: Path, kind: Kind, searches: Sequence[SearchRow]) -> dict[str, dict[str, float]]:
    """Where the time went: per round, each stage's seconds (a run); per cell, its search (a comparison); the
    search (a search folder). Re-scorings are not stages and are left out."""
    times: dict[str, dict[str, float]] = {}
    if kind == "run":
        order = _stage_order(folder)
        for k, round_dir in _rounds(folder):
            stages = {p.parent.name: _seconds(_read(p)) for p in round_dir.glob("*/summary.json")}
            if stages:
                times[f"round {k}"] = stages
        # Columns in the recipe's order of stages, whichever round has them.
        columns = sorted({s for row in times.values() for s in row}, key=lambda s: (_index(order, s), s))
        return {group: {s: row[s] for s in columns if s in row} for group, row in times.items()}
    for row in searches:
        if "rescore-" in row.path:
            continue
        group = f"{row.series} {row.point}".strip() if kind == "compare" else row.path
        times[group] = {"search": _seconds(row.summary)}
    return times


def _index(items: Sequence[str], item: str) -> int:
    return items.index(item) if item in items else len(items)


def _stage_order(run_dir: Path) -> list[str]:
    """The stages in the order the run's recipe lists them."""
    stages = _read_yaml(run_dir / "config.yaml").get("stages")
    return [str(s) for s in stages] if isinstance(stages, list) else []


def _rounds(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in run_dir.glob("round_*") if p.is_dir() and (m := ROUND.match(p.name))]
    return sorted(found)


def _pairs(extract: dict[str, Any]) -> int | None:
    if "pairs" in extract and isinstance(extract["pairs"], int):
        return int(extract["pairs"])
    parts = [extract.get(k) for k in ("step_pairs", "final_pairs")]
    numbers = [int(p) for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


def _seconds(summary: dict[str, Any]) -> float:
    value = summary.get("seconds")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# --- Markdown --------------------------------------------------------------------------------------


def _fmt(key: str, value: Any, row: dict[str, Any]) -> str:
    if value is None:
        return "–"
    if key == "solved" and row.get("problems") is not None:
        return f"{value}/{row['problems']}"
    if key.endswith("acc") or key == "eval":
        return f"{100 * float(value):.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rounds' table: fixed columns, then one column per evaluation run."""
    labels = sorted({label for row in rows for label in row["eval"]})
    header = [title for _, title in COLUMNS] + [f"eval: {label}" for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt(key, row.get(key), row) for key, _ in COLUMNS]
        cells += [_fmt("eval", row["eval"].get(label), row) for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def searches_table(rows: Sequence[SearchRow]) -> str:
    """One row per search: its folder, strategy, accuracy and what it spent."""
    header = ["search", "strategy", "problems", "accuracy", "solved", "tokens/problem", "reward calls", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        s = row.summary
        accuracy = s.get("accuracy")
        per_problem = row.tokens_per_problem
        cells = [
            f"`{row.path}`",
            str(s.get("strategy", "")),
            str(s.get("problems", "–")),
            "–" if accuracy is None else f"{100 * accuracy:.1f}%",
            str(s.get("solved", "–")),
            "–" if per_problem is None else f"{per_problem:.0f}",
            str(s.get("reward_calls", "–")),
            f"{_seconds(s):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def times_table(times: dict[str, dict[str, float]], what: str) -> str:
    """Seconds per stage (columns) of each group (rows), with each row's total."""
    stages = _columns(times)
    header = [what, *stages, "total"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for group, row in times.items():
        cells = [group] + [f"{row[s]:.1f}" if s in row else "–" for s in stages] + [f"{sum(row.values()):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _columns(times: dict[str, dict[str, float]]) -> list[str]:
    """The stages of ``times``: every row lists its stages in one order (`stage_times`); a stage goes after the
    stages it follows in any row."""
    columns: list[str] = []
    for row in times.values():
        for stage in row:
            if stage not in columns:
                later = [c for c in columns if c in row and list(row).index(c) > list(row).index(stage)]
                columns.insert(columns.index(later[0]) if later else len(columns), stage)
    return columns


def markdown(report: Report, title: str | None = None, plot: str | None = None) -> str:
    """The whole ``report.md``; ``plot`` is the PNG's file name, None when none was drawn."""
    heading = {"run": "rstar run", "search": "rstar search", "compare": "rstar compare"}[report.kind]
    text = f"# {title or heading}: {report.folder}\n\n"
    if report.kind == "run":
        text += "## Rounds\n\n" + markdown_table(report.rounds)
        text += "\nsolved: problems with at least one correct answer in their search tree; search acc.: the search's "
        text += "chosen answers; eval: accuracy of each `evaluate` run on the held-out problems.\n\n"
    if report.searches:
        text += "## Searches\n\n" + searches_table(report.searches)
        text += "\naccuracy: the chosen answers; solved: problems with a correct answer anywhere in the tree; "
        text += "tokens/problem: generated by the policy.\n\n"
    if report.times:
        what = {"run": "round", "search": "search", "compare": "cell"}[report.kind]
        text += "## Time per stage (seconds)\n\n" + times_table(report.times, what) + "\n"
    text += f"![report]({plot})\n" if plot is not None else PLOT_MISSING + "\n"
    return text


# --- the plot -----------------------------------------------------------------------------------------


def plot(report: Report, path: Path) -> bool:
    """Draw ``report.png``: accuracy per round (a run), accuracy against tokens per problem, time per stage.
    False when matplotlib is not installed or there is nothing to draw."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels = []
    if report.rounds:
        panels.append(_accuracy_per_round)
    if any(r.summary.get("accuracy") is not None and r.tokens_per_problem for r in report.searches):
        panels.append(_accuracy_vs_tokens)
    if report.times:
        panels.append(_time_per_stage)
    if not panels:
        return False
    fig = Figure(figsize=(6 * len(panels), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, draw in zip(axes, panels, strict=True):
        draw(ax, report)
    fig.savefig(path, dpi=120)
    return True


def _accuracy_per_round(ax: Any, report: Report) -> None:
    rows = report.rounds
    rounds = [r["round"] for r in rows]
    solved = [r["solved"] / r["problems"] if r.get("problems") and r.get("solved") is not None else None for r in rows]
    if any(v is not None for v in solved):
        ax.plot(rounds, [v if v is not None else float("nan") for v in solved], "k--o", label="search: solved")
    for label in sorted({label for r in rows for label in r["eval"]}):
        values = [r["eval"].get(label) for r in rows]
        ax.plot(rounds, [v if v is not None else float("nan") for v in values], "-o", label=f"eval: {label}")
    ax.set_title("accuracy per round")
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
    ax.set_ylabel("fraction of problems")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="best", fontsize=8)


def _accuracy_vs_tokens(ax: Any, report: Report) -> None:
    series = list(dict.fromkeys(r.series for r in report.searches))
    for index, name in enumerate(series):
        points = [r for r in report.searches if r.series == name and r.summary.get("accuracy") is not None]
        points = [r for r in points if r.tokens_per_problem]
        if not points:
            continue
        color = f"C{index % 10}"
        xs = [r.tokens_per_problem for r in points]
        ys = [r.summary["accuracy"] for r in points]
        ax.plot(xs, ys, "-o", color=color, label=name)
        for x, y, r in zip(xs, ys, points, strict=True):
            if r.point:
                ax.annotate(r.point, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_title("accuracy vs. tokens")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)


def _time_per_stage(ax: Any, report: Report) -> None:
    groups = list(report.times)
    stages = _columns(report.times)
    minutes = max(sum(row.values()) for row in report.times.values()) >= 600
    scale, unit = (60.0, "minutes") if minutes else (1.0, "seconds")
    left = [0.0] * len(groups)
    for index, stage in enumerate(stages):
        widths = [report.times[g].get(stage, 0.0) / scale for g in groups]
        ax.barh(groups, widths, left=left, color=f"C{index % 10}", label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()  # the first round (or cell) on top
    ax.set_title("time per stage")
    ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)
    if len(stages) > 1:
        ax.legend(loc="best", fontsize=7)


# --- writing ------------------------------------------------------------------------------------------


def write_report(folder: str | Path, out_dir: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``report.md`` and (with matplotlib) ``report.png`` for a run, search or compare folder into
    ``out_dir`` (default: the folder itself); return the Markdown's path."""
    report = read_report(folder)
    target = Path(out_dir) if out_dir is not None else report.folder
    target.mkdir(parents=True, exist_ok=True)
    png = target / "report.png"
    drawn = plot(report, png)
    path = target / "report.md"
    write_atomic(path, markdown(report, title, png.name if drawn else None))
    return path


__all__ = ["Report", "SearchRow", "markdown", "markdown_table", "read_report", "round_rows", "write_report"]
