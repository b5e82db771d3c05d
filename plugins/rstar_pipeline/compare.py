"""``rstar compare``: several search strategies at several budgets on one dataset, as a table and a plot.

A recipe's ``compare`` section defines a grid over the rest of the recipe (its *base*)::

    compare:
      budgets: [1, 2, 4]            # values of budget.samples (axis: samples, the default)
      strategies:
        greedy: {search: {name: greedy}, budgets: [1]}
        vote:   {search: {name: best_of_n, vote: majority}}
      bootstrap: 1000               # resamples of the confidence intervals
      confidence: 0.95
      reference: greedy             # the cell the others are paired against (default: the first)

Each *cell* (one strategy label at one budget) is one search of the base recipe with the strategy's
entry merged over it (`rstar.config.merge_over`: key by key, as ``rounds`` overrides are, except that a
component section naming a different component replaces the base's section) and the budget set:
``budget.samples`` with ``axis: samples``, ``budget.max_tokens`` (generated tokens per problem) with
``axis: tokens``. A cell runs with `rstar.runner.Runner` in ``<output_dir>/cells/<label>/samples_<budget>/``
(``tokens_<budget>/`` with ``axis: tokens``), all cells sharing one `ComponentCache`, so a model used by
several cells is loaded once.

Cells are cached: a finished cell whose stored ``config.yaml`` equals its new configuration is read
back, not searched; a cell whose configuration changed is deleted and searched again; an unfinished
cell resumes problem by problem. So adding a budget or a strategy, or changing one strategy's options,
searches only the cells concerned.

The outputs, in ``<output_dir>``: ``compare.md``, ``compare.csv``, ``compare.json`` (one row per cell:
accuracy with a percentile-bootstrap confidence interval over problems, what the cell spent, the verifier's
and the reward model's share of its wall time; and each cell paired with the reference cell on their common
problems: the difference in accuracy with a paired-bootstrap interval and McNemar's exact test) and
``compare.png`` (accuracy against generated tokens per problem and against wall seconds per problem; needs
matplotlib). Each searched cell also keeps the engine's counters at the end of its search
(`rstar.engine.EngineSnapshot`) in ``<cell>/engine.json``, from which a reused cell's shares are read back.
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
from typing import Any, Literal

import pluggy
import yaml
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, Field, PositiveInt

from rstar import hookimpl
from rstar.config import Recipe, RecipeChecker, check_recipe, merge_over
from rstar.engine import EngineSnapshot
from rstar.errors import ConfigError
from rstar.options import Options, options_problems
from rstar.registry import Registry
from rstar.rundir import DONE, PLACEMENT_KEYS, changed_keys, read_summary, read_trees, write_atomic
from rstar.runner import ComponentCache, Runner, search_summary
from rstar.types import Tree

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Strategy labels name folders: letters, digits, ``_``, ``.`` and ``-``."""

Axis = Literal["samples", "tokens"]

BUDGET_KEY: dict[str, str] = {"samples": "samples", "tokens": "max_tokens"}
"""``compare.axis`` -> the key of the recipe's ``budget`` section that each budget value sets."""

FORBIDDEN_IN_STRATEGY = {
    "output_dir": "cells are written under the recipe's output_dir, in cells/<label>/<axis>_<budget>/",
    "compare": "a strategy cannot hold a comparison",
    "rounds": "each cell is one search; rounds do not apply",
    "stages": "each cell is one search; stages do not apply",
}

COLUMNS = (
    "strategy",
    "search",
    "budget",
    "samples",
    "max_tokens",
    "problems",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "answered",
    "generated_tokens",
    "tokens_per_problem",
    "prompt_tokens",
    "policy_calls",
    "reward_tokens",
    "reward_tokens_computed",
    "reward_calls",
    "verifier_jobs",
    "seconds",
    "seconds_per_problem",
    "verifier_busy_s",
    "verifier_share",
    "reward_busy_s",
    "reward_share",
)
"""Columns of ``compare.csv`` (``compare.json`` rows add ``status`` and ``folder``)."""

