"""Runs a recipe's rounds and stages into a run folder, resumably (ARCHITECTURE.md section 6).

Run folder layout::

    <output_dir>/
      config.yaml               the resolved recipe (overrides applied, interpolations resolved)
      plugins.json              every loaded plugin with its distribution and version
      round_<k>/<stage>/        one folder per stage of each round (``rstar search``: ``search/``)
        trees.jsonl             search: one tree per line, appended as each problem finishes
        summary.json            the stage's summary, written when it finishes
        DONE                    marker: the stage finished; a re-run skips it

A re-run of the same command skips finished stages and, inside a search stage, problems whose tree
is already in ``trees.jsonl``; a line cut short by a crash is dropped and that problem searched
again. So a crash loses at most the problems in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pluggy
import yaml

from rstar.config import (
    EvaluateOptions,
    RecipeOptions,
    is_none_component,
    merge_over,
    num_rounds,
    round_config,
    validated_recipe,
)
from rstar.engine import Components, Engine
from rstar.errors import ConfigError, RstarError
from rstar.plugins import environment_versions, plugin_versions
from rstar.registry import Registry
from rstar.report import write_report
from rstar.steps import StepFormat
from rstar.types import Budget, Problem, Tree

DONE = "DONE"
CHECKPOINT_MARKER = re.compile(r"@(?P<which>round|previous)\.(?P<model>sft|ppm)")
"""A recipe string standing for a model trained in this (or the previous) round, resolved per stage."""
T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    """What lifecycle hooks learn about a run."""

    output_dir: Path
    recipe: Mapping[str, Any]
    source: str | None = None


@dataclass
class StageResult:
    name: str
    round: int
    summary: dict[str, Any]
    skipped: bool = False


class ComponentCache:
    """Built components kept for reuse, keyed by kind and spec: a model is loaded once even when
    several stages (or the cells of ``rstar compare``) use it. ``close()`` closes them all."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._built: dict[str, Any] = {}

    def get(self, kind: str, spec: Mapping[str, Any]) -> Any:
        key = kind + ":" + json.dumps(spec, sort_keys=True, default=str)
        if key not in self._built:
            self._built[key] = self.registry.build(kind, spec)
        return self._built[key]

    def close(self) -> None:
        built, self._built = list(self._built.values()), {}
        for component in built:
            close = getattr(component, "close", None)
            if callable(close):
                close()


