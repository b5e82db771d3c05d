"""The per-round report of a run: ``report.md`` (a table per round) and ``report.png`` (a plot).

Written into the run folder after every round (this plugin's ``round_end`` hook), from the stages'
``summary.json`` files alone, so it can also be rebuilt for any run folder:
``rstar_pipeline.report.write_report(folder)``.

One row per round: problems searched and solved (at least one correct answer in the tree), the
search's accuracy (its chosen answers), SFT examples and PPM pairs extracted, the trainers'
final metrics, and the accuracy of each ``evaluate`` run. The plot shows the evaluation accuracies
(and the fraction of problems solved by the search) round by round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def round_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One dict per round folder that has at least one finished stage."""
    rows = []
    rounds = sorted(
        (p for p in run_dir.glob("round_*") if p.is_dir() and p.name[6:].isdigit()), key=lambda p: int(p.name[6:])
    )
    for folder in rounds:
        stages = {p.parent.name: _read(p) for p in folder.glob("*/summary.json")}
        if not stages:
            continue
        search = stages.get("search", {})
        extract = stages.get("extract", {})
        sft = stages.get("train_sft", {})
        ppm = stages.get("train_ppm", {})
        evaluate = stages.get("evaluate", {}).get("runs", {})
        row: dict[str, Any] = {
            "round": int(folder.name[6:]),
            "problems": search.get("problems"),
            "solved": search.get("solved"),
            "search_acc": search.get("accuracy"),
            "sft_examples": extract.get("sft_records"),
            "pairs": _pairs(extract),
            "sft_loss": sft.get("train_loss"),
            "ppm_acc": ppm.get("val_accuracy"),
            "minutes": round(sum(float(s.get("seconds", 0) or 0) for s in stages.values()) / 60, 1),
            "eval": {label: run.get("accuracy") for label, run in evaluate.items()},
        }
        rows.append(row)
    return rows


def _pairs(extract: dict[str, Any]) -> int | None:
    if "pairs" in extract and isinstance(extract["pairs"], int):
        return int(extract["pairs"])
    parts = [extract.get(k) for k in ("step_pairs", "final_pairs")]
    numbers = [int(p) for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


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
    """The report's table: fixed columns, then one column per evaluation run."""
    labels = sorted({label for row in rows for label in row["eval"]})
    header = [title for _, title in COLUMNS] + [f"eval: {label}" for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt(key, row.get(key), row) for key, _ in COLUMNS]
        cells += [_fmt("eval", row["eval"].get(label), row) for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write ``report.md`` (and ``report.png`` when matplotlib is installed); return the Markdown path."""
    run_dir = Path(run_dir)
    rows = round_rows(run_dir)
    png = _plot(rows, run_dir / "report.png")
    text = f"# {title or 'rstar run'}: {run_dir}\n\n" + markdown_table(rows)
    text += "\nsolved: problems with at least one correct answer in their search tree; search acc.: the search's "
    text += "chosen answers; eval: accuracy of each `evaluate` run on the held-out problems.\n"
    if png is not None:
        text += f"\n![accuracy by round]({png.name})\n"
    else:
        text += "\n(no plot: install matplotlib, e.g. `pip install 'rstar[plot]'`)\n"
    path = run_dir / "report.md"
    write_atomic(path, text)
    return path


def _plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    rounds = [r["round"] for r in rows]
    solved = [r["solved"] / r["problems"] if r.get("problems") and r.get("solved") is not None else None for r in rows]
    if any(v is not None for v in solved):
        ax.plot(rounds, [v if v is not None else float("nan") for v in solved], "k--o", label="search: solved")
    for label in sorted({label for r in rows for label in r["eval"]}):
        values = [r["eval"].get(label) for r in rows]
        ax.plot(rounds, [v if v is not None else float("nan") for v in values], "-o", label=f"eval: {label}")
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
    ax.set_ylabel("fraction of problems")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["markdown_table", "round_rows", "write_report"]
