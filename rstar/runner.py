"""Runs a recipe's rounds and named stages into a run folder, resumably (ARCHITECTURE.md section 6).

The runner is a loop: for each round, for each stage the recipe lists, skip it if its folder holds a
done-marker, else run the registered `rstar.interfaces.Stage` and mark it done. What a stage does is
its plugin's business (the bundled ones are in ``rstar_pipeline``); the runner offers every stage one
service, a resumable search (`StageRun.search`).

Run folder layout::

    <output_dir>/
      config.yaml               the resolved recipe (overrides applied, interpolations resolved)
      plugins.json              every loaded plugin with its distribution and version
      environment.json          Python, the platform and every installed package's version
      round_<k>/<stage>/        one folder per stage of each round (``rstar search``: ``search/``)
        trees.jsonl             search: one tree per line, appended as each problem finishes
        summary.json            the stage's summary, written when it finishes
        DONE                    marker: the stage finished; a re-run skips it
      round_<k>/summary.json    every stage's summary, when the round is done

A re-run of the same command skips finished stages and, inside a search, problems whose tree is
already in ``trees.jsonl``; a line cut short by a crash is dropped and that problem searched again.
So a crash loses at most the problems in flight.

What happens is told to plugins through the lifecycle hooks (`rstar.hookspecs`): ``run_start``,
``stage_start``, ``search_start``, ``search_progress``, ``tree_done``, ``search_end``, ``stage_end``,
``round_end``, ``run_end``. The command line's progress display is one such plugin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pluggy
import yaml
from pydantic import BaseModel

from rstar import rundir
from rstar.config import ComponentSpec, Recipe, validated_recipe
from rstar.engine import Components, Engine
from rstar.errors import ConfigError
from rstar.executors import SearchWork, executor_of, shard_of
from rstar.interfaces import Closeable, Stage, StageContext
from rstar.plugins import environment_versions, plugin_versions
from rstar.registry import Registry
from rstar.steps import StepFormat
from rstar.types import Problem, RunInfo, Tree

CHECKPOINT_MARKER = re.compile(r"@(?P<which>round|previous)\.(?P<model>sft|ppm)")
"""A recipe string standing for a model trained in this (or the previous) round, resolved per stage."""
T = TypeVar("T")
Progress = Callable[[str, dict[str, Any]], None]
PROGRESS_INTERVAL_S = 0.5
"""Least time between two ``search_progress`` calls of a search."""


@dataclass
class StageResult:
    name: str
    round: int
    summary: dict[str, Any]
    skipped: bool = False


class ComponentCache:
    """Built components kept for reuse, keyed by their spec: a model is loaded once even when several
    searches (the runs of an evaluation, the cells of ``rstar compare``) use it. ``close()`` closes them all."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._built: dict[str, Any] = {}

    def get(self, spec: ComponentSpec) -> Any:
        key = spec.kind + ":" + json.dumps(spec.to_dict(), sort_keys=True, default=str)
        if key not in self._built:
            self._built[key] = self.registry.build(spec.kind, spec)
        return self._built[key]

    def close(self) -> None:
        built, self._built = list(self._built.values()), {}
        for component in built:
            if isinstance(component, Closeable):
                component.close()


