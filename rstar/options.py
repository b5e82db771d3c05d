"""Options: the pydantic models that validate a component's (or a stage's) keys in a recipe.

Every component a plugin registers may carry an ``Options`` attribute, a subclass of `Options`. The
registry validates the recipe's section with it once, and the component is built with the result::

    class MyVerifierOptions(rstar.Options):
        timeout_s: float = Field(5.0, gt=0, description="wall-clock limit per program")

An unknown or mistyped key is an error naming its key path, the allowed keys and the closest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from rstar.errors import ConfigError

O = TypeVar("O", bound=BaseModel)  # noqa: E741


class Options(BaseModel):
    """Base class of component options: frozen, and any unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def needs(self) -> tuple[str, ...]:
        """Other sections of the recipe that a component with these options cannot run without, such as
        ``("reward_model",)`` for a search ranked by one. `rstar validate` reports each one missing."""
        return ()


class NoOptions(Options):
    """Options of a component that takes none."""


def options_problems(model: type[BaseModel], data: Mapping[str, Any], path: str) -> list[str]:
    """Every problem of ``data`` against ``model``, as ``"path.key: message (fix)"`` lines."""
    try:
        model.model_validate(dict(data))
    except ValidationError as exc:
        return [format_error(model, err, path) for err in exc.errors()]
    return []


def validate_options(model: type[O], data: Mapping[str, Any], path: str) -> O:
    """``data`` validated by ``model``; a `ConfigError` listing every problem under ``path`` otherwise."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError([format_error(model, err, path) for err in exc.errors()]) from None


def format_error(model: type[BaseModel], err: Mapping[str, Any], path: str) -> str:
    """One pydantic error of ``model`` as ``"path.key: message (fix)"``: an unknown key lists the allowed ones and
    the closest, a missing one says to add it."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join([path, *loc]) if path else ".".join(loc)
    kind = err["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's / a dataclass's unknown key
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
    """The keys of the (nested) model or pydantic dataclass at ``loc``."""
    current: Any = model
    for part in loc:
        field = _fields(current).get(part)
        if field is None or not isinstance(field.annotation, type) or not _fields(field.annotation):
            return []
        current = field.annotation
    return sorted(_fields(current))


def _fields(cls: Any) -> dict[str, Any]:
    fields = getattr(cls, "model_fields", None) or getattr(cls, "__pydantic_fields__", None)
    return dict(fields) if isinstance(fields, dict) else {}
