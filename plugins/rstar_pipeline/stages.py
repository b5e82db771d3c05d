"""The stages of a self-evolution round, and the recipe sections they read.

A round of rStar-Math (ALGORITHM.md section 7) is: ``search`` the training problems (the kernel's own
stage, `rstar.runner.SearchStage`), ``search_unsolved``
(search again, harder, the problems with no correct answer), ``extract`` SFT data and preference pairs
from the trees, ``train_sft`` the policy, ``train_ppm`` the reward model, and ``evaluate`` the round's
models on held-out problems. Each is a `rstar.interfaces.Stage` the runner calls with a
`rstar.interfaces.StageContext`; the recipe sections they read were validated, once, when the recipe
was loaded (`rstar.config.RecipeChecker`) by the checks of this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from rstar.config import ComponentSpec, Recipe, RecipeChecker
from rstar.errors import ConfigError, RstarError
from rstar.interfaces import StageContext
from rstar.options import Options
from rstar.rundir import is_done, mark_done, read_summary, read_trees
from rstar.runner import replace_markers
from rstar.steps import StepFormat
from rstar_pipeline.extract import PAIRS_FILE, SFT_FILE, ExtractOptions, extract_files

# --- sections -------------------------------------------------------------------------------------


def check_trainer(value: Any, data: Mapping[str, Any], checker: RecipeChecker, path: str) -> tuple[Any, list[str]]:
    """``train_sft`` / ``train_ppm``: a trainer component, ``{name: sft, epochs: 2, ...}``."""
    return checker.component("trainer", value, path)


def check_base_model(value: Any, data: Mapping[str, Any], checker: RecipeChecker, path: str) -> tuple[Any, list[str]]:
    """``base_model``: the model every round's SFT starts from (default: the top-level ``policy.model``)."""
    if not isinstance(value, str) or not value:
        return None, [f"{path}: expected a model name or folder (got {value!r})"]
    return value, []


def check_search_unsolved(
    value: Any, data: Mapping[str, Any], checker: RecipeChecker, path: str
) -> tuple[Recipe | None, list[str]]:
    """``search_unsolved``: keys merged over the round's recipe to search again the unsolved problems."""
    if not isinstance(value, Mapping):
        return None, [f"{path}: expected a mapping of keys merged over the round's recipe (got {value!r})"]
    return checker.derived(data, value, path)


class EvaluateOptions(Options):
    """The ``evaluate`` section: several searches of held-out problems with the round's models."""

    dataset: dict[str, Any] | None = Field(None, description="the held-out problems (default: the round's dataset)")
    runs: dict[str, dict[str, Any]] = Field(
        min_length=1, description="label -> keys merged over the round's recipe (search, reward_model, budget, ...)"
    )


@dataclass(frozen=True)
class Evaluation:
    """The ``evaluate`` section, validated: one search recipe per run label."""

    runs: Mapping[str, Recipe]


def check_evaluate(
    value: Any, data: Mapping[str, Any], checker: RecipeChecker, path: str
) -> tuple[Evaluation | None, list[str]]:
    options, problems = checker.options(EvaluateOptions, value, path)
    if options is None:
        return None, problems
    runs: dict[str, Recipe] = {}
    for label, run in options.runs.items():
        over = {**({"dataset": options.dataset} if options.dataset is not None else {}), **run}
        recipe, found = checker.derived(data, over, f"{path}.runs.{label}")
        problems += found
        if recipe is not None:
            runs[label] = recipe
    return (Evaluation(runs) if not problems else None), problems


# --- stages ---------------------------------------------------------------------------------------


class SearchUnsolvedStage:
    """Search again, with ``search_unsolved``'s keys merged in, every problem of this round's search that
    has no correct answer anywhere in its tree (the paper's round-4 extra rollouts)."""

    needs: ClassVar[Mapping[str, str]] = {"search_unsolved": "{budget: {samples: 64}}"}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        trees = read_trees(ctx.stage_dir("search") / "trees.jsonl")
        if not trees:
            raise RstarError(f"round {ctx.round}: stage 'search_unsolved' needs the round's 'search' stage first")
        unsolved = {tree_id for tree_id, tree in trees.items() if not any(n.correct for n in tree.nodes)}
        return ctx.search(ctx.recipe.section("search_unsolved"), ctx.folder, only=unsolved)


class ExtractStage:
    """SFT data and preference pairs from the round's search trees (``sft.jsonl``, ``pairs.jsonl``).

    Prompts are rendered with the recipe's top-level ``step_format``: the format the trained models are
    searched with. A round may override ``step_format`` for its own search (the bootstrap round's few-shot
    prompt for an untrained model); that does not change the format of the data it extracts."""

    needs: ClassVar[Mapping[str, str]] = {}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        sources = [d for d in (ctx.stage_dir(s) for s in ("search", "search_unsolved")) if d.is_dir()]
        if not sources:
            raise RstarError(f"round {ctx.round}: stage 'extract' needs the round's 'search' stage first")
        options: ExtractOptions = ctx.recipe.section("extract")
        fmt = StepFormat.from_config(ctx.run_recipe.options.step_format)
        return dict(extract_files(sources, ctx.folder, options, fmt))


def init_model(ctx: StageContext, stage: str) -> str:
    """The model a training stage starts from. ``train_sft``: the base model (every round starts from
    it, as the paper does). ``train_ppm``: this round's SFT model, or the base model when the round
    trains no policy."""
    if stage == "train_ppm" and is_done(ctx.stage_dir("train_sft")):
        return str(ctx.stage_dir("train_sft") / "model")
    return base_model(ctx.recipe)


