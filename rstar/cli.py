"""The ``rstar`` command. Plugins add sub-commands through the ``register_commands`` hook.

Errors caused by input (`rstar.errors.RstarError`) are printed as one message with a
non-zero exit code; set ``RSTAR_DEBUG=1`` to see their traceback too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rstar import __version__, hookimpl
from rstar.errors import RstarError

if TYPE_CHECKING:
    from rstar.config import Recipe
    from rstar.engine import EngineSnapshot
    from rstar.types import RunInfo

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


def load(recipe: str, overrides: Sequence[str]) -> dict[str, Any]:
    """A recipe file with the command line's overrides applied (not yet validated)."""
    from rstar.config import load_recipe

    return load_recipe(recipe, overrides)


def make_runner(recipe: str, overrides: Sequence[str]) -> Any:
    """A `rstar.runner.Runner` of a recipe file (validated once, here) with the process's plugin manager; run it
    inside `showing_progress` to see its progress."""
    from rstar.plugins import get_plugin_manager
    from rstar.registry import get_registry
    from rstar.runner import Runner

    data = load(recipe, overrides)
    return Runner(data, get_registry(), get_plugin_manager(), source=recipe)


@contextmanager
def showing_progress() -> Iterator[ProgressDisplay]:
    """Show what runs inside on the terminal: a `ProgressDisplay` registered with the process's plugin manager for
    the duration, like any plugin implementing the lifecycle hooks."""
    from rstar.plugins import get_plugin_manager

    pm = get_plugin_manager()
    display = ProgressDisplay(console)
    pm.register(display, name=ProgressDisplay.plugin_name)
    try:
        yield display
    finally:
        display.close()
        pm.unregister(display)