@dataclass
class Runner:
    """Runs one recipe (plain, validated here once, or already a `Recipe`), telling plugins what happens
    through the lifecycle hooks of ``pm``. ``progress`` is what stages get as `StageContext.progress`: the
    ``(event, payload)`` notes they send for a caller of their own (none by default); the runner itself
    reports through hooks only.

    With a shared ``cache``, components stay loaded after a search (the cache's owner closes them);
    without one, each stage builds its components and closes them when it ends.
    """

    recipe: Recipe | Mapping[str, Any]
    registry: Registry
    pm: pluggy.PluginManager
    source: str | None = None
    progress: Progress = field(default=lambda event, payload: None)
    cache: ComponentCache | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            self.recipe = validated_recipe(self.recipe, self.registry, self.source)
        self.validated: Recipe = self.recipe
        self.output_dir = self.validated.output_dir
        self.info = RunInfo(self.output_dir, self.validated.data, self.source)
        self._stage_name = "search"

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> list[StageResult]:
        """All rounds and stages of the recipe."""
        return self._guarded(self._run_rounds)

    def search(self) -> StageResult:
        """A single search into ``<output_dir>/search`` (the ``rstar search`` command); needs no stage plugin."""
        return self._guarded(
            lambda: self._stage("search", 0, self.validated, self.output_dir / "search", SearchStage())
        )

    def run_stage(self, stage: str, round_index: int) -> StageResult:
        """One stage of one round (``rstar train``), skipped if already done, as in `run`."""
        return self._guarded(lambda: self._stage(stage, round_index, self.validated.round(round_index)))

    def _guarded(self, body: Callable[[], T]) -> T:
        self._prepare_folder()
        self.pm.hook.run_start(run=self.info)
        try:
            result = body()
        except BaseException as exc:
            self.pm.hook.run_end(run=self.info, summary={"status": "failed", "error": str(exc)})
            raise
        self.pm.hook.run_end(run=self.info, summary={"status": "ok"})
        return result

    def _run_rounds(self) -> list[StageResult]:
        results: list[StageResult] = []
        for k in range(1, self.validated.num_rounds + 1):
            recipe = self.validated.round(k)
            round_results = [self._stage(stage, k, recipe) for stage in recipe.stages]
            results += round_results
            summary = {r.name: r.summary for r in round_results}
            rundir.write_json(self.round_dir(k) / rundir.SUMMARY, summary)
            self.pm.hook.round_end(run=self.info, round=k, summary=summary)
        return results

    def _prepare_folder(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.output_dir / "config.yaml"
        data = dict(self.validated.data)
        if config_path.exists():
            previous = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
            changed = rundir.changed_keys(previous, data)
            if changed and all(key.split(".")[0] in rundir.PLACEMENT_KEYS for key in changed):
                rundir.write_atomic(config_path, yaml.safe_dump(data, sort_keys=False))  # resumed elsewhere: say where
                changed = []
            if changed:
                raise ConfigError(
                    [
                        f"{self.output_dir} holds a run of a different recipe (changed: {', '.join(changed)}). "
                        "Resume with the same recipe and overrides, or choose a new output_dir=..."
                    ]
                )
        else:
            rundir.write_atomic(config_path, yaml.safe_dump(data, sort_keys=False))
        rundir.write_json(self.output_dir / "plugins.json", plugin_versions(self.pm))
        rundir.write_json(self.output_dir / "environment.json", environment_versions())

    def _stage(
        self, name: str, round_index: int, recipe: Recipe, folder: Path | None = None, stage: Stage | None = None
    ) -> StageResult:
        folder = folder if folder is not None else self.round_dir(round_index) / name
        done = rundir.is_done(folder)
        self.pm.hook.stage_start(run=self.info, round=round_index, stage=name, folder=folder, skipped=done)
        if done:
            return StageResult(name, round_index, rundir.read_summary(folder), skipped=True)
        if stage is None:
            stage = self.registry.get("stage", name).load()()
        assert stage is not None
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._stage_name = name
        resolved = self.resolve_checkpoints(recipe, round_index, sections=tuple(getattr(stage, "needs", {})))
        summary = stage.run(StageRun(self, resolved, round_index, folder))
        summary.setdefault("seconds", round(time.perf_counter() - started, 2))
        rundir.mark_done(folder, summary)
        self.pm.hook.stage_end(run=self.info, round=round_index, stage=name, summary=summary)
        return StageResult(name, round_index, summary)

    def round_dir(self, round_index: int) -> Path:
        return self.output_dir / f"round_{round_index}"

    # --- checkpoint markers -------------------------------------------------------------------------

    def checkpoint(self, marker: str, round_index: int) -> Path:
        """The model folder a ``@round.sft`` / ``@round.ppm`` / ``@previous.sft`` / ``@previous.ppm``
        marker stands for in round ``round_index``."""
        match = CHECKPOINT_MARKER.fullmatch(marker)
        if match is None:
            raise ConfigError(
                [f"{marker!r}: not a checkpoint marker; use @round.sft, @round.ppm, @previous.sft or @previous.ppm"]
            )
        k = round_index if match["which"] == "round" else round_index - 1
        if k < 1:
            raise ConfigError([f"{marker}: round {round_index} has no previous round"])
        return self.round_dir(k) / f"train_{match['model']}" / "model"

    def resolve_checkpoints(self, recipe: Recipe, round_index: int, sections: tuple[str, ...] = ()) -> Recipe:
        """``recipe`` with every checkpoint marker in its components (and in the named ``sections``)
        replaced by its folder; a marker whose folder does not exist yet is an error naming the stage
        that makes it."""

        def resolve(marker: str, path: str) -> str:
            folder = self.checkpoint(marker, round_index)
            if not rundir.is_done(folder.parent):
                raise ConfigError(
                    [
                        f"{path}: {marker} is {folder}, which round {folder.parent.parent.name[6:]}'s "
                        f"{folder.parent.name} stage has not written yet"
                    ]
                )
            return str(folder)

        return replace(
            recipe,
            components={k: _walk(v, resolve, k) for k, v in recipe.components.items()},
            sections={k: _walk(v, resolve, k) if k in sections else v for k, v in recipe.sections.items()},
        )

    # --- the search service -------------------------------------------------------------------------

    def search_into(
        self,
        recipe: Recipe,
        folder: Path,
        round_index: int,
        only: set[str] | None = None,
        cache: ComponentCache | None = None,
    ) -> dict[str, Any]:
        """Search ``recipe``'s problems (with ids in ``only``, if given) into ``folder/trees.jsonl``,
        resuming after the problems already there; return the search summary."""
        trees_path = folder / rundir.TREES
        problems: list[Problem] = self.registry.build("dataset", recipe.require("dataset")).load()
        if only is not None:
            problems = [p for p in problems if p.id in only]
        # --- scale-out (rstar.executors): the recipe's shard of the problems; its executor, if it names one ---
        shard, executor = shard_of(recipe, self.validated), executor_of(recipe, self.validated)
        if shard is not None:
            problems = shard.select(problems)
        # --- end of scale-out ---
        finished = rundir.read_trees(trees_path, repair=True)
        todo = [p for p in problems if p.id not in finished]
        where = {"round": round_index, "stage": self._stage_name, "folder": folder}
        done = sum(1 for p in problems if p.id in finished)
        self.pm.hook.search_start(run=self.info, **where, recipe=recipe, total=len(problems), done=done)
        started = time.perf_counter()
        measured: dict[str, Any] = {}
        # --- scale-out: the executor's workers build their own components; finished trees come back here ---
        if todo and executor is not None:
            with rundir.JsonlAppender(trees_path) as out:

                def on_tree(tree: Tree) -> None:
                    out.append(tree.to_dict())
                    finished[tree.id] = tree
                    self.pm.hook.tree_done(run=self.info, tree=tree)

                measured = executor.search(
                    SearchWork(
                        recipe,
                        todo,
                        self.registry,
                        on_tree,
                        lambda snapshot: self.pm.hook.search_progress(run=self.info, **where, snapshot=snapshot),
                        lambda event, payload: self.pm.hook.executor_event(
                            run=self.info, **where, event=event, payload=payload
                        ),
                    )
                )
        # --- end of scale-out ---
        elif todo:
            shared = cache if cache is not None else self.cache
            own = shared if shared is not None else ComponentCache(self.registry)
            try:
                components = self._components(recipe, own)
                self._search(recipe, components, todo, trees_path, finished, where)
                measured = component_stats(components)
            finally:
                if own is not shared:
                    own.close()
        trees = [finished[p.id] for p in problems if p.id in finished]
        summary = search_summary(trees, time.perf_counter() - started, recipe.require("search").name)
        if measured:
            summary["components"] = measured
        # Which models searched (checkpoint markers resolved), for the record.
        specs = {key: recipe.component(key) for key in ("policy", "reward_model")}
        models = {key: getattr(spec.options, "model", None) for key, spec in specs.items() if spec is not None}
        summary["models"] = {key: model for key, model in models.items() if model is not None}
        self.pm.hook.search_end(run=self.info, **where, summary=summary)
        return summary

    def _components(self, recipe: Recipe, cache: ComponentCache) -> Components:
        # The verifier first: it is quick to build, and where its sandbox cannot run that is said before a model
        # is loaded for nothing.
        verifier = cache.get(recipe.require("verifier"))
        policy = cache.get(recipe.require("policy"))
        reward_spec = recipe.component("reward_model")
        return Components(
            policy=policy,
            verifier=verifier,
            checker=cache.get(recipe.require("answer_checker")),
            reward_model=cache.get(reward_spec) if reward_spec is not None else None,
        )

    def _search(
        self,
        recipe: Recipe,
        components: Components,
        todo: list[Problem],
        trees_path: Path,
        finished: dict[str, Tree],
        where: dict[str, Any],
    ) -> None:
        strategy = self.registry.build("search", recipe.require("search"))
        step_format = StepFormat.from_config(recipe.options.step_format)
        o = recipe.options
        engine = Engine(components, max_in_flight=o.max_in_flight, max_batch=o.max_batch, seed=o.seed)
        watched = bool(self.pm.hook.search_progress.get_hookimpls())

        def report() -> None:
            self.pm.hook.search_progress(run=self.info, **where, snapshot=engine.snapshot())

        async def ticking() -> None:
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL_S)
                report()

        async def searching() -> None:
            ticker = asyncio.ensure_future(ticking()) if watched else None
            try:
                await engine.run(todo, strategy, step_format, o.budget, on_tree=on_tree)
            finally:
                if ticker is not None:
                    ticker.cancel()
            if watched:
                report()

        with rundir.JsonlAppender(trees_path) as out:

            def on_tree(tree: Tree) -> None:
                out.append(tree.to_dict())
                finished[tree.id] = tree
                self.pm.hook.tree_done(run=self.info, tree=tree)

            asyncio.run(searching())