ENGINE = "engine.json"
"""In a cell's folder: the engine's counters when the cell's search ended (`EngineSnapshot.to_dict`)."""

PLOT_MISSING = "matplotlib is not installed, so compare.png was not drawn: pip install 'rstar[plot]' and run again"


class CompareOptions(Options):
    """The ``compare`` section of a recipe."""

    budgets: list[PositiveInt] = Field(
        [1, 2, 4],
        min_length=1,
        description="budget values tried for every strategy that lists no budgets of its own "
        "(values of budget.samples, or of budget.max_tokens with axis: tokens)",
    )
    axis: Axis = Field(
        "samples",
        description="what a budget value sets: budget.samples, the strategy's own knob (samples), or "
        "budget.max_tokens, the generated tokens a problem may use, the same compute for every strategy "
        "(tokens; then budget.samples stays as the recipe sets it: set it high so the token cap binds)",
    )
    strategies: dict[str, dict[str, Any]] = Field(
        min_length=1,
        description="label -> partial recipe merged over the base recipe, plus optional 'budgets: [...]'",
    )
    reference: str | None = Field(
        None,
        description="the cell every other cell is paired against: 'label@budget', or 'label' for that "
        "strategy's smallest budget; default: the first cell",
    )
    bootstrap: int = Field(
        1000, ge=0, description="bootstrap resamples of the confidence intervals (accuracy, paired difference); 0: none"
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    seed: int = Field(0, description="seed of the bootstrap resampling")


class StrategyEntry(Options):
    """One strategy of the grid: its own budgets, and any recipe keys (checked on the merged recipe)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    budgets: list[PositiveInt] | None = Field(
        None,
        min_length=1,
        description="budget values for this strategy, on the grid's axis (default: compare.budgets)",
    )


@dataclass(frozen=True)
class Cell:
    """One search of the grid: a strategy label at one budget, with its full recipe."""

    label: str
    budget: int
    recipe: dict[str, Any]
    folder: Path
    validated: Recipe

    @property
    def name(self) -> str:
        """``label@budget``: how the paired tests and ``compare.reference`` name a cell."""
        return f"{self.label}@{self.budget}"


@dataclass
class CompareResult:
    """What `Comparison.run` produced: one row per cell, each cell paired with the reference cell, the
    files written, the footer lines of the table and a note about the plot."""

    rows: list[dict[str, Any]]
    files: dict[str, Path]
    plot_note: str | None = None
    paired: list[dict[str, Any]] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)


# --- the grid ----------------------------------------------------------------------------------------


def compare_section(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The recipe's ``compare`` section, or None when it has none."""
    section = data.get("compare")
    return section if isinstance(section, Mapping) else None


def merge_strategy(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A strategy's recipe: its entry (``budgets`` aside) merged over the recipe with
    `rstar.config.merge_over`, which keeps only the kernel's keys (no ``compare``, ``rounds``, ``stages``,
    plugin sections) and lets a component section that names another component replace the base's section."""
    merged = merge_over(base, {k: v for k, v in entry.items() if k != "budgets"})
    if base.get("executor") is not None:  # where the cells run (e.g. on Ray workers), as the base recipe says
        merged["executor"] = base["executor"]
    return merged


def with_budget(
    recipe: Mapping[str, Any], budget: int, axis: str = "samples", output_dir: Path | None = None
) -> dict[str, Any]:
    """``recipe`` with the budget key of ``axis`` (``budget.samples`` or ``budget.max_tokens``) set to
    ``budget`` and (if given) its run folder set to ``output_dir``. The other budget keys stay as the
    recipe sets them: on the tokens axis, ``budget.samples`` is each strategy's own."""
    out = dict(recipe)
    out["budget"] = {**dict(out.get("budget") or {}), BUDGET_KEY[axis]: budget}
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
    axis = section.get("axis", "samples")
    axis = axis if isinstance(axis, str) and axis in BUDGET_KEY else "samples"  # a bad axis is reported above
    budget_key = BUDGET_KEY[axis]
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
        if isinstance(entry.get("budget"), Mapping) and budget_key in entry["budget"]:
            problems.append(
                f"{where}.budget.{budget_key}: set by the grid (axis: {axis}); "
                f"list the values in {where}.budgets instead"
            )
        allowed = {k: v for k, v in entry.items() if k not in FORBIDDEN_IN_STRATEGY}
        try:
            merged = with_budget(merge_strategy(data, allowed), 1, axis)
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
    options = CompareOptions.model_validate(dict(value))
    try:
        reference_cell(options)
    except ValueError as exc:
        return None, [f"compare.reference: {exc}"]
    return options, []


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
    key = BUDGET_KEY[options.axis]
    cells: list[Cell] = []
    for label, budgets in strategy_budgets(options).items():
        merged = merge_strategy(data, options.strategies[label])
        for budget in budgets:
            folder = root / "cells" / label / f"{options.axis}_{budget}"
            cell_recipe = with_budget(merged, budget, options.axis, folder)
            validated, problems = checker.recipe(cell_recipe)
            if validated is None:  # checked with budget 1 by grid_problems; another budget can still fail
                raise ConfigError([f"compare.strategies.{label} ({key}={budget}): {p}" for p in problems], source)
            cells.append(Cell(label, budget, cell_recipe, folder, validated))
    return options, cells


def strategy_budgets(options: CompareOptions) -> dict[str, list[int]]:
    """Each strategy's budgets, in recipe order of the strategies and increasing order of the budgets:
    the order of the cells."""
    return {label: sorted(set(entry.get("budgets") or options.budgets)) for label, entry in options.strategies.items()}


def reference_cell(options: CompareOptions) -> str:
    """The ``label@budget`` name of the cell the others are paired against (`CompareOptions.reference`):
    ``label@budget`` as written, a bare ``label`` at its smallest budget, or the first cell. Raises
    `ValueError` saying which labels or budgets exist when the reference names no cell."""
    budgets = strategy_budgets(options)
    if options.reference is None:
        label = next(iter(budgets))
        return f"{label}@{budgets[label][0]}"
    label, at, value = options.reference.rpartition("@")
    if not at:
        label = value
    if label not in budgets:
        raise ValueError(f"{label!r} is not a strategy label; the labels are {', '.join(budgets)}")
    if not at:
        return f"{label}@{budgets[label][0]}"
    if not value.isdigit() or int(value) not in budgets[label]:
        listed = ", ".join(str(b) for b in budgets[label])
        raise ValueError(f"{label} has no budget {value!r}; its budgets are {listed} (write 'label' or 'label@budget')")
    return f"{label}@{int(value)}"


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
    return _mean_interval([int(bool(o)) for o in outcomes], resamples, confidence, seed)


def paired_bootstrap_ci(
    cell: Sequence[bool], reference: Sequence[bool], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of the difference in accuracy ``cell - reference`` on the
    same problems (``cell[i]`` and ``reference[i]`` are one problem's outcomes).

    Resampling *problems* (pairs), not the two cells independently, keeps what the two cells share: a
    problem both solve or both miss adds nothing to the difference nor to its spread, so the interval is
    narrower than the two accuracies' intervals suggest. Like `bootstrap_ci`, the per-problem differences
    (-1, 0, +1) are sorted first, so the interval depends only on their counts and the seed. None without
    problems or resamples."""
    if len(cell) != len(reference):
        raise ValueError(f"paired outcomes differ in length: {len(cell)} and {len(reference)}")
    differences = [int(bool(a)) - int(bool(b)) for a, b in zip(cell, reference, strict=True)]
    return _mean_interval(differences, resamples, confidence, seed)


def _mean_interval(values: Sequence[int], resamples: int, confidence: float, seed: int) -> tuple[float, float] | None:
    """The percentile bootstrap of the mean shared by `bootstrap_ci` and `paired_bootstrap_ci`."""
    if not values or resamples <= 0:
        return None
    ordered = sorted(values)
    n = len(ordered)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(ordered, k=n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2.0

    def quantile(q: float) -> float:
        return means[min(resamples - 1, max(0, math.ceil(q * resamples) - 1))]

    return quantile(alpha), quantile(1.0 - alpha)


def mcnemar_exact(only_cell: int, only_reference: int) -> float:
    """Two-sided p-value of McNemar's exact test for two strategies run on the same problems.

    Only the *discordant* problems carry information about which strategy is better: ``only_cell``
    problems the cell solved and the reference did not, ``only_reference`` the reverse. If the two were
    equally good, each discordant problem would fall on either side with probability 1/2, so the count
    on one side is Binomial(b + c, 1/2); the p-value is twice the smaller tail, at most 1. Exact (no
    normal approximation), so it holds for the handful of discordant problems a small comparison has.
    No discordant problem: 1."""
    if only_cell < 0 or only_reference < 0:
        raise ValueError(f"counts must be non-negative: {only_cell}, {only_reference}")
    n = only_cell + only_reference
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_cell, only_reference) + 1))
    return min(1.0, 2 * tail / (1 << n))


def paired_test(
    cell: str,
    reference: str,
    cell_outcomes: Mapping[str, bool],
    reference_outcomes: Mapping[str, bool],
    options: CompareOptions,
) -> dict[str, Any]:
    """``cell`` against ``reference`` on the problems both have an outcome for (problem id -> correct,
    problems with a reference answer only): both accuracies there, their difference with its paired
    bootstrap interval, the discordant counts and McNemar's p-value. ``problems`` 0 (and None for the
    rest) when they share no problem."""
    shared = [pid for pid in cell_outcomes if pid in reference_outcomes]
    ours = [bool(cell_outcomes[pid]) for pid in shared]
    theirs = [bool(reference_outcomes[pid]) for pid in shared]
    n = len(shared)
    only_cell = sum(1 for a, b in zip(ours, theirs, strict=True) if a and not b)
    only_reference = sum(1 for a, b in zip(ours, theirs, strict=True) if b and not a)
    ci = paired_bootstrap_ci(ours, theirs, options.bootstrap, options.confidence, options.seed)
    return {
        "cell": cell,
        "reference": reference,
        "problems": n,
        "accuracy": sum(ours) / n if n else None,
        "reference_accuracy": sum(theirs) / n if n else None,
        "difference": (sum(ours) - sum(theirs)) / n if n else None,
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
        "only_cell_correct": only_cell,
        "only_reference_correct": only_reference,
        "p_value": mcnemar_exact(only_cell, only_reference) if n else None,
    }


def paired_tests(
    cells: Sequence[Cell], outcomes: Mapping[str, Mapping[str, bool]], options: CompareOptions
) -> list[dict[str, Any]]:
    """Every cell but the reference (`reference_cell`) against the reference, in the order of the cells.
    ``outcomes`` maps a cell's ``label@budget`` to its problems' outcomes (problem id -> correct)."""
    reference = reference_cell(options)
    return [
        paired_test(cell.name, reference, outcomes[cell.name], outcomes[reference], options)
        for cell in cells
        if cell.name != reference
    ]


def cell_outcomes(trees: Sequence[Tree]) -> dict[str, bool]:
    """Problem id -> whether the cell's answer was correct, for the problems with a reference answer."""
    return {t.id: bool(t.correct) for t in trees if t.correct is not None}


def cell_row(
    cell: Cell,
    trees: Sequence[Tree],
    seconds: float,
    options: CompareOptions,
    engine: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One table row: accuracy with its interval over the problems with a reference, and the spend in
    every unit strategies share, so that cells can be compared at equal compute whatever their budget
    means. ``reward_tokens`` and ``prompt_tokens`` are read from the summary when it has them. ``engine``
    (the engine's counters at the end of the cell's search, `EngineSnapshot.to_dict`) gives the busy
    seconds, their shares of ``seconds`` and the PPM tokens computed (`engine_columns`)."""
    summary = search_summary(list(trees), seconds, str(cell.recipe["search"]["name"]))
    labelled = [bool(t.correct) for t in trees if t.correct is not None]
    ci = bootstrap_ci(labelled, options.bootstrap, options.confidence, options.seed)
    problems = summary["problems"]
    budget = cell.validated.options.budget
    prompt_tokens = summary.get("prompt_tokens", sum(t.usage.prompt_tokens for t in trees))
    reward_tokens = summary.get("reward_tokens", 0)
    row: dict[str, Any] = {
        "strategy": cell.label,
        "search": summary["strategy"],
        "budget": cell.budget,
        "samples": budget.samples,
        "max_tokens": getattr(budget, "max_tokens", None),
        "problems": problems,
        "correct": summary["correct"],
        "accuracy": summary["accuracy"],
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
        "answered": summary["answered"],
        "generated_tokens": summary["generated_tokens"],
        "tokens_per_problem": round(summary["generated_tokens"] / problems, 1) if problems else 0.0,
        "prompt_tokens": prompt_tokens,
        "policy_calls": summary["policy_calls"],
        "reward_tokens": reward_tokens,
        "reward_calls": summary["reward_calls"],
        "verifier_jobs": summary["verifier_jobs"],
        "seconds": summary["seconds"],
        "seconds_per_problem": round(summary["seconds"] / problems, 3) if problems else 0.0,
    }
    return {**row, **engine_columns(engine, summary["seconds"], reward_tokens)}


BUSY = {"verifier_busy_s": "verifier_share", "reward_busy_s": "reward_share"}
"""The engine's busy seconds a row shows -> the row key of their share of the cell's seconds."""


def engine_columns(engine: Mapping[str, Any] | None, seconds: float, reward_tokens: int) -> dict[str, Any]:
    """The row's columns from the engine's counters: the seconds the verifier and the reward model had a batch in
    flight, each as a share of the cell's ``seconds`` (a fraction; it counts only the searches the engine ran, as
    ``seconds`` does), and the tokens the reward model computed. ``reward_tokens_computed`` is None when the
    engine did not read all of the cell's ``reward_tokens`` (a resumed cell: the earlier part's count is lost),
    every value None without counters (a cell searched before they were kept)."""
    if engine is None:
        return dict.fromkeys(("reward_tokens_computed", *BUSY, *BUSY.values()), None)
    out: dict[str, Any] = {
        "reward_tokens_computed": (
            engine["reward_tokens_computed"] if engine.get("reward_tokens") == reward_tokens else None
        )
    }
    for busy, share in BUSY.items():
        out[busy] = round(float(engine[busy]), 3)
        out[share] = round(float(engine[busy]) / seconds, 4) if seconds > 0 else None
    return out


class EngineCounters:
    """A plugin that keeps the last engine counters (`rstar.hookspecs.search_progress`) of each search folder."""

    def __init__(self) -> None:
        self.last: dict[Path, EngineSnapshot] = {}

    @hookimpl
    def search_progress(self, folder: Path, snapshot: EngineSnapshot) -> None:
        self.last[Path(folder)] = snapshot


def read_engine(cell_folder: Path) -> dict[str, Any] | None:
    """A cell's ``engine.json`` (`ENGINE`); None when it has none (a cell searched before it was kept) or it
    does not hold the counters a row needs."""
    try:
        data = json.loads((cell_folder / ENGINE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    needed = ("reward_tokens", "reward_tokens_computed", *BUSY)
    return data if isinstance(data, dict) and all(key in data for key in needed) else None


# --- running the grid --------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Runs a compare recipe's grid. ``progress`` receives the runner's events and, before each cell,
    ``("cell", {"index", "total", "label", "budget", "budget_key", "status", "changed", "folder"})`` where
    ``budget_key`` is the budget key the grid sets (``samples`` or ``max_tokens``) and ``status``
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
        """Search every cell not cached, then pair each cell with the reference and write the tables and the plot."""
        rows: list[dict[str, Any]] = []
        outcomes: dict[str, dict[str, bool]] = {}
        cache = ComponentCache(self.registry)
        counters = EngineCounters()  # each cell's engine counters, as the runner reports them
        self.pm.register(counters)
        try:
            for index, cell in enumerate(self.cells, start=1):
                status, changed = self._prepare(cell)
                payload = {
                    "index": index,
                    "total": len(self.cells),
                    "label": cell.label,
                    "budget": cell.budget,
                    "budget_key": BUDGET_KEY[self.options.axis],
                }
                self.progress("cell", {**payload, "status": status, "changed": changed, "folder": cell.folder})
                if status == "reused":
                    summary = read_summary(cell.folder / "search")
                else:
                    runner = Runner(cell.validated, self.registry, self.pm, self.source, self.progress, cache=cache)
                    summary = runner.search().summary
                    keep_engine(cell.folder, counters.last.get(cell.folder / "search"))
                trees = list(read_trees(cell.folder / "search" / "trees.jsonl").values())
                engine = read_engine(cell.folder)
                row = cell_row(cell, trees, float(summary.get("seconds", 0.0)), self.options, engine)
                rows.append({**row, "status": status, "folder": str(cell.folder)})
                outcomes[cell.name] = cell_outcomes(trees)
        finally:
            self.pm.unregister(counters)
            cache.close()
        paired = paired_tests(self.cells, outcomes, self.options)
        return write_outputs(rows, self.output_dir, self.options, self.source, paired)

    def _prepare(self, cell: Cell) -> tuple[str, list[str]]:
        """How the cell will be obtained; deletes a cell folder whose configuration changed."""
        config_path = cell.folder / "config.yaml"
        if not config_path.exists():
            return "computed", []
        stored = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        ignored = ("output_dir", *PLACEMENT_KEYS)  # where a cell runs does not change its trees
        changed = [k for k in changed_keys(stored, cell.recipe) if k.split(".")[0] not in ignored]
        if changed:
            shutil.rmtree(cell.folder)
            return "recomputed", changed
        if stored.get("output_dir") != cell.recipe["output_dir"]:
            # The same cell under a moved output_dir: record the new path, keep the results.
            write_atomic(config_path, yaml.safe_dump(cell.recipe, sort_keys=False))
        if (cell.folder / "search" / DONE).exists():
            return "reused", []
        return "resumed", []


def keep_engine(cell_folder: Path, snapshot: EngineSnapshot | None) -> None:
    """Write the engine's counters at the end of a cell's search into ``engine.json``; without counters (the
    search had no problem left to search), remove an earlier file, whose counters no longer match the summary."""
    path = cell_folder / ENGINE
    if snapshot is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, json.dumps(snapshot.to_dict(), indent=2))


# --- outputs -----------------------------------------------------------------------------------------


def write_outputs(
    rows: list[dict[str, Any]],
    output_dir: Path,
    options: CompareOptions,
    source: str | None = None,
    paired: Sequence[dict[str, Any]] = (),
) -> CompareResult:
    """Write ``compare.md``, ``compare.csv``, ``compare.json`` and (with matplotlib) ``compare.png``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": output_dir / "compare.md",
        "csv": output_dir / "compare.csv",
        "json": output_dir / "compare.json",
    }
    footer = [paired_line(p, options.confidence) for p in paired]
    write_atomic(files["markdown"], markdown_table(rows, options) + markdown_footer(footer, paired, options))
    write_atomic(files["csv"], csv_text(rows))
    report = {
        "recipe": source,
        "axis": options.axis,
        "budget_key": BUDGET_KEY[options.axis],
        "bootstrap": options.bootstrap,
        "confidence": options.confidence,
        "seed": options.seed,
        "reference": reference_cell(options),
        "rows": rows,
        "paired": list(paired),
    }
    write_atomic(files["json"], json.dumps(report, indent=2))
    note = None
    png = output_dir / "compare.png"
    if plot(rows, png, options.confidence, options.axis):
        files["plot"] = png
    else:
        note = PLOT_MISSING
    return CompareResult(rows, files, note, list(paired), footer)