def base_model(recipe: Recipe) -> str:
    """``base_model``, else the top-level ``policy.model``."""
    model = recipe.section("base_model") or recipe.data.get("policy", {}).get("model")
    if not isinstance(model, str):
        raise ConfigError(["base_model: required when the top-level policy has no 'model' key; add it"])
    return model


class TrainStage:
    """Fit the recipe's trainer on this round's extracted data; the model goes to ``<folder>/model``."""

    stage: ClassVar[str]
    data_file: ClassVar[str]
    needs: ClassVar[Mapping[str, str]]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        data = ctx.stage_dir("extract") / self.data_file
        if not data.is_file():
            raise RstarError(
                f"round {ctx.round}: stage {self.stage!r} needs the round's 'extract' stage first ({data})"
            )
        if not data.read_text(encoding="utf-8").strip():
            what = "SFT examples (no problem was solved)" if self.stage == "train_sft" else "preference pairs"
            raise RstarError(
                f"round {ctx.round}: {data} holds no {what}; search more (budget.samples, more problems, "
                "an easier dataset) or remove the stage"
            )
        return train(ctx, self.stage, data, init_model(ctx, self.stage), ctx.folder)


def train(ctx: StageContext, stage: str, data: Path, init: str, out_dir: Path) -> dict[str, Any]:
    """Build the recipe's ``stage`` trainer and fit it; the summary names the model, its start and data."""
    spec: ComponentSpec = ctx.recipe.section(stage)
    trainer = ctx.build("trainer", spec)
    ctx.progress("loading", {"what": f"trainer {spec.name} from {init}"})
    model = trainer.fit(data, init, out_dir)
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return {"model": str(model), "init_model": init, "data": str(data), **metrics}


class TrainSFTStage(TrainStage):
    stage = "train_sft"
    data_file = SFT_FILE
    needs: ClassVar[Mapping[str, str]] = {"train_sft": "{name: sft}"}


class TrainPPMStage(TrainStage):
    stage = "train_ppm"
    data_file = PAIRS_FILE
    needs: ClassVar[Mapping[str, str]] = {"train_ppm": "{name: ppm}"}


class EvaluateStage:
    """One search per ``evaluate.runs`` label into ``evaluate/<label>/``, models shared between runs.

    In round 1 it first evaluates **round 0**, the base policy, into ``round_0/evaluate/<label>/``: each run with
    ``@round.sft`` / ``@previous.sft`` standing for the base model, searched with the step format round 1
    searches the base model with; a run that needs a trained PPM (``@...ppm``) has no round 0 and is left out.
    So the report starts from where the base model stood."""

    needs: ClassVar[Mapping[str, str]] = {"evaluate": "{runs: {greedy: {search: {name: greedy}}}}"}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        if ctx.round == 1:
            base = base_runs(ctx)
            if base:
                folder = ctx.round_dir(0) / "evaluate"
                if not is_done(folder):
                    folder.mkdir(parents=True, exist_ok=True)
                    mark_done(folder, evaluate(ctx, base, folder, round_index=0))
        evaluation: Evaluation = ctx.recipe.section("evaluate")
        return evaluate(ctx, evaluation.runs, ctx.folder, ctx.round)


def evaluate(ctx: StageContext, runs: Mapping[str, Recipe], folder: Path, round_index: int) -> dict[str, Any]:
    """One search per run into ``folder/<label>/``, each resumable and marked done; models shared."""
    summaries: dict[str, Any] = {}
    cache = ctx.components()
    try:
        for label, recipe in runs.items():
            run_folder = folder / label
            if is_done(run_folder):
                summaries[label] = read_summary(run_folder)
                continue
            run_folder.mkdir(parents=True, exist_ok=True)
            ctx.progress("evaluate_run", {"round": round_index, "label": label})
            summaries[label] = ctx.search(recipe, run_folder, cache=cache)
            mark_done(run_folder, summaries[label])
    finally:
        cache.close()
    return {"runs": summaries, "seconds": round(sum(float(r.get("seconds", 0) or 0) for r in summaries.values()), 2)}


def base_runs(ctx: StageContext) -> dict[str, Recipe]:
    """The ``evaluate`` runs as round 0 sees them: policy markers stand for the base model, the step format is
    the one round 1 searches the base model with; runs that need a trained PPM are left out."""
    evaluation: Evaluation | None = ctx.run_recipe.round(1).section("evaluate")
    if evaluation is None:
        return {}
    model = base_model(ctx.run_recipe)
    base_format = ctx.run_recipe.round(1).options.step_format
    runs: dict[str, Recipe] = {}
    for label, recipe in evaluation.runs.items():
        needs_ppm = []

        def base(marker: str, path: str, needs_ppm: list[str] = needs_ppm) -> str:
            if marker.endswith(".ppm"):
                needs_ppm.append(path)
            return model

        resolved = replace_markers(recipe, base)
        if not needs_ppm:
            runs[label] = replace(resolved, options=resolved.options.model_copy(update={"step_format": base_format}))
    return runs


STAGES: Sequence[tuple[str, str, str]] = (
    ("search_unsolved", "SearchUnsolvedStage", "search again the problems with no correct answer"),
    ("extract", "ExtractStage", "SFT data and preference pairs from the round's trees"),
    ("train_sft", "TrainSFTStage", "fine-tune the policy on the round's SFT data"),
    ("train_ppm", "TrainPPMStage", "train the process preference model on the round's pairs"),
    ("evaluate", "EvaluateStage", "searches of held-out problems with the round's models"),
)
"""Stage name, class in this module, description: what ``rstar_pipeline`` registers (``search`` is the kernel's)."""
