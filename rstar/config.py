"""Recipes: YAML loaded with OmegaConf, command-line overrides, and validation of every part, once.

A recipe names its components (``policy: {name: hf, model: ...}``); each component validates its
own keys with its `Options` model, so an unknown or mistyped key is an error naming the key
path and the allowed keys. Plugins own further top-level sections (``extract``, ``train_sft``, ...,
registered with the ``register_sections`` hook) and validate them the same way. `RecipeChecker`
reports every problem of a recipe at once, or returns it as a typed `Recipe`: components as
`ComponentSpec` (name + validated options), sections as their typed values, one `Recipe` per round.
Nothing downstream validates again.

Overrides (``rstar run RECIPE key=value ...``):

* ``key=value`` and ``a.b.c=value`` set a value (parsed as YAML: ``n=8`` is an int, ``x=[1,2]`` a list);
* ``~key`` / ``~a.b`` delete a key.

Interpolation (``${search.temperature}``, ``${oc.env:HOME}``) is OmegaConf's.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Field, ValidationError

from rstar.errors import ConfigError, RstarError, UnknownComponentError
from rstar.options import Options, format_error, options_problems
from rstar.registry import Registry
from rstar.steps import StepFormatOptions
from rstar.types import Budget

# --- the recipe's own keys -----------------------------------------------------------------------

COMPONENT_KEYS: dict[str, str] = {
    "dataset": "dataset",
    "policy": "policy",
    "verifier": "verifier",
    "answer_checker": "answer_checker",
    "reward_model": "reward_model",
    "search": "search",
}
"""Recipe key -> component kind, for the components every search needs."""


class RecipeOptions(Options):
    """The kernel's keys of a recipe: what one search needs. Component sections are validated by their
    components, plugin sections by their plugins."""

    output_dir: str = Field(description="run folder; relative paths are relative to the current directory")
    seed: int = Field(0, description="seed of every random choice of the run")
    max_in_flight: int = Field(64, ge=1, description="problems searched concurrently")
    max_batch: int = Field(256, ge=1, description="most requests the engine hands a component at once")
    budget: Budget = Field(default_factory=Budget, description="what one search may spend on a problem")
    step_format: StepFormatOptions = Field(default_factory=StepFormatOptions, description="how prompts are rendered")
    dataset: dict[str, Any] = Field(description="the problems: {name: jsonl, path: ...}")
    policy: dict[str, Any] = Field(description="the policy model: {name: hf, model: ...}")
    verifier: dict[str, Any] = Field(
        default_factory=lambda: {"name": "subprocess"}, description="the sandbox that runs each step's code"
    )
    answer_checker: dict[str, Any] = Field(
        default_factory=lambda: {"name": "math_verify"}, description="decides whether an answer is correct"
    )
    reward_model: dict[str, Any] | None = Field(None, description="scores partial solutions (a PPM); none by default")
    search: dict[str, Any] = Field(description="the search strategy: {name: mcts, ...}")
    rounds: int | list[Any] = Field(1, description="number of rounds, or one mapping of overrides per round")
    stages: list[str] = Field(default_factory=lambda: ["search"], description="the stages of each round, in order")


def _kernel_default(key: str) -> Any:
    return RecipeOptions.model_fields[key].get_default(call_default_factory=True)


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
                value = _override_value(raw)
                OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            else:
                raise ConfigError([f"override {item!r}: expected key=value or ~key"], source)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError([_omegaconf_message(exc)], source) from None
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


def _override_value(raw: str) -> Any:
    """An override's value read as YAML (``3``, ``[1, 2]``, ``{name: hf}``); text that is no YAML on its own
    (``@round.sft``: ``@`` is reserved in YAML) is taken as the string it is."""
    if not raw:
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


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


# --- the typed recipe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentSpec:
    """A component of a recipe, validated: its kind, its registered name and its options."""

    kind: str
    name: str
    options: Options

    def to_dict(self) -> dict[str, Any]:
        """``{name: ..., **options}``, every option given (defaults included)."""
        return {"name": self.name, **self.options.model_dump(mode="json")}


@dataclass(frozen=True)
class Recipe:
    """A recipe validated once: the kernel's keys, the components, the plugins' sections, and (for a
    recipe with per-round overrides) one `Recipe` per round. ``data`` is the plain form it came from."""

    data: Mapping[str, Any]
    options: RecipeOptions
    components: Mapping[str, ComponentSpec | None]
    sections: Mapping[str, Any] = field(default_factory=dict)
    rounds: tuple[Recipe, ...] = ()

    @property
    def output_dir(self) -> Path:
        return Path(self.options.output_dir)

    @property
    def stages(self) -> list[str]:
        return list(self.options.stages)

    @property
    def num_rounds(self) -> int:
        return len(self.rounds) if self.rounds else int(self.options.rounds)  # type: ignore[arg-type]

    def component(self, key: str) -> ComponentSpec | None:
        """The component under ``key`` (``policy``, ``reward_model``, ...); None for ``{name: none}``."""
        return self.components.get(key)

    def require(self, key: str) -> ComponentSpec:
        spec = self.component(key)
        if spec is None:
            raise ConfigError([f"{key}: this recipe has no {key!r} section; add {key}: {{name: ...}}"])
        return spec

    def section(self, name: str) -> Any:
        """The typed value of a plugin's section (None when the recipe leaves it out and it has no default)."""
        return self.sections.get(name)

    def round(self, round_index: int) -> Recipe:
        """The recipe as round ``round_index`` (1-based) sees it: per-round overrides merged in."""
        return self.rounds[round_index - 1] if self.rounds else self