class ProgressDisplay:
    """The command line's view of a run, as a plugin of the lifecycle hooks (`rstar.hookspecs`).

    On a terminal, each search gets a line that says what it searches and a live bar refreshed in place: problems
    done, in flight, accuracy so far, answers, nodes/s (policy samples drawn: each makes at most one node),
    generated tokens/s, verifier jobs/s, reward-model calls and the policy's batch fill. Elsewhere (a pipe, a CI
    log) it is quiet: one line per finished search or stage, one per stage skipped and per round.
    """

    plugin_name = "cli-progress"

    def __init__(self, console: Console, live: bool | None = None) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.bar: Any = None
        self.task: Any = None
        self.resumed = 0
        self.workers = ""  # an executor's workers (executor_event), shown after the counters

    @hookimpl
    def stage_start(self, run: RunInfo, round: int, stage: str, folder: Path, skipped: bool) -> None:
        if skipped:
            self.console.print(f"[dim]{escape(_where(run, folder))}: already done, skipped[/]", highlight=False)
        elif round and self.live:
            self.console.rule(f"round {round}: {escape(stage)}", style="dim")

    @hookimpl
    def search_start(self, run: RunInfo, folder: Path, recipe: Recipe, total: int, done: int) -> None:
        self.close()
        self.resumed = done
        self.workers = ""
        if not self.live:
            return
        policy = recipe.require("policy")
        model = getattr(policy.options, "model", None)
        what = f"{recipe.require('search').name}, policy {policy.name}" + (f" {model}" if model else "")
        resumed = f", {done} already searched" if done else ""
        self.console.print(f"[bold]search[/] {escape(_where(run, folder))}: {escape(what)}; {total} problems{resumed}")
        if done >= total:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]search[/]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counters]}"),
            console=self.console,
        )
        self.bar.start()
        self.task = self.bar.add_task("search", total=total, completed=done, counters="loading components...")

    @hookimpl
    def search_progress(self, snapshot: EngineSnapshot) -> None:
        if self.bar is not None:
            counters = counters_line(snapshot) + (f" · {self.workers}" if self.workers else "")
            self.bar.update(self.task, completed=self.resumed + snapshot.done, counters=counters)

    @hookimpl
    def executor_event(self, event: str, payload: dict[str, Any]) -> None:
        if event in ("worker_ready", "worker_lost"):
            self.console.print(f"[dim]{escape(event.replace('_', ' '))}: {escape(_brief(payload))}[/]", highlight=False)
        elif event == "executor_progress":
            self.workers = workers_line(payload.get("workers") or [])

    @hookimpl
    def search_end(self, run: RunInfo, folder: Path, summary: dict[str, Any]) -> None:
        self.close()
        line = f"{_where(run, folder)} done: {search_line(summary)}"
        self.console.print(f"[dim]{escape(line)}[/]", highlight=False)

    @hookimpl
    def stage_end(self, stage: str, summary: dict[str, Any]) -> None:
        if "strategy" not in summary:  # a search stage was told by search_end
            self.console.print(f"[dim]{escape(stage)} done: {escape(_brief(summary))}[/]", highlight=False)

    @hookimpl(trylast=True)  # after the pipeline's round_end has written the report
    def round_end(self, run: RunInfo, round: int) -> None:
        report = run.output_dir / "report.md"
        where = f"; report: {report}" if report.is_file() else ""
        self.console.print(f"[dim]round {round} done{escape(where)}[/]", highlight=False)

    @hookimpl
    def run_end(self) -> None:
        self.close()

    def note(self, event: str, payload: dict[str, Any]) -> None:
        """A stage's note for whoever runs it (`rstar.runner.StageContext.progress`: loading a trainer, say), shown
        on a terminal only; an evaluate run's is left out (its search prints a header of its own)."""
        if self.live and event != "evaluate_run":
            self.close()
            self.console.print(f"[dim]{escape(event)}: {escape(_brief(payload))}[/]", highlight=False)

    def close(self) -> None:
        """Stop the live bar, if one is showing."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def workers_line(workers: list[dict[str, Any]]) -> str:
    """An executor's workers on one line: how many are up, and each one's problems per second."""
    ready = [w for w in workers if w.get("state") == "ready"]
    rates = " ".join(f"{float(w.get('problems_per_s') or 0):.2f}" for w in ready)
    return f"{len(ready)}/{len(workers)} workers ({rates} problems/s)" if workers else ""


def counters_line(s: EngineSnapshot) -> str:
    """A search's counters on one line: what is in flight, accuracy so far, rates, reward calls, batch fill."""
    per_s = 1 / s.seconds if s.seconds > 0 else 0.0
    parts = [f"{s.in_flight} in flight"]
    if s.accuracy is not None:
        parts.append(f"acc {s.accuracy:.0%} ({s.correct}/{s.labelled})")
    parts.append(f"{s.answered} answered")
    parts.append(f"{s.samples * per_s:.1f} nodes/s")
    parts.append(f"{_count(s.generated_tokens * per_s)} tok/s")
    parts.append(f"{s.verifier_jobs * per_s:.1f} jobs/s")
    if s.reward_calls:
        parts.append(f"{_count(s.reward_calls)} reward calls")
    if s.policy_batches:
        parts.append(f"fill {s.batch_fill:.0%}")
    return " · ".join(parts)


def search_line(summary: dict[str, Any]) -> str:
    """A finished search's summary on one line."""
    acc = summary.get("accuracy")
    accuracy = "n/a" if acc is None else f"{acc:.1%} ({summary.get('correct')}/{summary.get('problems')})"
    return (
        f"{summary.get('problems')} problems, accuracy {accuracy}, {summary.get('answered')} answered, "
        f"{summary.get('generated_tokens')} tokens, {summary.get('seconds')} s"
    )


def _count(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"


def _where(run: RunInfo, folder: Path) -> str:
    """``folder`` relative to the run folder (``round_1/evaluate/greedy``), else as it is."""
    try:
        return str(Path(folder).relative_to(run.output_dir))
    except ValueError:
        return str(folder)


def _brief(summary: dict[str, Any]) -> str:
    """A stage summary on one line: its scalar values, nested ones left out."""
    items = [f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str)) and k not in ("data",)]
    return ", ".join(items)[:300]


def _summary_table(rows: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title="search results")
    columns = ["stage", "strategy", "problems", "accuracy", "answered", "tokens", "policy calls", "seconds"]
    # A serving engine that reports its prefix-cache hit rate (the optional stats() of a component) gets a column.
    cached = any("prefix_cache_hit_rate" in s.get("components", {}).get("policy", {}) for _, s in rows)
    if cached:
        columns.insert(6, "prefix cache")
    for col in columns:
        table.add_column(col, justify="right" if col not in ("stage", "strategy") else "left")
    for name, s in rows:
        acc = "n/a" if s.get("accuracy") is None else f"{s['accuracy']:.1%}"
        cells = [
            name,
            str(s.get("strategy", "")),
            str(s.get("problems", "")),
            acc,
            str(s.get("answered", "")),
            str(s.get("generated_tokens", "")),
            str(s.get("policy_calls", "")),
            str(s.get("seconds", "")),
        ]
        if cached:
            rate = s.get("components", {}).get("policy", {}).get("prefix_cache_hit_rate")
            cells.insert(6, "" if rate is None else f"{rate:.0%}")
        table.add_row(*cells)
    return table


