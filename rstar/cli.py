"""The ``rstar`` command. Plugins add sub-commands through the ``register_commands`` hook.

Errors caused by input (`rstar.errors.RstarError`) are printed as one message with a
non-zero exit code; set ``RSTAR_DEBUG=1`` to see their traceback too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rstar import __version__
from rstar.errors import RstarError

console = Console(stderr=True, soft_wrap=True)
# Not a terminal (CI logs, pipes): tables get 120 columns instead of rich's 80.
out = Console(soft_wrap=True, width=shutil.get_terminal_size((120, 24)).columns)

OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE | ~KEY]...")


class RstarGroup(click.Group):
    """The top-level group: built-in commands plus plugin commands, imported only when used."""

    def _plugin_commands(self) -> dict[str, Any]:
        from rstar.registry import get_registry

        registry = get_registry()
        return {name: registry.get("command", name) for name in registry.names("command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        registration = self._plugin_commands().get(cmd_name)
        return registration.load() if registration is not None else None


@click.group(cls=RstarGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rstar")
def cli() -> None:
    """rstar: rStar-Math as a plugin framework.

    Recipes are YAML files; KEY=VALUE arguments override their keys (a.b.c=VALUE for nested keys,
    ~KEY to delete one).
    """


# --- helpers -------------------------------------------------------------------------------------


def _load(recipe: str, overrides: Sequence[str]) -> dict[str, Any]:
    from rstar.config import load_recipe

    return load_recipe(recipe, overrides)


def _runner(recipe: str, overrides: Sequence[str]) -> Any:
    from rstar.plugins import get_plugin_manager
    from rstar.registry import get_registry
    from rstar.runner import Runner

    data = _load(recipe, overrides)
    return Runner(data, get_registry(), get_plugin_manager(), source=recipe, progress=_Progress())


class _Progress:
    """Shows a run's progress with rich: a bar per search stage with the accuracy so far."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None
        self.correct = 0
        self.seen = 0

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "loading":
            console.print(f"[dim]loading {escape(str(payload['what']))}...[/]")
        elif event == "stage_start" and payload["round"]:
            console.rule(f"round {payload['round']}: {payload['stage']}", style="dim")
        elif event == "stage_end" and payload["stage"] != "search":
            console.print(f"[dim]{escape(str(payload['stage']))} done: {escape(_brief(payload['summary']))}[/]")
        elif event == "evaluate_run":
            console.print(f"[bold]evaluate[/] {escape(str(payload['label']))}")
        elif event == "round_end":
            console.print(f"[dim]round {payload['round']} done; report: {escape(str(payload['report']))}[/]")
        elif event == "stage_skipped":
            console.print(f"[dim]{escape(str(payload['folder']))}: already done, skipped[/]")
        elif event == "search_start":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.correct = self.seen = 0
            if payload["done"]:
                console.print(f"[dim]resuming: {payload['done']} of {payload['total']} problems already searched[/]")
            self.bar = Progress(
                TextColumn("[bold]search[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[acc]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.bar.start()
            self.task = self.bar.add_task("search", total=payload["total"], completed=payload["done"], acc="")
        elif event == "tree" and self.bar is not None:
            tree = payload["tree"]
            self.seen += tree.correct is not None
            self.correct += bool(tree.correct)
            acc = f"acc {self.correct / self.seen:.0%}" if self.seen else ""
            self.bar.update(self.task, advance=1, acc=acc)
        elif event == "engine_stats" and self.bar is not None:
            self.bar.stop()
            self.bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _brief(summary: dict[str, Any]) -> str:
    """A stage summary on one line: its scalar values, nested ones left out."""
    items = [f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str)) and k not in ("data",)]
    return ", ".join(items)[:300]


def _summary_table(rows: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title="search results")
    for col in ("stage", "strategy", "problems", "accuracy", "answered", "tokens", "policy calls", "seconds"):
        table.add_column(col, justify="right" if col not in ("stage", "strategy") else "left")
    for name, s in rows:
        acc = "n/a" if s.get("accuracy") is None else f"{s['accuracy']:.1%}"
        table.add_row(
            name,
            str(s.get("strategy", "")),
            str(s.get("problems", "")),
            acc,
            str(s.get("answered", "")),
            str(s.get("generated_tokens", "")),
            str(s.get("policy_calls", "")),
            str(s.get("seconds", "")),
        )
    return table