@dataclass
class StageRun:
    """The runner's `rstar.interfaces.StageContext`: one stage of one round."""

    runner: Runner
    recipe: Recipe
    round: int
    folder: Path

    @property
    def output_dir(self) -> Path:
        return self.runner.output_dir

    @property
    def run_recipe(self) -> Recipe:
        return self.runner.validated

    @property
    def registry(self) -> Registry:
        return self.runner.registry

    @property
    def progress(self) -> Progress:
        return self.runner.progress

    def round_dir(self, round_index: int) -> Path:
        return self.runner.round_dir(round_index)

    def stage_dir(self, stage: str, round_index: int | None = None) -> Path:
        return self.runner.round_dir(self.round if round_index is None else round_index) / stage

    def search(
        self, recipe: Recipe, folder: Path, *, only: set[str] | None = None, cache: ComponentCache | None = None
    ) -> dict[str, Any]:
        return self.runner.search_into(recipe, folder, self.round, only=only, cache=cache)

    def components(self) -> ComponentCache:
        """A cache for several searches with the same models; the caller closes it."""
        return ComponentCache(self.runner.registry)

    def build(self, kind: str, spec: Any) -> Any:
        return self.runner.registry.build(kind, spec)


class SearchStage:
    """The ``search`` stage (registered by `rstar.builtin`) and ``rstar search``: search every problem of
    the round's dataset into ``trees.jsonl``, resumably."""

    needs: ClassVar[Mapping[str, str]] = {}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return ctx.search(ctx.recipe, ctx.folder)