def fmt_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def fmt_share(value: float | None) -> str:
    """A share of the wall time in whole percent; ``n/a`` when unknown."""
    return "n/a" if value is None else f"{value:.0%}"


def fmt_ci(row: Mapping[str, Any]) -> str:
    if row["ci_low"] is None:
        return "n/a"
    return f"[{fmt_percent(row['ci_low'])}, {fmt_percent(row['ci_high'])}]"


def fmt_points(value: float) -> str:
    """A difference in accuracy in percentage points, signed: ``+18.3``."""
    return f"{100 * value:+.1f}"


def fmt_p(value: float) -> str:
    """A p-value to two significant digits; below 0.0001 only its bound."""
    if value < 0.0001:
        return "< 0.0001"
    return f"= {value:.2g}" if value < 1 else "= 1.0"


def paired_line(test: Mapping[str, Any], confidence: float = 0.95) -> str:
    """One footer line: ``mcts@4 vs greedy@1: +18.3 points (paired 95% CI [+8.3, +28.3]), McNemar p =
    0.0021 (12 vs 1 discordant problems, of 60)``. The discordant counts are the cell's wins first."""
    head = f"{test['cell']} vs {test['reference']}"
    if not test["problems"]:
        return f"{head}: no problem with a reference answer in common"
    ci = ""
    if test["ci_low"] is not None:
        ci = f" (paired {confidence:.0%} CI [{fmt_points(test['ci_low'])}, {fmt_points(test['ci_high'])}])"
    discordant = f"{test['only_cell_correct']} vs {test['only_reference_correct']} discordant problems"
    return (
        f"{head}: {fmt_points(test['difference'])} points{ci}, McNemar p {fmt_p(test['p_value'])} "
        f"({discordant}, of {test['problems']})"
    )


