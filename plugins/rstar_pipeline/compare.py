"""``rstar compare``: several search strategies at several budgets on one dataset, as a table and a plot.

A recipe's ``compare`` section defines a grid over the rest of the recipe (its *base*)::

    compare:
      budgets: [1, 2, 4]            # values of budget.samples
      strategies:
        greedy: {search: {name: greedy}, budgets: [1]}
        vote:   {search: {name: best_of_n, vote: majority}}
      bootstrap: 1000               # resamples of the confidence interval
      confidence: 0.95

Each *cell* (one strategy label at one budget) is one search of the base recipe with the strategy's
entry merged over it (`rstar.config.merge_over`: key by key, as ``rounds`` overrides are, except that a
component section naming a different component replaces the base's section) and ``budget.samples``
set to the budget. A cell runs with `rstar.runner.Runner` in
``<output_dir>/cells/<label>/samples_<budget>/``, all cells sharing one `ComponentCache`, so a model
used by several cells is loaded once.

Cells are cached: a finished cell whose stored ``config.yaml`` equals its new configuration is read
back, not searched; a cell whose configuration changed is deleted and searched again; an unfinished
cell resumes problem by problem. So adding a budget or a strategy, or changing one strategy's options,
searches only the cells concerned.

The outputs, in ``<output_dir>``: ``compare.md``, ``compare.csv``, ``compare.json`` (one row per cell:
accuracy with a percentile-bootstrap confidence interval over problems, what the cell spent) and
``compare.png`` (accuracy against generated tokens per problem; needs matplotlib).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import yaml
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, Field, PositiveInt

from rstar.config import Recipe, RecipeChecker, check_recipe, merge_over
from rstar.errors import ConfigError
from rstar.options import Options, options_problems
from rstar.registry import Registry
from rstar.rundir import DONE, changed_keys, read_summary, read_trees, write_atomic
from rstar.runner import ComponentCache, Runner, search_summary
from rstar.types import Tree

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Strategy labels name folders: letters, digits, ``_``, ``.`` and ``-``."""

FORBIDDEN_IN_STRATEGY = {
    "output_dir": "cells are written under the recipe's output_dir, in cells/<label>/samples_<budget>/",
    "compare": "a strategy cannot hold a comparison",
    "rounds": "each cell is one search; rounds do not apply",
    "stages": "each cell is one search; stages do not apply",
}

COLUMNS = (
    "strategy",
    "search",
    "budget",
    "problems",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "answered",
    "generated_tokens",
    "tokens_per_problem",
    "policy_calls",
    "verifier_jobs",
    "reward_calls",
    "seconds",
)
"""Columns of ``compare.csv`` (``compare.json`` rows add ``status`` and ``folder``)."""

PLOT_MISSING = "matplotlib is not installed, so compare.png was not drawn: pip install 'rstar[plot]' and run again"


class CompareOptions(Options):
    """The ``compare`` section of a recipe."""

    budgets: list[PositiveInt] = Field(
        [1, 2, 4],
        min_length=1,
        description="values of budget.samples tried for every strategy that lists no budgets of its own",
    )
    strategies: dict[str, dict[str, Any]] = Field(
        min_length=1,
        description="label -> partial recipe merged over the base recipe, plus optional 'budgets: [...]'",
    )
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of the confidence interval; 0: no interval")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the interval")
    seed: int = Field(0, description="seed of the bootstrap resampling")


class StrategyEntry(Options):
    """One strategy of the grid: its own budgets, and any recipe keys (checked on the merged recipe)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    budgets: list[PositiveInt] | None = Field(
        None, min_length=1, description="values of budget.samples for this strategy (default: compare.budgets)"
    )


@dataclass(frozen=True)
class Cell:
    """One search of the grid: a strategy label at one budget, with its full recipe."""

    label: str
    budget: int
    recipe: dict[str, Any]
    folder: Path
    validated: Recipe


@dataclass
class CompareResult:
    """What `Comparison.run` produced: one row per cell, the files written, and a note about the plot."""

    rows: list[dict[str, Any]]
    files: dict[str, Path]
    plot_note: str | None = None


# --- the grid ----------------------------------------------------------------------------------------


def compare_section(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The recipe's ``compare`` section, or None when it has none."""
    section = data.get("compare")
    return section if isinstance(section, Mapping) else None


