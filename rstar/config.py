"""Recipes: YAML loaded with OmegaConf, command-line overrides, and validation of every part.

A recipe names its components (``policy: {name: hf, model: ...}``); each component validates its
own keys with its `Options` model, so an unknown or mistyped key is an error naming the key
path and the allowed keys. `check_recipe` reports every problem of a recipe at once.

Overrides (``rstar run RECIPE key=value ...``):

* ``key=value`` and ``a.b.c=value`` set a value (parsed as YAML: ``n=8`` is an int, ``x=[1,2]`` a list);
* ``~key`` / ``~a.b`` delete a key.

Interpolation (``${search.temperature}``, ``${oc.env:HOME}``) is OmegaConf's.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rstar.errors import ConfigError, RstarError, UnknownComponentError
from rstar.registry import Registry


class Options(BaseModel):
    """Base class of component options: frozen, and any unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def needs(self) -> tuple[str, ...]:
        """Other sections of the recipe that a component with these options cannot run without, such as
        ``("reward_model",)`` for a search ranked by one. `rstar validate` reports each one missing."""
        return ()


class NoOptions(Options):
    """Options of a component that takes none."""


# --- the recipe's own keys -----------------------------------------------------------------------

COMPONENT_KEYS: dict[str, str] = {
    "dataset": "dataset",
    "policy": "policy",
    "verifier": "verifier",
    "answer_checker": "answer_checker",
    "reward_model": "reward_model",
    "search": "search",
}
"""Recipe key → component kind, for the components every search needs."""

STAGES = ("search", "search_unsolved", "extract", "train_sft", "train_ppm", "evaluate")
"""Stages the runner knows, in the order a round usually runs them (see `rstar.runner`)."""

TRAINER_KEYS = ("train_sft", "train_ppm")
"""Recipe keys that name a trainer component; a stage of the same name needs its key."""


class BudgetOptions(Options):
    """What one search may spend on a problem (see `rstar.types.Budget`)."""

    samples: int = Field(4, ge=1, description="the strategy's main knob: N, rollouts, beam width")
    max_step_tokens: int = Field(512, ge=1, description="tokens per policy sample")
    max_depth: int = Field(16, ge=1, description="steps per solution")


class StepFormatOptions(Options):
    """How prompts are rendered (see `rstar.steps`)."""

    prompt: str = Field("bootstrap", description="'bootstrap' (few-shot), 'sft', or a path to a prompt JSON file")
    few_shot: int = Field(2, ge=0, description="number of few-shot examples (bootstrap prompt)")
    interpreter: Literal["repl", "original"] = Field(
        "repl",
        description="'repl': a step's program runs like a notebook cell; 'original': its output is what the "
        "original's Python tool returned (labels with 2+ prints, lost non-final prints)",
    )
    answer_extraction: Literal["last_box", "original"] = Field(
        "last_box",
        description="'last_box': the last \\boxed{} of an answer step; 'original': the original's extraction, "
        "pitfalls included (cut at the first '.\\n')",
    )


class EvaluateOptions(Options):
    """The ``evaluate`` stage: several searches of held-out problems with the round's models."""

    dataset: dict[str, Any] | None = Field(None, description="the held-out problems (default: the round's dataset)")
    runs: dict[str, dict[str, Any]] = Field(
        min_length=1, description="label -> keys merged over the round's recipe (search, reward_model, budget, ...)"
    )


class RecipeOptions(Options):
    """The top level of a recipe. Component sections are validated by their components."""

    output_dir: str = Field(description="run folder; relative paths are relative to the current directory")
    seed: int = 0
    max_in_flight: int = Field(64, ge=1, description="problems searched concurrently")
    max_batch: int = Field(256, ge=1, description="most requests the engine hands a component at once")
    budget: BudgetOptions = BudgetOptions()
    step_format: StepFormatOptions = StepFormatOptions()
    dataset: dict[str, Any]
    policy: dict[str, Any]
    verifier: dict[str, Any] = {"name": "subprocess"}
    answer_checker: dict[str, Any] = {"name": "math_verify"}
    reward_model: dict[str, Any] | None = None
    search: dict[str, Any]
    rounds: int | list[Any] = Field(1, description="number of rounds, or one mapping of overrides per round")
    stages: list[str] = ["search"]
    base_model: str | None = Field(
        None, description="the model each round's SFT starts from (default: the top-level policy.model)"
    )
    search_unsolved: dict[str, Any] | None = Field(
        None, description="keys merged over the round's recipe to search again the problems with no correct answer"
    )
    extract: dict[str, Any] = Field({}, description="options of the extract stage (rstar.extract.ExtractOptions)")
    train_sft: dict[str, Any] | None = Field(None, description="the policy trainer, e.g. {name: sft, epochs: 2}")
    train_ppm: dict[str, Any] | None = Field(None, description="the PPM trainer, e.g. {name: ppm}")
    evaluate: EvaluateOptions | None = None
    compare: dict[str, Any] | None = Field(None, description="the grid of `rstar compare` (rstar.compare)")