def markdown_footer(lines: Sequence[str], paired: Sequence[Mapping[str, Any]], options: CompareOptions) -> str:
    """The paired comparisons under the table: what they measure, then one line per cell."""
    if not lines:
        return ""
    text = [
        "",
        f"## Paired against {paired[0]['reference']}",
        "",
        "On the problems both cells have with a reference answer: the difference in accuracy (cell minus reference, "
        f"in points) with its {options.confidence:.0%} paired-bootstrap interval ({options.bootstrap} resamples of the "
        "problems), and McNemar's exact test on the discordant problems (solved by the cell only vs. by the reference "
        "only). A small p says the two differ on these problems; it does not say by how much, nor that the difference "
        "holds on other problems or at other budgets.",
        "",
    ]
    return "\n".join(text + [f"- {line}" for line in lines]) + "\n"


Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def markdown_columns(options: CompareOptions) -> list[Column]:
    """The Markdown table's columns: header and how a row shows. On the tokens axis the budget is
    ``budget.max_tokens``, so each cell's ``budget.samples`` gets a column of its own."""
    level = f"{options.confidence:.0%}"
    columns: list[Column] = [
        ("strategy", lambda r: r["strategy"]),
        ("search", lambda r: r["search"]),
        ("budget", lambda r: r["budget"]),
    ]
    if options.axis == "tokens":
        columns.append(("samples", lambda r: r["samples"]))
    columns += [
        ("problems", lambda r: r["problems"]),
        ("accuracy", lambda r: fmt_percent(r["accuracy"])),
        (f"{level} CI", fmt_ci),
        ("tokens", lambda r: r["generated_tokens"]),
        ("tokens/problem", lambda r: r["tokens_per_problem"]),
        ("prompt tokens", lambda r: r["prompt_tokens"]),
        ("policy calls", lambda r: r["policy_calls"]),
        ("PPM tokens", lambda r: r["reward_tokens"]),
        ("PPM computed", lambda r: _or_na(r.get("reward_tokens_computed"))),
        ("reward calls", lambda r: r["reward_calls"]),
        ("verifier jobs", lambda r: r["verifier_jobs"]),
        ("seconds", lambda r: r["seconds"]),
        ("s/problem", lambda r: r["seconds_per_problem"]),
        ("verifier time", lambda r: fmt_share(r.get("verifier_share"))),
        ("PPM time", lambda r: fmt_share(r.get("reward_share"))),
    ]
    return columns


