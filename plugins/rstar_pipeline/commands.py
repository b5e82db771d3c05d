"""The pipeline's commands: ``rstar extract``, ``train``, ``compare``, ``report`` and ``rescore``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click
import yaml
from rich.markup import escape
from rich.table import Table

from rstar.cli import OVERRIDES, console, load, make_runner, out, showing_progress
from rstar.errors import ConfigError
from rstar.options import validate_options
from rstar.rundir import write_jsonl
from rstar.runner import StageRun
from rstar.steps import StepFormat, StepFormatOptions


@click.command()
@click.argument("sources", nargs=-1, type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder (default: SOURCE/extract)")
@click.option(
    "--import-sft", "import_sft", type=click.Path(exists=True, dir_okay=False), help="original rStar SFT file"
)
@click.option(
    "--import-pairs", "import_pairs", type=click.Path(exists=True, dir_okay=False), help="original rStar PPM pair file"
)
@click.option("--prompt", help="step_format.prompt of the records (default: the run's, else 'bootstrap')")
@click.option("--few-shot", "few_shot", type=int, help="step_format.few_shot of the records (default: the run's)")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="an extraction option, e.g. sft_top_k=4")
def extract(
    sources: tuple[str, ...],
    out_dir: str | None,
    import_sft: str | None,
    import_pairs: str | None,
    prompt: str | None,
    few_shot: int | None,
    settings: tuple[str, ...],
) -> None:
    """Trees -> SFT data and PPM preference pairs (sft.jsonl, pairs.jsonl).

    SOURCES are trees.jsonl files or folders searched for them (a run, a round, a stage). Or convert
    the original rStar's released files with --import-sft / --import-pairs. Prompts are rendered with
    the top-level step_format of the run the SOURCES belong to (its config.yaml), as the extract stage
    does; --prompt and --few-shot override it.
    """
    from rstar_pipeline.extract import ExtractOptions, extract_files, import_rstar_pairs, import_rstar_sft

    if not sources and not (import_sft or import_pairs):
        raise ConfigError(["give trees (a run folder or trees.jsonl files) or --import-sft / --import-pairs"])
    fmt, origin = step_format([Path(s) for s in sources], prompt, few_shot)
    console.print(f"[dim]prompts: step_format {escape(origin)}[/]")
    values: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError([f"--set {item!r}: expected KEY=VALUE"])
        values[key] = yaml.safe_load(raw)
    options = validate_options(ExtractOptions, values, "extract")
    if out_dir is None:
        first = Path(sources[0]) if sources else Path(import_sft or import_pairs or ".").parent
        out_dir = str((first if first.is_dir() else first.parent) / "extract")
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    if sources:
        summary = extract_files([Path(s) for s in sources], target, options, fmt)
        out.print(json.dumps(summary, indent=2))
    if import_sft:
        records = import_rstar_sft(Path(import_sft), fmt)
        write_jsonl(target / "sft.jsonl", records)
        out.print(f"imported {len(records)} SFT records")
    if import_pairs:
        pairs = import_rstar_pairs(Path(import_pairs))
        write_jsonl(target / "pairs.jsonl", pairs)
        out.print(f"imported {len(pairs)} preference pairs")
    out.print(f"wrote {target}")


def step_format(sources: list[Path], prompt: str | None, few_shot: int | None) -> tuple[StepFormat, str]:
    """The step format records are rendered with: the top-level ``step_format`` of the run folder (the
    nearest ``config.yaml`` above the first source), with ``--prompt`` / ``--few-shot`` over it; and a line
    saying where it came from."""
    keys: dict[str, Any] = {}
    origin = "defaults"
    for source in sources[:1]:
        for folder in [source.resolve(), *source.resolve().parents]:
            config = folder / "config.yaml"
            if config.is_file():
                recipe = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
                keys = dict(recipe.get("step_format") or {})
                origin = f"from {config}"
                break
    if prompt is not None:
        keys["prompt"] = prompt
    if few_shot is not None:
        keys["few_shot"] = few_shot
    options = validate_options(StepFormatOptions, keys, "step_format")
    return StepFormat.from_config(options), f"prompt={options.prompt}, few_shot={options.few_shot} ({origin})"


@click.command()
@click.argument("kind", type=click.Choice(["sft", "ppm"]))
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
@click.option("--round", "round_index", type=int, default=1, show_default=True, help="which round's data and folder")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help="training file (default: the round's)")
@click.option("--init", "init_model", help="model to start from (default: as `rstar run` would)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder (default: the round's)")
def train(
    kind: str,
    recipe: str,
    overrides: tuple[str, ...],
    round_index: int,
    data: str | None,
    init_model: str | None,
    out_dir: str | None,
) -> None:
    """One training stage: the recipe's train_sft or train_ppm trainer on a round's data (resumable)."""
    from rstar_pipeline import stages
    from rstar_pipeline.extract import PAIRS_FILE, SFT_FILE

    runner = make_runner(recipe, overrides)
    stage = f"train_{kind}"
    round_recipe = runner.validated.round(round_index)
    if round_recipe.section(stage) is None:
        raise ConfigError([f"{stage}: the recipe has no {stage!r} section, e.g. {stage}: {{name: {kind}}}"], recipe)
    if data is None and init_model is None and out_dir is None:
        with showing_progress():
            result = runner.run_stage(stage, round_index)
        out.print(json.dumps(result.summary, indent=2))
        return
    ctx = StageRun(runner, round_recipe, round_index, runner.round_dir(round_index) / stage)
    data_path = Path(data) if data else ctx.stage_dir("extract") / (SFT_FILE if kind == "sft" else PAIRS_FILE)
    target = Path(out_dir) if out_dir else ctx.folder
    summary = stages.train(ctx, stage, data_path, init_model or stages.init_model(ctx, stage), target)
    out.print(f"model: {summary['model']}")


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def compare(recipe: str, overrides: tuple[str, ...]) -> None:
    """Search with several strategies and budgets (the recipe's compare section); write a table and a plot."""
    from rstar.plugins import get_plugin_manager
    from rstar.registry import get_registry
    from rstar_pipeline.compare import Comparison, fmt_ci, fmt_percent, fmt_share

    def progress(event: str, payload: dict[str, Any]) -> None:
        if event == "cell":
            status = payload["status"]
            if payload["changed"]:
                status += f": changed {', '.join(payload['changed'])}"
            console.print(
                f"[bold]cell {payload['index']} of {payload['total']}[/]: {escape(str(payload['label']))}, "
                f"{payload['budget_key']}={payload['budget']} ({escape(status)})"
            )

    comparison = Comparison(
        load(recipe, overrides), get_registry(), get_plugin_manager(), source=recipe, progress=progress
    )
    with showing_progress():
        result = comparison.run()
    table = Table(title="comparison")
    columns = (
        "strategy",
        "budget",
        "problems",
        "accuracy",
        "CI",
        "tokens/problem",
        "policy calls",
        "PPM tokens",
        "PPM computed",
        "seconds",
        "verifier time",
        "PPM time",
        "cell",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("strategy", "cell") else "right")
    for r in result.rows:
        table.add_row(
            r["strategy"],
            str(r["budget"]),
            str(r["problems"]),
            fmt_percent(r["accuracy"]),
            fmt_ci(r),
            str(r["tokens_per_problem"]),
            str(r["policy_calls"]),
            str(r["reward_tokens"]),
            "n/a" if r.get("reward_tokens_computed") is None else str(r["reward_tokens_computed"]),
            str(r["seconds"]),
            fmt_share(r.get("verifier_share")),
            fmt_share(r.get("reward_share")),
            r["status"],
        )
    out.print(table)
    for line in result.footer:
        out.print(escape(line))
    if result.plot_note:
        console.print(f"[yellow]{escape(result.plot_note)}[/]")
    for path in result.files.values():
        out.print(f"wrote {path}")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="where to write them (default: FOLDER)")