class RecipeChecker:
    """Validates recipes against a registry: every problem at once, or a typed `Recipe`.

    Sections registered by plugins get this checker, to validate component specs (`component`) and
    derived recipes (`derived`) the same way the kernel does."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.section_names = registry.names("section")

    # --- pieces -------------------------------------------------------------------------------------

    def options(self, model: type[Any], value: Any, path: str) -> tuple[Any, list[str]]:
        """``value`` validated by the pydantic ``model``, or the problems under ``path``."""
        try:
            return model.model_validate(dict(value) if isinstance(value, Mapping) else value), []
        except ValidationError as exc:
            return None, [format_error(model, err, path) for err in exc.errors()]

    def component(self, kind: str, value: Any, path: str) -> tuple[ComponentSpec | None, list[str]]:
        """A ``{name: ..., **options}`` spec of a ``kind`` component, validated (None for no component)."""
        if value is None or is_none_component(value):
            return None, []
        if not isinstance(value, Mapping):
            return None, [f"{path}: expected a mapping like {{name: ..., ...}} (got {value!r})"]
        if "name" not in value:
            return None, [f"{path}.name: required key is missing; one of: {', '.join(self.registry.names(kind))}"]
        try:
            model = self.registry.get(kind, str(value["name"])).options_model()
        except UnknownComponentError as exc:
            return None, [f"{path}.name: {exc}"]
        except RstarError as exc:
            return None, [f"{path}: {exc}"]
        options, problems = self.options(model, {k: v for k, v in value.items() if k != "name"}, path)
        return (ComponentSpec(kind, str(value["name"]), options) if options is not None else None), problems

    def derived(self, data: Mapping[str, Any], over: Mapping[str, Any], path: str) -> tuple[Recipe | None, list[str]]:
        """The one-search recipe ``over`` merged into ``data`` (`merge_over`), validated; its problems are
        reported under ``path``."""
        try:
            merged = merge_over(data, over)
        except (OmegaConfBaseException, ValueError) as exc:
            return None, [f"{path}: cannot be merged over the recipe ({exc})"]
        recipe, problems = self.recipe(merged)
        return recipe, [f"{path}.{p}" for p in problems]

    # --- a whole recipe -----------------------------------------------------------------------------

    def recipe(self, data: Mapping[str, Any], *, with_rounds: bool = True) -> tuple[Recipe | None, list[str]]:
        """Every problem of ``data``, and the typed recipe when there are none."""
        problems: list[str] = []
        kernel = {k: v for k, v in data.items() if k not in self.section_names}
        options, own = self.options(RecipeOptions, kernel, "")
        problems += [self._top_level_hint(p) for p in own]
        components: dict[str, ComponentSpec | None] = {}
        for key, kind in COMPONENT_KEYS.items():
            value = data[key] if key in data else _kernel_default(key)
            components[key], found = self.component(kind, value, key)
            problems += found
        problems += self._needs_problems(data, components)
        problems += self._stage_problems(data)
        sections: dict[str, Any] = {}
        for name in self.section_names:
            sections[name], found = self._section(name, data.get(name), data)
            problems += found
        rounds: list[Recipe] = []
        if with_rounds and isinstance(data.get("rounds"), list):
            for k, over in enumerate(data["rounds"], start=1):
                if over is not None and not isinstance(over, Mapping):
                    problems.append(f"rounds[{k}]: expected a mapping of keys to override (got {over!r})")
                    continue
                try:
                    merged = round_config(data, k)
                except (OmegaConfBaseException, ValueError) as exc:
                    problems.append(f"rounds[{k}]: {exc}")
                    continue
                round_recipe, found = self.recipe(merged, with_rounds=False)
                problems += [f"rounds[{k}].{p}" for p in found if p not in problems]
                if round_recipe is not None:
                    rounds.append(round_recipe)
        if problems or options is None:
            return None, problems
        return Recipe(dict(data), options, components, sections, tuple(rounds)), []

    def _top_level_hint(self, problem: str) -> str:
        """An unknown top-level key: list the kernel's keys and the plugins' sections as allowed."""
        key, _, rest = problem.partition(":")
        if "." in key or not rest.startswith(" unknown key"):
            return problem
        allowed = sorted({*RecipeOptions.model_fields, *self.section_names})
        hint = f"{key}: unknown key; allowed keys: {', '.join(allowed)}"
        close = difflib.get_close_matches(key, allowed, n=1)
        return hint + (f" (did you mean {close[0]!r}?)" if close else "")

    def _section(self, name: str, value: Any, data: Mapping[str, Any]) -> tuple[Any, list[str]]:
        try:
            factory = self.registry.get("section", name).load()
        except RstarError as exc:
            return None, [f"{name}: {exc}"]
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            if value is None:
                try:
                    return factory(), []  # the section's defaults
                except ValidationError:
                    return None, []  # a section with required keys, left out: a stage that needs it says so
            return self.options(factory, value, name)
        if value is None:
            return None, []
        typed, problems = factory(value, data, self, name)
        return typed, list(problems)

    def _stage_problems(self, data: Mapping[str, Any]) -> list[str]:
        stages = data.get("stages", ["search"])
        if not isinstance(stages, list):
            return []  # reported by RecipeOptions
        problems = []
        known = self.registry.names("stage")
        for i, stage in enumerate(stages):
            if stage not in known:
                close = difflib.get_close_matches(str(stage), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listing = ", ".join(known) if known else "none (no installed plugin registers a stage)"
                problems.append(f"stages[{i}]: unknown stage {stage!r}{hint}; known stages: {listing}")
                continue
            try:
                needs = getattr(self.registry.get("stage", stage).load(), "needs", {})
            except RstarError as exc:
                problems.append(f"stages[{i}]: {exc}")
                continue
            for section, example in needs.items():
                if data.get(section) is None:
                    problems.append(
                        f"stages[{i}]: stage {stage!r} needs a top-level {section!r} section, e.g. {section}: {example}"
                    )
        return problems

    def _needs_problems(self, data: Mapping[str, Any], components: Mapping[str, ComponentSpec | None]) -> list[str]:
        """Sections the recipe's components say they need (`Options.needs`) but the recipe lacks."""
        problems = []
        for key, spec in components.items():
            if spec is None:
                continue
            for need in spec.options.needs():
                if data.get(need) is None or is_none_component(data.get(need)):
                    problems.append(
                        f"{key}: {spec.kind} {spec.name!r} needs a {need!r} section, and the recipe has none; "
                        f"add `{need}: {{name: ...}}` or choose another {spec.kind}"
                    )
        return problems