def merge_strategy(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A strategy's recipe: its entry (``budgets`` aside) merged over the recipe with
    `rstar.config.merge_over`, which keeps only the kernel's keys (no ``compare``, ``rounds``, ``stages``,
    plugin sections) and lets a component section that names another component replace the base's section."""
    return merge_over(base, {k: v for k, v in entry.items() if k != "budgets"})


def with_budget(recipe: Mapping[str, Any], budget: int, output_dir: Path | None = None) -> dict[str, Any]:
    """``recipe`` with ``budget.samples`` set to ``budget`` and (if given) its run folder set to ``output_dir``."""
    out = dict(recipe)
    out["budget"] = {**dict(out.get("budget") or {}), "samples": budget}
    if output_dir is not None:
        out["output_dir"] = str(output_dir)
    return out


def grid_problems(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """The problems of a recipe's ``compare`` section: its own keys, each strategy's entry, and the
    problems of each strategy's merged recipe (`rstar.config.check_recipe`) in the keys the strategy
    sets, reported under ``compare.strategies.<label>.``. Problems of the keys a strategy inherits are
    the base recipe's, left to ``check_recipe(data)``. Empty without a ``compare`` section."""
    section = compare_section(data)
    if section is None:
        return []
    problems = options_problems(CompareOptions, section, "compare")
    strategies = section.get("strategies")
    if not isinstance(strategies, Mapping):
        return problems
    for label, entry in strategies.items():
        where = f"compare.strategies.{label}"
        if not LABEL.match(str(label)):
            problems.append(f"{where}: a label names a folder; use letters, digits, '_', '.' and '-' only")
        if not isinstance(entry, Mapping):
            continue  # reported by CompareOptions
        problems += options_problems(StrategyEntry, entry, where)
        for key, why in FORBIDDEN_IN_STRATEGY.items():
            if key in entry:
                problems.append(f"{where}.{key}: {why}; remove it")
        if isinstance(entry.get("budget"), Mapping) and "samples" in entry["budget"]:
            problems.append(f"{where}.budget.samples: set by the grid; list the values in {where}.budgets instead")
        allowed = {k: v for k, v in entry.items() if k not in FORBIDDEN_IN_STRATEGY}
        try:
            merged = with_budget(merge_strategy(data, allowed), 1)
        except (OmegaConfBaseException, ValueError) as exc:
            problems.append(f"{where}: cannot be merged over the recipe ({exc})")
            continue
        problems += [f"{where}.{p}" for p in check_recipe(merged, registry) if _top_key(p) in allowed]
    return problems


def check_section(
    value: Any, data: Mapping[str, Any], checker: RecipeChecker, path: str
) -> tuple[CompareOptions | None, list[str]]:
    """The ``compare`` section, as registered with ``register_sections``: its options and its grid's problems."""
    problems = grid_problems({**data, "compare": value}, checker.registry)
    if problems:
        return None, problems
    return CompareOptions.model_validate(dict(value)), []


check_section.Options = CompareOptions  # type: ignore[attr-defined]  # what `rstar options compare` shows


def compare_problems(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Every problem of a compare recipe, at once: the recipe as a whole (`rstar.config.check_recipe`,
    which checks the grid through `check_section`) and a missing ``compare`` section."""
    return _checked(data, RecipeChecker(registry))[1]


def _checked(data: Mapping[str, Any], checker: RecipeChecker) -> tuple[Recipe | None, list[str]]:
    recipe, problems = checker.recipe(data)
    if compare_section(data) is None:
        problems.append(
            "compare: required section is missing; add compare: {budgets: [...], strategies: {label: {...}}} "
            "(see docs/concepts/compare.md)"
        )
    return recipe, problems


def _top_key(problem: str) -> str:
    return re.split(r"[.\[:]", problem, maxsplit=1)[0]


def plan_cells(
    data: Mapping[str, Any], registry: Registry, source: str | None = None
) -> tuple[CompareOptions, list[Cell]]:
    """Check a compare recipe (raising `ConfigError` with every problem) and list its cells: the
    strategies in recipe order, each strategy's budgets in increasing order."""
    checker = RecipeChecker(registry)
    recipe, problems = _checked(data, checker)
    if problems or recipe is None:
        raise ConfigError(problems, source)
    options: CompareOptions = recipe.section("compare")
    root = recipe.output_dir
    cells: list[Cell] = []
    for label, entry in options.strategies.items():
        merged = merge_strategy(data, entry)
        for budget in sorted(set(entry.get("budgets") or options.budgets)):
            folder = root / "cells" / label / f"samples_{budget}"
            cell_recipe = with_budget(merged, budget, folder)
            validated, problems = checker.recipe(cell_recipe)
            if validated is None:  # checked with budget 1 by grid_problems; another budget can still fail
                raise ConfigError([f"compare.strategies.{label} (samples={budget}): {p}" for p in problems], source)
            cells.append(Cell(label, budget, cell_recipe, folder, validated))
    return options, cells


# --- statistics --------------------------------------------------------------------------------------


def bootstrap_ci(
    outcomes: Sequence[bool], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of the accuracy of ``outcomes`` (one per problem).

    Draws ``resamples`` samples of the problems with replacement, each as many as there are problems,
    and returns the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles (nearest rank) of their
    accuracies. The outcomes are sorted first, so the interval depends only on the number of problems,
    the number correct and the seed. None without outcomes or resamples.
    """
    if not outcomes or resamples <= 0:
        return None
    values = sorted(int(bool(o)) for o in outcomes)
    n = len(values)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2.0

    def quantile(q: float) -> float:
        return means[min(resamples - 1, max(0, math.ceil(q * resamples) - 1))]

    return quantile(alpha), quantile(1.0 - alpha)


def cell_row(cell: Cell, trees: Sequence[Tree], seconds: float, options: CompareOptions) -> dict[str, Any]:
    """One table row: accuracy with its interval over the problems with a reference, and the spend."""
    summary = search_summary(list(trees), seconds, str(cell.recipe["search"]["name"]))
    labelled = [bool(t.correct) for t in trees if t.correct is not None]
    ci = bootstrap_ci(labelled, options.bootstrap, options.confidence, options.seed)
    problems = summary["problems"]
    return {
        "strategy": cell.label,
        "search": summary["strategy"],
        "budget": cell.budget,
        "problems": problems,
        "correct": summary["correct"],
        "accuracy": summary["accuracy"],
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
        "answered": summary["answered"],
        "generated_tokens": summary["generated_tokens"],
        "tokens_per_problem": round(summary["generated_tokens"] / problems, 1) if problems else 0.0,
        "policy_calls": summary["policy_calls"],
        "verifier_jobs": summary["verifier_jobs"],
        "reward_calls": summary["reward_calls"],
        "seconds": summary["seconds"],
    }


# --- running the grid --------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Runs a compare recipe's grid. ``progress`` receives the runner's events and, before each cell,
    ``("cell", {"index", "total", "label", "budget", "status", "changed", "folder"})`` where ``status``
    is ``computed`` (new), ``resumed`` (unfinished), ``recomputed`` (its configuration changed: the keys
    are in ``changed``) or ``reused`` (finished with the same configuration: not searched)."""

    recipe: dict[str, Any]
    registry: Registry
    pm: pluggy.PluginManager
    source: str | None = None
    progress: Callable[[str, dict[str, Any]], None] = field(default=lambda event, payload: None)

    def __post_init__(self) -> None:
        self.options, self.cells = plan_cells(self.recipe, self.registry, self.source)
        self.output_dir = Path(str(self.recipe["output_dir"]))

    def run(self) -> CompareResult:
        """Search every cell not cached, then write the tables and the plot."""
        rows: list[dict[str, Any]] = []
        cache = ComponentCache(self.registry)
        try:
            for index, cell in enumerate(self.cells, start=1):
                status, changed = self._prepare(cell)
                payload = {"index": index, "total": len(self.cells), "label": cell.label, "budget": cell.budget}
                self.progress("cell", {**payload, "status": status, "changed": changed, "folder": cell.folder})
                if status == "reused":
                    summary = read_summary(cell.folder / "search")
                else:
                    runner = Runner(cell.validated, self.registry, self.pm, self.source, self.progress, cache=cache)
                    summary = runner.search().summary
                trees = list(read_trees(cell.folder / "search" / "trees.jsonl").values())
                row = cell_row(cell, trees, float(summary.get("seconds", 0.0)), self.options)
                rows.append({**row, "status": status, "folder": str(cell.folder)})
        finally:
            cache.close()
        return write_outputs(rows, self.output_dir, self.options, self.source)

    def _prepare(self, cell: Cell) -> tuple[str, list[str]]:
        """How the cell will be obtained; deletes a cell folder whose configuration changed."""
        config_path = cell.folder / "config.yaml"
        if not config_path.exists():
            return "computed", []
        stored = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        changed = [k for k in changed_keys(stored, cell.recipe) if k != "output_dir"]
        if changed:
            shutil.rmtree(cell.folder)
            return "recomputed", changed
        if stored.get("output_dir") != cell.recipe["output_dir"]:
            # The same cell under a moved output_dir: record the new path, keep the results.
            write_atomic(config_path, yaml.safe_dump(cell.recipe, sort_keys=False))
        if (cell.folder / "search" / DONE).exists():
            return "reused", []
        return "resumed", []


# --- outputs -----------------------------------------------------------------------------------------


def write_outputs(
    rows: list[dict[str, Any]], output_dir: Path, options: CompareOptions, source: str | None = None
) -> CompareResult:
    """Write ``compare.md``, ``compare.csv``, ``compare.json`` and (with matplotlib) ``compare.png``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": output_dir / "compare.md",
        "csv": output_dir / "compare.csv",
        "json": output_dir / "compare.json",
    }
    write_atomic(files["markdown"], markdown_table(rows, options))
    write_atomic(files["csv"], csv_text(rows))
    report = {
        "recipe": source,
        "bootstrap": options.bootstrap,
        "confidence": options.confidence,
        "seed": options.seed,
        "rows": rows,
    }
    write_atomic(files["json"], json.dumps(report, indent=2))
    note = None
    png = output_dir / "compare.png"
    if plot(rows, png, options.confidence):
        files["plot"] = png
    else:
        note = PLOT_MISSING
    return CompareResult(rows, files, note)


def fmt_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def fmt_ci(row: Mapping[str, Any]) -> str:
    if row["ci_low"] is None:
        return "n/a"
    return f"[{fmt_percent(row['ci_low'])}, {fmt_percent(row['ci_high'])}]"


def markdown_table(rows: Sequence[Mapping[str, Any]], options: CompareOptions) -> str:
    """The rows as a Markdown table, under a line saying how the interval was computed."""
    level = f"{options.confidence:.0%}"
    header = [
        "strategy",
        "search",
        "budget",
        "problems",
        "accuracy",
        f"{level} CI",
        "tokens",
        "tokens/problem",
        "policy calls",
        "verifier jobs",
        "reward calls",
        "seconds",
    ]
    lines = [
        "# Comparison",
        "",
        f"Accuracy over the problems with a reference answer; {level} percentile-bootstrap interval over problems "
        f"({options.bootstrap} resamples, seed {options.seed}). Tokens are generated tokens.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    for r in rows:
        cells = [
            r["strategy"],
            r["search"],
            r["budget"],
            r["problems"],
            fmt_percent(r["accuracy"]),
            fmt_ci(r),
            r["generated_tokens"],
            r["tokens_per_problem"],
            r["policy_calls"],
            r["verifier_jobs"],
            r["reward_calls"],
            r["seconds"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV with the `COLUMNS` header; missing values are empty fields."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buf.getvalue()


def plot(rows: Sequence[Mapping[str, Any]], path: Path, confidence: float = 0.95) -> bool:
    """Accuracy (with interval error bars) against generated tokens per problem, log2 x axis, one line
    per strategy, each point labelled with its budget. False when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for label in dict.fromkeys(r["strategy"] for r in rows):
        points = sorted(
            (r for r in rows if r["strategy"] == label and r["accuracy"] is not None and r["tokens_per_problem"] > 0),
            key=lambda r: (r["tokens_per_problem"], r["budget"]),
        )
        if not points:
            continue
        xs = [r["tokens_per_problem"] for r in points]
        ys = [r["accuracy"] for r in points]
        low = [y - (r["ci_low"] if r["ci_low"] is not None else y) for y, r in zip(ys, points, strict=True)]
        high = [(r["ci_high"] if r["ci_high"] is not None else y) - y for y, r in zip(ys, points, strict=True)]
        line = ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
        for x, y, r in zip(xs, ys, points, strict=True):
            ax.annotate(
                str(r["budget"]),
                (x, y),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
                color=line.lines[0].get_color(),
            )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("generated tokens per problem (log2)")
    ax.set_ylabel(f"accuracy ({confidence:.0%} bootstrap CI)")
    ax.set_title("accuracy vs. compute; points labelled by budget.samples")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.savefig(path, dpi=120)
    return True