# --- loading ---------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load a recipe file, apply overrides, resolve interpolations; return plain containers."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"recipe file not found: {path}"])
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error at {where}{problem}"], source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["a recipe must be a mapping of keys to values"], source=str(path))
    return apply_overrides(data, overrides, source=str(path))


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], source: str | None = None) -> dict[str, Any]:
    """Apply ``key=value`` / ``~key`` overrides to ``data`` and resolve interpolations."""
    try:
        cfg = OmegaConf.create(dict(data))
        for item in overrides:
            if item.startswith("~"):
                _delete(cfg, item[1:])
            elif "=" in item:
                key, _, raw = item.partition("=")
                if not key:
                    raise ConfigError([f"override {item!r}: missing key before '='"], source)
                value = yaml.safe_load(raw) if raw else ""
                OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            else:
                raise ConfigError([f"override {item!r}: expected key=value or ~key"], source)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError([_omegaconf_message(exc)], source) from None
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


def _delete(cfg: DictConfig, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = cfg
    for part in parents:
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError([f"override ~{dotted}: no key {dotted!r} to delete"])
        node = node[part]
    if not isinstance(node, DictConfig) or last not in node:
        raise ConfigError([f"override ~{dotted}: no key {dotted!r} to delete"])
    del node[last]


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    return f"{key}: {msg}" if key else msg


# --- validation ----------------------------------------------------------------------------------------


def options_problems(model: type[BaseModel], data: Mapping[str, Any], path: str) -> list[str]:
    """Every problem of ``data`` against ``model``, as ``"path.key: message (fix)"`` lines."""
    try:
        model.model_validate(dict(data))
    except ValidationError as exc:
        return [_format_error(model, err, path) for err in exc.errors()]
    return []


def validate_options(model: type[Options], data: Mapping[str, Any], path: str) -> Any:
    problems = options_problems(model, data, path)
    if problems:
        raise ConfigError(problems)
    return model.model_validate(dict(data))


def _format_error(model: type[BaseModel], err: Mapping[str, Any], path: str) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join([path, *loc]) if path else ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f"unknown key; allowed keys: {', '.join(allowed)}" if allowed else "unknown key; this takes no options"
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        if close:
            hint += f" (did you mean {close[0]!r}?)"
        return f"{key}: {hint}"
    if kind == "missing":
        return f"{key}: required key is missing; add it"
    got = err.get("input")
    return f"{key}: {err['msg']} (got {got!r})"


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def check_recipe(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """All problems of a loaded recipe: its own keys, each component's name and options, and the
    same for every round's merged configuration (reported under ``rounds[k]``)."""
    problems = _recipe_problems(data, registry)
    rounds = data.get("rounds", 1)
    if isinstance(rounds, list):
        for k, over in enumerate(rounds, start=1):
            if over is None or over == {}:
                continue
            if not isinstance(over, Mapping):
                problems.append(f"rounds[{k}]: expected a mapping of keys to override (got {over!r})")
                continue
            try:
                merged = round_config(data, k)
            except (OmegaConfBaseException, ValueError) as exc:
                problems.append(f"rounds[{k}]: {exc}")
                continue
            problems += [f"rounds[{k}].{p}" for p in _recipe_problems(merged, registry) if p not in problems]
    return problems


def _recipe_problems(data: Mapping[str, Any], registry: Registry, nested: bool = True) -> list[str]:
    problems = options_problems(RecipeOptions, data, "")
    for key, kind in COMPONENT_KEYS.items():
        problems += _component_problems(registry, kind, key, data.get(key))
    for key in TRAINER_KEYS:
        problems += _component_problems(registry, "trainer", key, data.get(key))
    stages = data.get("stages", []) or []
    for i, stage in enumerate(stages):
        if stage not in STAGES:
            close = difflib.get_close_matches(str(stage), STAGES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"stages[{i}]: unknown stage {stage!r}{hint}; known stages: {', '.join(STAGES)}")
        elif stage in (*TRAINER_KEYS, "evaluate", "search_unsolved") and data.get(stage) is None:
            example = {"train_sft": "{name: sft}", "train_ppm": "{name: ppm}"}.get(stage, "{...}")
            problems.append(
                f"stages[{i}]: stage {stage!r} needs a top-level {stage!r} section, e.g. {stage}: {example}"
            )
    problems += _needs_problems(data, registry)
    if isinstance(data.get("extract"), Mapping):
        from rstar.extract import ExtractOptions

        problems += options_problems(ExtractOptions, data["extract"], "extract")
    if nested and isinstance(data.get("compare"), Mapping):
        from rstar.compare import grid_problems

        problems += grid_problems(data, registry)
    if nested:
        for path, merged in derived_configs(data):
            problems += [f"{path}.{p}" for p in _recipe_problems(merged, registry, nested=False)]
    return problems


def _needs_problems(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Sections the recipe's components say they need (`Options.needs`) but the recipe lacks."""
    problems = []
    for key, kind in COMPONENT_KEYS.items():
        spec = data.get(key)
        if not isinstance(spec, Mapping) or is_none_component(spec) or "name" not in spec:
            continue
        try:
            model = registry.get(kind, str(spec["name"])).options_model()
            options = model.model_validate({k: v for k, v in spec.items() if k != "name"})
        except (RstarError, ValidationError):
            continue  # reported by _component_problems
        for need in options.needs() if isinstance(options, Options) else ():
            if data.get(need) is None or is_none_component(data.get(need)):
                problems.append(
                    f"{key}: {kind} {spec['name']!r} needs a {need!r} section, and the recipe has none; "
                    f"add `{need}: {{name: ...}}` or choose another {kind}"
                )
    return problems


def derived_configs(data: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The recipes that stages derive from ``data``: ``search_unsolved`` and each ``evaluate`` run,
    as ``(key path, merged recipe)``. Malformed sections are left to the recipe's own validation."""
    out: list[tuple[str, dict[str, Any]]] = []
    over = data.get("search_unsolved")
    if isinstance(over, Mapping):
        out.append(("search_unsolved", merge_over(data, over)))
    evaluate = data.get("evaluate")
    if isinstance(evaluate, Mapping) and isinstance(evaluate.get("runs"), Mapping):
        for label, run in evaluate["runs"].items():
            if isinstance(run, Mapping):
                extra = {"dataset": evaluate["dataset"]} if evaluate.get("dataset") is not None else {}
                out.append((f"evaluate.runs.{label}", merge_over(data, {**extra, **run})))
    return out


DERIVED_DROP = ("rounds", "stages", "search_unsolved", "evaluate", "compare", "train_sft", "train_ppm")
"""Keys a derived search recipe does not inherit (it is one search, not a pipeline)."""


def merge_over(data: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``data`` (mappings merge key by key, as rounds do), as one search recipe."""
    merged = _merge({k: v for k, v in data.items() if k not in DERIVED_DROP}, over)
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> DictConfig:
    """OmegaConf's merge, except that a component given with another ``name`` replaces the base's
    component instead of inheriting its options (``reward_model: {name: none}`` means none)."""
    base = dict(base)
    for key in (*COMPONENT_KEYS, *TRAINER_KEYS):
        new, old = over.get(key), base.get(key)
        if isinstance(new, Mapping) and isinstance(old, Mapping) and "name" in new and new["name"] != old.get("name"):
            del base[key]
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(dict(over)))
    assert isinstance(merged, DictConfig)
    return merged


def _component_problems(registry: Registry, kind: str, key: str, spec: Any) -> list[str]:
    if spec is None or is_none_component(spec):
        return []
    if not isinstance(spec, Mapping):
        return [f"{key}: expected a mapping like {{name: ..., ...}} (got {spec!r})"]
    if "name" not in spec:
        return [f"{key}.name: required key is missing; one of: {', '.join(registry.names(kind))}"]
    try:
        reg = registry.get(kind, str(spec["name"]))
        model = reg.options_model()
    except UnknownComponentError as exc:
        return [f"{key}.name: {exc}"]
    except RstarError as exc:
        return [f"{key}: {exc}"]
    options = {k: v for k, v in spec.items() if k != "name"}
    return options_problems(model, options, key)


def is_none_component(spec: Any) -> bool:
    """``{name: none}`` means "no component" (e.g. no reward model), like leaving the key out."""
    return isinstance(spec, Mapping) and spec.get("name") == "none" and len(spec) == 1


def validated_recipe(data: Mapping[str, Any], registry: Registry, source: str | None = None) -> RecipeOptions:
    """Check a loaded recipe; raise `ConfigError` listing every problem, or return its options."""
    problems = check_recipe(data, registry)
    if problems:
        raise ConfigError(problems, source)
    return RecipeOptions.model_validate(dict(data))


def round_config(data: Mapping[str, Any], round_index: int) -> dict[str, Any]:
    """The recipe as seen by round ``round_index`` (1-based): per-round overrides merged in."""
    rounds = data.get("rounds", 1)
    if not isinstance(rounds, list):
        return dict(data)
    over = rounds[round_index - 1] or {}
    merged = _merge({k: v for k, v in data.items() if k != "rounds"}, over)
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    out["rounds"] = rounds
    return out  # type: ignore[return-value]


def num_rounds(data: Mapping[str, Any]) -> int:
    rounds = data.get("rounds", 1)
    return len(rounds) if isinstance(rounds, list) else int(rounds)