def _or_na(value: Any) -> Any:
    return "n/a" if value is None else value


def markdown_table(rows: Sequence[Mapping[str, Any]], options: CompareOptions) -> str:
    """The rows as a Markdown table, under lines saying what the budget is and how the interval was computed."""
    level = f"{options.confidence:.0%}"
    if options.axis == "tokens":
        budget = (
            "Budget: budget.max_tokens, the tokens the policy may generate per problem, the same for every "
            "strategy; samples: budget.samples of the cell."
        )
    else:
        budget = "Budget: budget.samples (N of best-of-N, rollouts of MCTS, beam width: each strategy's own knob)."
    columns = markdown_columns(options)
    lines = [
        "# Comparison",
        "",
        f"Accuracy over the problems with a reference answer; {level} percentile-bootstrap interval over problems "
        f"({options.bootstrap} resamples, seed {options.seed}). Tokens are generated tokens; PPM tokens are the "
        "tokens the reward model read, PPM computed those it ran through its network (its caches served the rest). "
        "Verifier and PPM time: the share of the cell's seconds during which the verifier, or the reward model, "
        f"had work in flight. {budget}",
        "",
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(show(r)) for _, show in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV with the `COLUMNS` header; missing values are empty fields."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buf.getvalue()


PANELS = (
    ("tokens_per_problem", 2, "generated tokens per problem (log2)"),
    ("seconds_per_problem", 10, "wall seconds per problem (log)"),
)
"""The plot's panels: the row key on the x axis, the base of its log scale, its label."""


def plot(rows: Sequence[Mapping[str, Any]], path: Path, confidence: float = 0.95, axis: str = "samples") -> bool:
    """Accuracy (with interval error bars) against generated tokens per problem and, beside it, against
    wall seconds per problem: tokens measure the policy's work whatever the hardware, seconds everything
    a strategy costs (reward model and sandbox included) on this hardware. One line per strategy in the
    same colour on both panels, each point labelled with its budget. False when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    for ax, (key, base, xlabel) in zip(axes, PANELS, strict=True):
        for index, label in enumerate(labels):
            draw_strategy(ax, [r for r in rows if r["strategy"] == label], key, label, f"C{index % 10}")
        ax.set_xscale("log", base=base)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_ylabel(f"accuracy ({confidence:.0%} bootstrap CI)")
    if axes[0].lines:
        axes[0].legend()
    fig.suptitle(f"accuracy vs. compute; points labelled by budget.{BUDGET_KEY.get(axis, axis)}")
    fig.savefig(path, dpi=120)
    return True


def draw_strategy(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, label: str, color: str) -> None:
    """One strategy's line on one panel: its cells with an accuracy and a positive ``key`` (a log axis cannot
    show 0), joined in order of budget, so the line follows the strategy as its budget grows even where
    the spend does not (wall seconds are noisy)."""
    points = sorted((r for r in rows if r["accuracy"] is not None and (r.get(key) or 0) > 0), key=lambda r: r["budget"])
    if not points:
        return
    xs = [r[key] for r in points]
    ys = [r["accuracy"] for r in points]
    low = [y - (r["ci_low"] if r["ci_low"] is not None else y) for y, r in zip(ys, points, strict=True)]
    high = [(r["ci_high"] if r["ci_high"] is not None else y) - y for y, r in zip(ys, points, strict=True)]
    ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label, color=color)
    for x, y, r in zip(xs, ys, points, strict=True):
        ax.annotate(str(r["budget"]), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color=color)