@dataclass
class Runner:
    """Runs one recipe. ``progress`` receives ``(event, payload)`` for display (see `rstar.cli`).

    With a shared ``cache``, components stay loaded after a stage (the cache's owner closes them);
    without one, each stage builds its components and closes them when it ends.
    """

    recipe: dict[str, Any]
    registry: Registry
    pm: pluggy.PluginManager
    source: str | None = None
    progress: Callable[[str, dict[str, Any]], None] = field(default=lambda event, payload: None)
    cache: ComponentCache | None = None

    def __post_init__(self) -> None:
        self.options: RecipeOptions = validated_recipe(self.recipe, self.registry, self.source)
        self.output_dir = Path(self.options.output_dir)
        self.info = RunInfo(self.output_dir, self.recipe, self.source)

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> list[StageResult]:
        """All rounds and stages of the recipe."""
        return self._guarded(self._run_rounds)

    def search(self) -> StageResult:
        """A single search stage into ``<output_dir>/search`` (the ``rstar search`` command)."""
        return self._guarded(lambda: self._stage("search", 0, self.recipe, self.output_dir / "search"))

    def run_stage(self, stage: str, round_index: int) -> StageResult:
        """One stage of one round (``rstar train``), skipped if already done, like in `run`."""
        cfg = round_config(self.recipe, round_index)
        folder = self.output_dir / f"round_{round_index}" / stage
        return self._guarded(lambda: self._stage(stage, round_index, cfg, folder))

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
        for k in range(1, num_rounds(self.recipe) + 1):
            cfg = round_config(self.recipe, k)
            round_results = [
                self._stage(stage, k, cfg, self.output_dir / f"round_{k}" / stage)
                for stage in cfg.get("stages", ["search"])
            ]
            results += round_results
            summary = {r.name: r.summary for r in round_results}
            write_atomic(self.output_dir / f"round_{k}" / "summary.json", json.dumps(summary, indent=2))
            report = write_report(self.output_dir)
            self.pm.hook.round_end(run=self.info, round=k, summary=summary)
            self.progress("round_end", {"round": k, "summary": summary, "report": report})
        return results

    def _prepare_folder(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.output_dir / "config.yaml"
        if config_path.exists():
            previous = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
            changed = changed_keys(previous, self.recipe)
            if changed:
                raise ConfigError(
                    [
                        f"{self.output_dir} holds a run of a different recipe (changed: {', '.join(changed)}). "
                        "Resume with the same recipe and overrides, or choose a new output_dir=..."
                    ]
                )
        else:
            write_atomic(config_path, yaml.safe_dump(self.recipe, sort_keys=False))
        write_atomic(self.output_dir / "plugins.json", json.dumps(plugin_versions(self.pm), indent=2, sort_keys=True))
        write_atomic(self.output_dir / "environment.json", json.dumps(environment_versions(), indent=2))

    def _stage(self, stage: str, round_index: int, cfg: Mapping[str, Any], folder: Path) -> StageResult:
        if (folder / DONE).exists():
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            self.progress("stage_skipped", {"stage": stage, "round": round_index, "folder": folder, "summary": summary})
            return StageResult(stage, round_index, summary, skipped=True)
        folder.mkdir(parents=True, exist_ok=True)
        stages: dict[str, Callable[[Mapping[str, Any], Path, int], dict[str, Any]]] = {
            "search": self._search_stage,
            "search_unsolved": self._search_unsolved_stage,
            "extract": self._extract_stage,
            "train_sft": self._train_stage,
            "train_ppm": self._train_stage,
            "evaluate": self._evaluate_stage,
        }
        if stage not in stages:
            raise RstarError(f"unknown stage {stage!r}; known stages: {', '.join(stages)}")
        self.progress("stage_start", {"stage": stage, "round": round_index, "folder": folder})
        started = time.perf_counter()
        skip = ("rounds", "compare") if stage == "evaluate" else ("rounds", "compare", "evaluate")
        resolved = {**cfg, **self.resolve_checkpoints({k: v for k, v in cfg.items() if k not in skip}, round_index)}
        summary = stages[stage](resolved, folder, round_index)
        if stage in ("search", "search_unsolved"):  # which models searched (markers resolved), for the record
            specs = {key: resolved.get(key) for key in ("policy", "reward_model")}
            summary["models"] = {k: v.get("model") for k, v in specs.items() if isinstance(v, Mapping) and "model" in v}
        summary.setdefault("seconds", round(time.perf_counter() - started, 2))
        write_atomic(folder / "summary.json", json.dumps(summary, indent=2))
        (folder / DONE).touch()
        self.pm.hook.stage_end(run=self.info, round=round_index, stage=stage, summary=summary)
        self.progress("stage_end", {"stage": stage, "round": round_index, "folder": folder, "summary": summary})
        return StageResult(stage, round_index, summary)

    # --- the stages after search ------------------------------------------------------------------

    def _round_dir(self, round_index: int) -> Path:
        return self.output_dir / f"round_{round_index}"

    def _search_unsolved_stage(self, cfg: Mapping[str, Any], folder: Path, round_index: int) -> dict[str, Any]:
        """Search again, with ``search_unsolved``'s keys merged in, every problem of this round's
        search that has no correct answer anywhere in its tree (the paper's round-4 extra rollouts)."""
        trees = read_trees(self._round_dir(round_index) / "search" / "trees.jsonl")
        if not trees:
            raise RstarError(f"round {round_index}: stage 'search_unsolved' needs the round's 'search' stage first")
        unsolved = {tree_id for tree_id, tree in trees.items() if not any(n.correct for n in tree.nodes)}
        sub = merge_over(cfg, cfg["search_unsolved"])
        return self._search_stage(sub, folder, round_index, only=unsolved)

    def _extract_stage(self, cfg: Mapping[str, Any], folder: Path, round_index: int) -> dict[str, Any]:
        from rstar.extract import ExtractOptions, extract_files

        sources = [d for d in (self._round_dir(round_index) / s for s in ("search", "search_unsolved")) if d.is_dir()]
        if not sources:
            raise RstarError(f"round {round_index}: stage 'extract' needs the round's 'search' stage first")
        options = ExtractOptions.model_validate(dict(cfg.get("extract") or {}))
        return dict(extract_files(sources, folder, options))

    def _train_stage(self, cfg: Mapping[str, Any], folder: Path, round_index: int) -> dict[str, Any]:
        """``train_sft``: the base model fine-tuned on this round's SFT data (every round starts from
        the base model, as the paper does). ``train_ppm``: this round's SFT model (or the base model
        when the round trains no policy) trained on this round's preference pairs."""
        stage = folder.name
        extract_dir = self._round_dir(round_index) / "extract"
        data = extract_dir / ("sft.jsonl" if stage == "train_sft" else "pairs.jsonl")
        if not data.is_file():
            raise RstarError(f"round {round_index}: stage {stage!r} needs the round's 'extract' stage first ({data})")
        if not data.read_text(encoding="utf-8").strip():
            what = "SFT examples (no problem was solved)" if stage == "train_sft" else "preference pairs"
            raise RstarError(
                f"round {round_index}: {data} holds no {what}; search more (budget.samples, more problems, "
                "an easier dataset) or remove the stage"
            )
        init = self.base_model()
        if stage == "train_ppm":
            sft = self._round_dir(round_index) / "train_sft" / "model"
            if (self._round_dir(round_index) / "train_sft" / DONE).exists():
                init = str(sft)
        trainer = self.registry.build("trainer", cfg[stage])
        self.progress("loading", {"what": f"trainer {cfg[stage]['name']} from {init}"})
        model = trainer.fit(data, init, folder)
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        return {"model": str(model), "init_model": init, "data": str(data), **metrics}

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
        return self._round_dir(k) / f"train_{match['model']}" / "model"

    def resolve_checkpoints(self, cfg: Mapping[str, Any], round_index: int) -> dict[str, Any]:
        """``cfg`` with every checkpoint marker string replaced by its folder; a marker whose folder does
        not exist yet is an error naming the stage that makes it."""

        def walk(value: Any, path: str) -> Any:
            if isinstance(value, Mapping):
                return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
            if isinstance(value, str) and CHECKPOINT_MARKER.fullmatch(value):
                folder = self.checkpoint(value, round_index)
                if not (folder.parent / DONE).exists():
                    raise ConfigError(
                        [
                            f"{path}: {value} is {folder}, which round {folder.parent.parent.name[6:]}'s "
                            f"{folder.parent.name} stage has not written yet"
                        ]
                    )
                return str(folder)
            return value

        return walk(cfg, "")  # type: ignore[no-any-return]

    def base_model(self) -> str:
        """The model every round's SFT starts from: ``base_model``, else the top-level ``policy.model``."""
        if self.options.base_model:
            return self.options.base_model
        model = self.recipe.get("policy", {}).get("model")
        if not isinstance(model, str):
            raise ConfigError(["base_model: required when the top-level policy has no 'model' key; add it"])
        return model

    def _evaluate_stage(self, cfg: Mapping[str, Any], folder: Path, round_index: int) -> dict[str, Any]:
        """One search per ``evaluate.runs`` label into ``evaluate/<label>/``, models shared between runs."""
        evaluate = EvaluateOptions.model_validate(cfg["evaluate"])
        summaries: dict[str, Any] = {}
        cache = ComponentCache(self.registry)
        try:
            for label, run in evaluate.runs.items():
                over = {**({"dataset": evaluate.dataset} if evaluate.dataset is not None else {}), **run}
                sub = merge_over(cfg, over)
                sub_folder = folder / label
                if (sub_folder / DONE).exists():
                    summaries[label] = json.loads((sub_folder / "summary.json").read_text(encoding="utf-8"))
                    continue
                sub_folder.mkdir(parents=True, exist_ok=True)
                self.progress("evaluate_run", {"round": round_index, "label": label})
                summaries[label] = self._search_stage(sub, sub_folder, round_index, cache=cache)
                write_atomic(sub_folder / "summary.json", json.dumps(summaries[label], indent=2))
                (sub_folder / DONE).touch()
        finally:
            cache.close()
        return {"runs": summaries}

    # --- search ------------------------------------------------------------------------------

    def _search_stage(
        self,
        cfg: Mapping[str, Any],
        folder: Path,
        round_index: int,
        only: set[str] | None = None,
        cache: ComponentCache | None = None,
    ) -> dict[str, Any]:
        opts = RecipeOptions.model_validate(dict(cfg))
        trees_path = folder / "trees.jsonl"
        dataset = self.registry.build("dataset", opts.dataset)
        problems: list[Problem] = dataset.load()
        if only is not None:
            problems = [p for p in problems if p.id in only]
        finished = read_trees(trees_path, repair=True)
        todo = [p for p in problems if p.id not in finished]
        self.progress(
            "search_start", {"round": round_index, "total": len(problems), "done": len(finished), "folder": folder}
        )
        started = time.perf_counter()
        if todo:
            shared = cache if cache is not None else self.cache
            own = shared if shared is not None else ComponentCache(self.registry)
            try:
                self._search(opts, self._components(opts, own), todo, trees_path, finished)
            finally:
                if own is not shared:
                    own.close()
        trees = [finished[p.id] for p in problems if p.id in finished]
        return search_summary(trees, time.perf_counter() - started, opts.search["name"])

    def _components(self, opts: RecipeOptions, cache: ComponentCache) -> Components:
        # The verifier first: it is quick to build, and where its sandbox cannot run that is said before a model
        # is loaded for nothing.
        verifier = cache.get("verifier", opts.verifier)
        self.progress("loading", {"what": f"policy {opts.policy['name']}"})
        policy = cache.get("policy", opts.policy)
        reward = None
        if opts.reward_model is not None and not is_none_component(opts.reward_model):
            reward = cache.get("reward_model", opts.reward_model)
        return Components(
            policy=policy,
            verifier=verifier,
            checker=cache.get("answer_checker", opts.answer_checker),
            reward_model=reward,
        )

    def _search(
        self,
        opts: RecipeOptions,
        components: Components,
        todo: list[Problem],
        trees_path: Path,
        finished: dict[str, Tree],
    ) -> None:
        strategy = self.registry.build("search", opts.search)
        step_format = StepFormat.from_options(**opts.step_format.model_dump())
        budget = Budget(**opts.budget.model_dump())
        engine = Engine(components, max_in_flight=opts.max_in_flight, max_batch=opts.max_batch, seed=opts.seed)
        with trees_path.open("a", encoding="utf-8") as out:

            def on_tree(tree: Tree) -> None:
                out.write(json.dumps(tree.to_dict(), ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
                finished[tree.id] = tree
                self.pm.hook.tree_done(run=self.info, tree=tree)
                self.progress("tree", {"tree": tree})

            asyncio.run(engine.run(todo, strategy, step_format, budget, on_tree=on_tree))
        self.progress("engine_stats", {"batchers": {b.name: b.stats for b in engine.batchers}})


def read_trees(path: Path, repair: bool = False) -> dict[str, Tree]:
    """Trees of a ``trees.jsonl`` by problem id. With ``repair``, a last line cut short by a crash is
    removed from the file (its problem will be searched again)."""
    trees: dict[str, Tree] = {}
    if not path.exists():
        return trees
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good: list[str] = []
    for i, line in enumerate(lines):
        try:
            tree = Tree.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            if i == len(lines) - 1 and repair:
                break
            raise RstarError(f"{path}:{i + 1}: not a tree line ({exc})") from None
        trees[tree.id] = tree
        good.append(line if line.endswith("\n") else line + "\n")
    if repair and len(good) != len(lines):
        write_atomic(path, "".join(good))
    return trees


def search_summary(trees: list[Tree], seconds: float, strategy: str) -> dict[str, Any]:
    """Accuracy and spend of a search stage."""
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
        "seconds": round(seconds, 2),
    }


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the keys whose values differ between two recipes."""
    keys = sorted(set(old) | set(new))
    changed: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += changed_keys(a, b, path + ".")
        elif a != b:
            changed.append(path)
    return changed


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, then rename it over ``path``: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