def check_recipe(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """All problems of a loaded recipe: its own keys, each component's name and options, each plugin
    section, and the same for every round's merged configuration (reported under ``rounds[k]``)."""
    return RecipeChecker(registry).recipe(data)[1]


def validated_recipe(data: Mapping[str, Any], registry: Registry, source: str | None = None) -> Recipe:
    """Check a loaded recipe; raise `ConfigError` listing every problem, or return it typed."""
    recipe, problems = RecipeChecker(registry).recipe(data)
    if problems or recipe is None:
        raise ConfigError(problems, source)
    return recipe


# --- merging ---------------------------------------------------------------------------------------


def merge_over(data: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into the kernel keys of ``data`` (mappings merge key by key, as rounds do): one
    search recipe. ``rounds``, ``stages`` and plugin sections are not inherited (a derived recipe is
    one search, not a pipeline)."""
    kept = {k: v for k, v in data.items() if k in RecipeOptions.model_fields and k not in ("rounds", "stages")}
    merged = _merge(kept, over)
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> DictConfig:
    """OmegaConf's merge, except that a component given with another ``name`` replaces the base's
    component instead of inheriting its options (``reward_model: {name: none}`` means none)."""
    base = dict(base)
    for key, new in over.items():
        old = base.get(key)
        if isinstance(new, Mapping) and isinstance(old, Mapping) and "name" in new and new["name"] != old.get("name"):
            del base[key]
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(dict(over)))
    assert isinstance(merged, DictConfig)
    return merged


def is_none_component(spec: Any) -> bool:
    """``{name: none}`` means "no component" (e.g. no reward model), like leaving the key out."""
    return isinstance(spec, Mapping) and spec.get("name") == "none" and len(spec) == 1


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


SectionCheck = Callable[[Any, Mapping[str, Any], RecipeChecker, str], tuple[Any, Sequence[str]]]
"""The form of a section registered as a function: ``check(value, data, checker, path)``."""

__all__ = [
    "COMPONENT_KEYS",
    "ComponentSpec",
    "Recipe",
    "RecipeChecker",
    "RecipeOptions",
    "SectionCheck",
    "StepFormatOptions",
    "apply_overrides",
    "check_recipe",
    "is_none_component",
    "load_recipe",
    "merge_over",
    "options_problems",
    "round_config",
    "validated_recipe",
]