# --- commands ------------------------------------------------------------------------------------


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def run(recipe: str, overrides: tuple[str, ...]) -> None:
    """Run a recipe: all rounds and stages, resumable (re-run the same command to continue)."""
    from rstar.report import markdown_table, round_rows

    runner = _runner(recipe, overrides)
    try:
        results = runner.run()
    finally:
        runner.progress.close()
    searches = [(f"round {r.round} {r.name}", r.summary) for r in results if r.name in ("search", "search_unsolved")]
    for r in results:
        if r.name == "evaluate":
            searches += [(f"round {r.round} eval {label}", s) for label, s in r.summary.get("runs", {}).items()]
    out.print(_summary_table(searches))
    if any(r.name != "search" for r in results):
        out.print(markdown_table(round_rows(runner.output_dir)))
        out.print(f"report: {runner.output_dir / 'report.md'}")
    out.print(f"run folder: {runner.output_dir}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def search(recipe: str, overrides: tuple[str, ...]) -> None:
    """Search every problem of the recipe's dataset once; write trees.jsonl and print accuracy."""
    runner = _runner(recipe, overrides)
    try:
        result = runner.search()
    finally:
        runner.progress.close()
    s = result.summary
    out.print(_summary_table([("search", s)]))
    acc = (
        "n/a (no reference answers)"
        if s["accuracy"] is None
        else f"{s['accuracy']:.1%} ({s['correct']}/{s['problems']})"
    )
    out.print(f"accuracy: {acc}; generated {s['generated_tokens']} tokens in {s['seconds']} s")
    out.print(f"trees: {runner.output_dir / 'search' / 'trees.jsonl'}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def compare(recipe: str, overrides: tuple[str, ...]) -> None:
    """Search with several strategies and budgets (the recipe's compare section); write a table and a plot."""
    from rstar.compare import Comparison, fmt_ci, fmt_percent
    from rstar.plugins import get_plugin_manager
    from rstar.registry import get_registry

    bar = _Progress()

    def progress(event: str, payload: dict[str, Any]) -> None:
        if event == "cell":
            status = payload["status"]
            if payload["changed"]:
                status += f": changed {', '.join(payload['changed'])}"
            console.print(
                f"[bold]cell {payload['index']} of {payload['total']}[/]: {escape(str(payload['label']))}, "
                f"samples={payload['budget']} ({escape(status)})"
            )
        bar(event, payload)

    comparison = Comparison(
        _load(recipe, overrides), get_registry(), get_plugin_manager(), source=recipe, progress=progress
    )
    try:
        result = comparison.run()
    finally:
        bar.close()
    table = Table(title="comparison")
    columns = ("strategy", "budget", "problems", "accuracy", "CI", "tokens/problem", "policy calls", "seconds", "cell")
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
            str(r["seconds"]),
            r["status"],
        )
    out.print(table)
    if result.plot_note:
        console.print(f"[yellow]{escape(result.plot_note)}[/]")
    for path in result.files.values():
        out.print(f"wrote {path}")


@cli.command()
@click.argument("sources", nargs=-1, type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder (default: SOURCE/extract)")
@click.option(
    "--import-sft", "import_sft", type=click.Path(exists=True, dir_okay=False), help="original rStar SFT file"
)
@click.option(
    "--import-pairs", "import_pairs", type=click.Path(exists=True, dir_okay=False), help="original rStar PPM pair file"
)
@click.option("--prompt", default="sft", show_default=True, help="prompt template the records are rendered with")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="an extraction option, e.g. sft_top_k=4")
def extract(
    sources: tuple[str, ...],
    out_dir: str | None,
    import_sft: str | None,
    import_pairs: str | None,
    prompt: str,
    settings: tuple[str, ...],
) -> None:
    """Trees -> SFT data and PPM preference pairs (sft.jsonl, pairs.jsonl).

    SOURCES are trees.jsonl files or folders searched for them (a run, a round, a stage). Or convert
    the original rStar's released files with --import-sft / --import-pairs.
    """
    from pathlib import Path

    import yaml

    from rstar.config import validate_options
    from rstar.errors import ConfigError
    from rstar.extract import ExtractOptions, extract_files, import_rstar_pairs, import_rstar_sft, write_jsonl
    from rstar.steps import StepFormat

    if not sources and not (import_sft or import_pairs):
        raise ConfigError(["give trees (a run folder or trees.jsonl files) or --import-sft / --import-pairs"])
    values: dict[str, Any] = {"prompt": prompt}
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
        summary = extract_files([Path(s) for s in sources], target, options)
        out.print(json.dumps(summary, indent=2))
    if import_sft:
        records = import_rstar_sft(Path(import_sft), StepFormat.from_options(prompt=prompt))
        write_jsonl(target / "sft.jsonl", records)
        out.print(f"imported {len(records)} SFT records")
    if import_pairs:
        pairs = import_rstar_pairs(Path(import_pairs))
        write_jsonl(target / "pairs.jsonl", pairs)
        out.print(f"imported {len(pairs)} preference pairs")
    out.print(f"wrote {target}")


@cli.command()
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
    from pathlib import Path

    from rstar.config import round_config

    runner = _runner(recipe, overrides)
    stage = f"train_{kind}"
    cfg = round_config(runner.recipe, round_index)
    if cfg.get(stage) is None:
        from rstar.errors import ConfigError

        raise ConfigError([f"{stage}: the recipe has no {stage!r} section, e.g. {stage}: {{name: {kind}}}"], recipe)
    if data is None and init_model is None and out_dir is None:
        result = runner.run_stage(stage, round_index)
        out.print(json.dumps(result.summary, indent=2))
        return
    from rstar.registry import get_registry

    round_dir = runner.output_dir / f"round_{round_index}"
    data_path = Path(data) if data else round_dir / "extract" / ("sft.jsonl" if kind == "sft" else "pairs.jsonl")
    if init_model is None:
        sft = round_dir / "train_sft" / "model"
        init_model = str(sft) if kind == "ppm" and sft.is_dir() else runner.base_model()
    target = Path(out_dir) if out_dir else round_dir / stage
    model = get_registry().build("trainer", cfg[stage]).fit(data_path, init_model, target)
    out.print(f"model: {model}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe and every component's options; print every problem found."""
    from rstar.config import check_recipe
    from rstar.errors import ConfigError
    from rstar.registry import get_registry

    data = _load(recipe, overrides)
    problems = check_recipe(data, get_registry())
    if problems:
        raise ConfigError(problems, source=recipe)
    out.print(f"[green]ok[/]: {recipe} is valid")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def plugins(as_json: bool) -> None:
    """List installed plugins and the components each registers."""
    from rstar.plugins import get_plugin_manager, plugin_versions
    from rstar.registry import get_registry

    versions = plugin_versions(get_plugin_manager())
    listing: dict[str, dict[str, Any]] = {name: {**info, "components": {}} for name, info in sorted(versions.items())}
    for reg in get_registry().all():
        entry = listing.setdefault(reg.plugin, {"distribution": None, "version": None, "components": {}})
        entry["components"].setdefault(reg.kind, []).append(
            {"name": reg.name, "description": reg.description} if as_json else reg.name
        )
    if as_json:
        out.print_json(json.dumps([{"name": k, **v} for k, v in listing.items()]))
        return
    table = Table(title="rstar plugins")
    table.add_column("plugin")
    table.add_column("package")
    table.add_column("components")
    for name, info in listing.items():
        package = f"{info['distribution']} {info['version']}" if info["distribution"] else "-"
        comps = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(info["components"].items()))
        table.add_row(name, package, comps or "-")
    out.print(table)
    from rstar.plugins import blocked_plugins

    if blocked_plugins():
        out.print(f"blocked by RSTAR_BLOCK_PLUGINS: {', '.join(blocked_plugins())}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``rstar`` command."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="rstar", standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RstarError as exc:
        if os.environ.get("RSTAR_DEBUG"):
            console.print_exception()
        # The message is plain text: brackets in it (an extra's name, a key path) are not markup.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