def report(folder: str, out_dir: str | None) -> None:
    """Write report.md and report.png for a run, search or compare folder and print the Markdown.

    Tables: the rounds (a run), every search with its accuracy and spend (re-scorings included), the seconds of
    each stage per round (a compare folder: of each cell). Plots: accuracy per round, accuracy against tokens
    per problem, time per stage (matplotlib: pip install 'rstar[plot]').
    """
    from rstar_pipeline.report import write_report

    path = write_report(folder, out_dir)
    click.echo(path.read_text(encoding="utf-8"))
    out.print(f"wrote {path}", highlight=False)
    if (path.parent / "report.png").is_file():
        out.print(f"wrote {path.parent / 'report.png'}", highlight=False)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("settings", nargs=-1, metavar="[answer_checker.KEY=VALUE | reward_model.KEY=VALUE]...")
@click.option("--answer-checker", "answer_checker", metavar="NAME", help="check every answer again with this checker")
@click.option("--reward-model", "reward_model", metavar="NAME", help="score the nodes again with this reward model")
@click.option(
    "--vote",
    type=click.Choice(["best", "weighted", "majority"]),
    help="how the prediction is picked from the new scores (default: as the strategy picks it)",
)
@click.option("--answers-only", is_flag=True, help="score only the answers with the reward model, not every step")
@click.option("--name", help="the new folders are rescore-NAME (default: the components' names)")
def rescore(
    folder: str,
    settings: tuple[str, ...],
    answer_checker: str | None,
    reward_model: str | None,
    vote: str | None,
    answers_only: bool,
    name: str | None,
) -> None:
    """Re-check the stored trees of a run, search or compare folder, generating nothing.

    Each finished search's trees are read back, re-checked with --answer-checker (each answer's `correct`) and/or
    re-scored with --reward-model (each node's `value`, then the prediction picked again from the new scores as
    the strategy picks it), and written with a new summary into SEARCH/rescore-NAME/, next to the originals,
    which are never changed. Components take options as KEY=VALUE settings, e.g.

    \b
    rstar rescore runs/qs --reward-model hf reward_model.model=@round.ppm reward_model.threads=2
    rstar rescore runs/cmp --answer-checker math_verify answer_checker.timeout_s=5
    """
    from rstar.registry import get_registry
    from rstar_pipeline.rescore import Outcome, Vote, rescore_all, rescoring

    registry = get_registry()
    plan = rescoring(
        registry,
        answer_checker,
        reward_model,
        settings,
        name=name,
        vote=cast("Vote | None", vote),
        answers_only=answers_only,
    )
    root = Path(folder).resolve()

    def done(outcome: Outcome) -> None:
        where = outcome.folder.relative_to(root) if outcome.folder.is_relative_to(root) else outcome.folder
        console.print(f"[dim]rescored {escape(str(where))}[/]", highlight=False)

    outcomes, skipped = rescore_all(root, plan, registry, on_done=done)
    for item in skipped:
        where = item.folder.relative_to(root) if item.folder.is_relative_to(root) else item.folder
        console.print(f"[yellow]left out[/] {escape(str(where))}: {escape(item.reason)}", highlight=False)
    if not outcomes:
        raise ConfigError([f"{folder}: no search could be re-scored (see above)"])
    table = Table(title=f"rescore-{plan.name}")
    table.add_column("search", overflow="fold")
    table.add_column("strategy")
    for col in ("problems", "accuracy before", "after", "predictions changed", "reward calls", "seconds"):
        table.add_column(col, justify="right")
    for outcome in outcomes:
        s, r = outcome.summary, outcome.summary["rescore"]
        table.add_row(
            escape(str(outcome.target.folder.relative_to(root) if outcome.target.folder != root else root.name)),
            str(s["strategy"]),
            str(s["problems"]),
            fmt_accuracy(r["accuracy_before"]),
            fmt_accuracy(s["accuracy"]),
            str(r["changed_predictions"]),
            str(r["reward_calls"]),
            str(r["seconds"]),
        )
    out.print(table)
    for outcome in outcomes:
        out.print(f"wrote {outcome.folder}", highlight=False)


def fmt_accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