def replace_markers(value: Any, fn: Callable[[str, str], str], path: str = "") -> Any:
    """``value`` (a typed recipe, a component spec, options, mappings, lists) with every checkpoint-marker string
    replaced by ``fn(marker, key path)``; what holds no marker is returned as it is."""
    return _walk(value, fn, path)


def _walk(value: Any, fn: Callable[[str, str], str], path: str) -> Any:
    """``value`` with every checkpoint-marker string replaced by ``fn(marker, key path)``, through typed
    recipes, component specs, options models, mappings and lists; unchanged parts are kept as they are."""
    if isinstance(value, str):
        return fn(value, path) if CHECKPOINT_MARKER.fullmatch(value) else value
    if isinstance(value, Recipe):  # a derived recipe: its components and sections (not other rounds)
        return replace(
            value,
            components={k: _walk(v, fn, f"{path}.{k}") for k, v in value.components.items()},
            sections={k: _walk(v, fn, f"{path}.{k}") for k, v in value.sections.items()},
        )
    if isinstance(value, ComponentSpec):
        return replace(value, options=_walk(value.options, fn, path))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = _walk(old, fn, f"{path}.{f.name}")
            if new is not old:
                changes[f.name] = new
        return replace(value, **changes) if changes else value
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _walk(old, fn, f"{path}.{name}")
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, Mapping):
        items = {k: _walk(v, fn, f"{path}.{k}") for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in items) else value
    if isinstance(value, list | tuple):
        walked = [_walk(v, fn, f"{path}[{i}]") for i, v in enumerate(value)]
        return type(value)(walked) if any(a is not b for a, b in zip(walked, value, strict=True)) else value
    return value


def component_stats(components: Components) -> dict[str, dict[str, Any]]:
    """What each component reports about itself (the optional ``stats()`` of the interfaces), by role."""
    out: dict[str, dict[str, Any]] = {}
    for role in ("policy", "verifier", "checker", "reward_model"):
        stats = getattr(getattr(components, role), "stats", None)
        if callable(stats):
            values = stats()
            if values:
                out[role] = dict(values)
    return out


def search_summary(trees: list[Tree], seconds: float, strategy: str) -> dict[str, Any]:
    """Accuracy and spend of a search."""
    labelled = [t for t in trees if t.correct is not None]
    correct = sum(1 for t in labelled if t.correct)
    usage = [t.usage for t in trees]
    return {
        "strategy": strategy,
        "problems": len(trees),
        "correct": correct,
        "accuracy": correct / len(labelled) if labelled else None,
        "answered": sum(1 for t in trees if t.prediction is not None),
        "solved": sum(1 for t in trees if any(n.correct for n in t.nodes)),
        "generated_tokens": sum(u.generated_tokens for u in usage),
        "policy_calls": sum(u.policy_calls for u in usage),
        "verifier_jobs": sum(u.verifier_jobs for u in usage),
        "reward_calls": sum(u.reward_calls for u in usage),
        "reward_tokens": sum(u.reward_tokens for u in usage),
        "seconds": round(seconds, 2),
    }


__all__ = [
    "CHECKPOINT_MARKER",
    "ComponentCache",
    "Runner",
    "SearchStage",
    "StageResult",
    "StageRun",
    "replace_markers",
    "search_summary",
]