# --- commands ------------------------------------------------------------------------------------


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def run(recipe: str, overrides: tuple[str, ...]) -> None:
    """Run a recipe: all rounds and stages, resumable (re-run the same command to continue)."""
    runner = make_runner(recipe, overrides)
    with showing_progress() as display:
        runner.progress = display.note
        results = runner.run()
    # A search's summary names its strategy; a stage of several searches (evaluate) lists them under "runs".
    searches = []
    for r in results:
        if "strategy" in r.summary:
            searches.append((f"round {r.round} {r.name}", r.summary))
        runs = r.summary.get("runs")
        if isinstance(runs, dict):
            searches += [(f"round {r.round} {r.name} {label}", s) for label, s in runs.items() if "strategy" in s]
    out.print(_summary_table(searches))
    report = runner.output_dir / "report.md"
    if any(r.name != "search" for r in results) and report.is_file():
        out.print(report.read_text(encoding="utf-8"))
        out.print(f"report: {report}")
    out.print(f"run folder: {runner.output_dir}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@OVERRIDES
def search(recipe: str, overrides: tuple[str, ...]) -> None:
    """Search every problem of the recipe's dataset once; write trees.jsonl and print accuracy."""
    runner = make_runner(recipe, overrides)
    with showing_progress():
        result = runner.search()
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
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe and every component's options; print every problem found."""
    from rstar.config import check_recipe
    from rstar.errors import ConfigError
    from rstar.registry import get_registry

    data = load(recipe, overrides)
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


@cli.command()
@click.argument("target", nargs=-1, metavar="[KIND] NAME")
@click.option("--markdown", is_flag=True, help="print the Markdown table the docs show")
@click.option("--nested/--no-nested", default=True, help="list a nested section's keys as section.key (default)")
def options(target: tuple[str, ...], markdown: bool, nested: bool) -> None:
    """Show the options of a component, a plugin section or the recipe itself: key, default, meaning.

    \b
    rstar options verifier subprocess    a component, by kind and name
    rstar options mcts                   a name only one kind has
    rstar options recipe                 the recipe's own keys (also: budget, step_format)
    rstar options section extract        a plugin's section
    rstar options                        list what can be shown
    """
    from rstar.docs import option_rows, options_markdown, resolve_target, targets
    from rstar.registry import get_registry

    registry = get_registry()
    if not target:
        out.print("rstar options TARGET shows the options of:", highlight=False)
        for name in targets(registry):
            out.print(f"  {escape(name)}", highlight=False)
        return
    found = resolve_target(target, registry)
    if markdown:
        click.echo(options_markdown(found.model, nested=nested))
        return
    rows = option_rows(found.model, nested=nested) if found.model is not None else []
    if not rows:
        out.print(f"{escape(found.title)} takes no options", highlight=False)
        return
    table = Table(title=escape(found.title), title_justify="left")
    for column in ("key", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(escape(row.key), escape(row.default), escape(row.meaning))
    out.print(table)


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a batch scheduler's time limit) ends the command as Ctrl-C does: it is sent on as SIGINT,
    to whichever handler is in place (asyncio's cancels the searches; Python's raises KeyboardInterrupt), so the
    finally blocks run, engines are shut down (a vLLM engine process left behind would go on using the CPU) and
    what was finished is kept. (`main` gives SIGINT Python's handler back where it was ignored; were it still
    ignored, the SIGTERM would be lost with it, so KeyboardInterrupt is raised here instead.)"""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``rstar`` command."""
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell without job control (a script's `&`, CI), which ignores SIGINT for
        # it: Ctrl-C and the SIGTERM sent on as SIGINT must still stop it cleanly (asyncio then cancels the search).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="rstar", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns a Ctrl-C (and so a SIGTERM) into Abort
        console.print("interrupted; re-run the same command to resume")
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
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
