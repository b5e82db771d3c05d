"""Option tables generated from the options models, so that what the docs and ``rstar options`` say cannot
disagree with the code.

A table has one row per key: its name, its default (``required`` for a key without one) and its meaning (the
field's ``description``, plus the allowed values of a ``Literal`` unless the description quotes each). The keys of a
nested model (``lora: LoraOptions | None``) follow their parent's row as dotted keys (``lora.r``).

What a table can show, the *target* of ``rstar options TARGET...`` and of a ``<!-- options: TARGET... -->``
marker in a docs page (`render_markers`):

* ``KIND NAME``: the options of a registered component (``verifier subprocess``) or of a plugin's section
  registered as an options model (``section extract``);
* ``NAME``: the same, when only one kind has a component of that name;
* ``recipe``: the kernel's top-level keys (`rstar.config.RecipeOptions`); ``budget``, ``step_format``: its
  nested sections;
* ``module:Model``: any options model, imported by its path.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import shlex
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from rstar.errors import RstarError, UnknownComponentError
from rstar.registry import KINDS, Registry, import_string

KERNEL_TARGET = "recipe"
"""The target naming the kernel's top-level keys of a recipe."""

OPTION_KINDS = tuple(kind for kind in KINDS if kind != "command")
"""The component kinds whose options can be shown (commands take command-line options instead)."""

MARKER = re.compile(r"^<!--\s*options:\s*(?P<args>.*?)\s*-->\s*$")
"""A line of a docs page replaced by a generated table: ``<!-- options: verifier subprocess -->``."""

NO_NESTED_FLAG = "--no-nested"


@dataclass(frozen=True)
class OptionRow:
    """One key of an options table, as plain text (`options_markdown` formats it for Markdown)."""

    key: str
    default: str
    """The default as YAML (``4``, ``auto``, ``null``, ``["a", "b"]``), or a phrase when `literal` is false."""
    literal: bool
    """Whether `default` is a value (set in code) or a phrase (``required``, ``see below``)."""
    description: str
    choices: tuple[str, ...] = ()
    """The allowed values of a ``Literal`` key, unless the description names each (quoted: ``'auto'``)."""

    @property
    def meaning(self) -> str:
        """The description, with the choices it leaves out, as plain text."""
        if not self.choices:
            return self.description
        listing = "one of: " + ", ".join(self.choices)
        return f"{self.description}; {listing}" if self.description else listing


@dataclass(frozen=True)
class OptionsTarget:
    """An options model and what it belongs to (``verifier subprocess (plugin sandbox)``)."""

    title: str
    model: type[Any] | None
    """None for a component that takes no options."""


# --- rows of a model -----------------------------------------------------------------------------


def model_fields(model: type[Any]) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or a pydantic dataclass (empty for anything else)."""
    fields = getattr(model, "model_fields", None)
    if not isinstance(fields, dict):
        fields = getattr(model, "__pydantic_fields__", None)
    return dict(fields) if isinstance(fields, dict) else {}


def is_options_model(obj: Any) -> bool:
    """Whether ``obj`` is a pydantic model class or a pydantic dataclass (something with option fields)."""
    if not isinstance(obj, type):
        return False
    if issubclass(obj, BaseModel):
        return True
    return dataclasses.is_dataclass(obj) and hasattr(obj, "__pydantic_fields__")


def option_rows(model: type[Any], *, nested: bool = True, prefix: str = "") -> list[OptionRow]:
    """One row per key of ``model``, in definition order; with ``nested``, the keys of a nested model follow
    their parent's row as ``parent.key``."""
    rows: list[OptionRow] = []
    for name, info in model_fields(model).items():
        key = f"{prefix}{name}"
        sub = _nested_model(info.annotation)
        default, literal = _default(info, nested and sub is not None)
        description = " ".join((info.description or "").split())
        rows.append(OptionRow(key, default, literal, description, _unnamed_choices(info.annotation, description)))
        if nested and sub is not None:
            rows += option_rows(sub, nested=True, prefix=f"{key}.")
    return rows


def _nested_model(annotation: Any) -> type[Any] | None:
    """The model of a key typed as a model, or as a model or None."""
    if is_options_model(annotation):
        return annotation  # type: ignore[no-any-return]
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and is_options_model(args[0]):
            return args[0]  # type: ignore[no-any-return]
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _default(info: FieldInfo, keys_below: bool) -> tuple[str, bool]:
    """A field's default as (text, is a value)."""
    if info.is_required():
        return "required", False
    if info.default_factory is not None:
        try:
            value = info.get_default(call_default_factory=True, validated_data={})
        except Exception:  # a factory of the other fields' values: no fixed default
            return "computed", False
    else:
        value = info.default
    if value is PydanticUndefined:
        return "required", False
    if is_options_model(type(value)):
        # The keys of a section with a default of its own: the rows below (or the section's own table).
        return "see below", False
    return format_value(value), True


def format_value(value: Any) -> str:
    """A value as a recipe would write it: YAML scalars (``true``, ``null``, ``auto``), JSON for the rest."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A string that YAML reads back as itself is written bare; one it would read as something else quoted.
        try:
            bare = value != "" and value == value.strip() and yaml.safe_load(value) == value
        except yaml.YAMLError:
            bare = False
        return value if bare else json.dumps(value, ensure_ascii=False)
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


def _literal_values(annotation: Any) -> list[Any]:
    """The values of every ``Literal`` inside ``annotation`` (``Literal[...] | None``, ``list[Literal[...]]``)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [value for arg in typing.get_args(annotation) for value in _literal_values(arg)]


def _unnamed_choices(annotation: Any, description: str) -> tuple[str, ...]:
    """A ``Literal`` key's allowed values, unless its description names every one of them in quotes."""
    choices = [format_value(value) for value in _literal_values(annotation)]
    named = all(f"'{choice}'" in description for choice in choices)
    return () if named else tuple(choices)


# --- Markdown ------------------------------------------------------------------------------------

_QUOTED = re.compile(r"(?<![\w'])'([^'\s]+)'(?![\w'])")
"""A quoted value in a description (``'auto'``, ``'module:function'``), shown as code in Markdown."""


def options_markdown(model: type[Any] | None, *, nested: bool = True) -> str:
    """The Markdown table of ``model``'s keys: ``| key | default | meaning |``."""
    rows = option_rows(model, nested=nested) if model is not None else []
    if not rows:
        return "This takes no options."
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for row in rows:
        default = _code(row.default) if row.literal else row.default
        meaning = _markdown_text(row.description)
        if row.choices:
            listing = "one of " + ", ".join(_code(choice) for choice in row.choices)
            meaning = f"{meaning}; {listing}" if meaning else listing
        lines.append(f"| {_code(row.key)} | {default} | {meaning} |")
    return "\n".join(lines)


def _code(text: str) -> str:
    """``text`` as a Markdown code span (that may sit in a table cell)."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _markdown_text(text: str) -> str:
    """A plain-text description as Markdown: quoted values become code spans, the rest is escaped (no HTML,
    no emphasis, no links, no table cell break)."""
    parts: list[str] = []
    last = 0
    for match in _QUOTED.finditer(text):
        parts.append(_escape(text[last : match.start()]))
        parts.append(_code(match.group(1)))
        last = match.end()
    parts.append(_escape(text[last:]))
    return "".join(parts)


def _escape(text: str) -> str:
    # A backslash before punctuation would escape it; before a letter (``\\boxed``) it is a backslash.
    text = re.sub(r"\\(?=[!-/:-@\[-`{-~]|$)", r"\\\\", text)
    text = re.sub(r"&(?=#?\w+;)", "&amp;", text).replace("<", "&lt;")
    for char in "`*[|":
        text = text.replace(char, "\\" + char)
    # An underscore inside a word is plain text to Markdown; one at a word's edge could start emphasis.
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)


# --- what a target names -------------------------------------------------------------------------


def resolve_target(args: Sequence[str], registry: Registry) -> OptionsTarget:
    """The options model that ``rstar options ARGS`` shows (see the module's docstring); a `RstarError` naming
    what can be shown otherwise."""
    from rstar.config import RecipeOptions

    if len(args) == 2:
        return _component(args[0], args[1], registry)
    if len(args) != 1:
        raise RstarError(f"expected KIND NAME or NAME, got {' '.join(args) or 'nothing'}; {_what_to_name(registry)}")
    (name,) = args
    if name == KERNEL_TARGET:
        return OptionsTarget("recipe: the kernel's top-level keys", RecipeOptions)
    sections = {
        key: model for key, info in model_fields(RecipeOptions).items() if (model := _nested_model(info.annotation))
    }
    if name in sections:
        return OptionsTarget(f"recipe: {name}", sections[name])
    if ":" in name:
        return _imported(name)
    if name in OPTION_KINDS:
        names = registry.names(name)
        listing = ", ".join(names) if names else "none installed"
        raise RstarError(f"which {name}? rstar options {name} NAME, NAME one of: {listing}")
    kinds = [kind for kind in OPTION_KINDS if name in registry.names(kind)]
    if len(kinds) > 1:  # the stage and the section "extract": the one with options
        kinds = [kind for kind in kinds if _has_options(kind, name, registry)] or kinds
    if len(kinds) == 1:
        return _component(kinds[0], name, registry)
    if kinds:
        choices = "; ".join(f"rstar options {kind} {name}" for kind in kinds)
        named = ", a ".join(kinds[:-1]) + f" and a {kinds[-1]}"
        raise RstarError(f"{name!r} names a {named}; say which: {choices}")
    known = [KERNEL_TARGET, *sections, *(n for kind in OPTION_KINDS for n in registry.names(kind))]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownComponentError(f"nothing named {name!r} has options.{hint} {_what_to_name(registry)}")


def _component(kind: str, name: str, registry: Registry) -> OptionsTarget:
    if kind not in OPTION_KINDS:
        raise RstarError(f"unknown component kind {kind!r}; kinds: {', '.join(OPTION_KINDS)}")
    reg = registry.get(kind, name)
    title = f"{kind} {name} (plugin {reg.plugin})"
    if kind != "section":
        options = reg.options_model()
        return OptionsTarget(title, options if model_fields(options) else None)
    factory = reg.load()
    model: Any = factory if is_options_model(factory) else getattr(factory, "Options", None)
    if not is_options_model(model):
        where = reg.factory if isinstance(reg.factory, str) else getattr(factory, "__qualname__", repr(factory))
        raise RstarError(
            f"section {name!r} (plugin {reg.plugin}) is checked by a function ({where}), not an options model, so "
            "its keys cannot be listed; see its plugin's docs"
        )
    return OptionsTarget(title, model)


def _has_options(kind: str, name: str, registry: Registry) -> bool:
    try:
        return _component(kind, name, registry).model is not None
    except RstarError:
        return False


def _imported(path: str) -> OptionsTarget:
    try:
        model = import_string(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RstarError(f"cannot import {path!r}: {type(exc).__name__}: {exc}") from None
    if not is_options_model(model):
        raise RstarError(f"{path!r} is not an options model (a pydantic model or dataclass)")
    return OptionsTarget(path, model)


def _what_to_name(registry: Registry) -> str:
    by_kind: dict[str, list[str]] = {}
    for found in targets(registry):
        kind, _, name = found.partition(" ")
        if name:
            by_kind.setdefault(kind, []).append(name)
    kernel = ", ".join(t for t in targets(registry, components=False))
    listing = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items())
    return (
        f"name one of: {kernel} (the recipe's own keys); KIND NAME or NAME of a component ({listing}); or module:Model"
    )


def targets(registry: Registry, *, components: bool = True) -> list[str]:
    """Every target with options to show, as ``rstar options`` takes it: ``recipe``, its sections, and (with
    ``components``) ``KIND NAME`` of each installed component or section that has an options model."""
    from rstar.config import RecipeOptions

    found = [KERNEL_TARGET]
    found += [key for key, info in model_fields(RecipeOptions).items() if _nested_model(info.annotation)]
    if not components:
        return found
    for kind in OPTION_KINDS:
        # Not a section checked by a function, a component without options or one that cannot be imported.
        found += [f"{kind} {name}" for name in registry.names(kind) if _has_options(kind, name, registry)]
    return found


# --- docs pages ----------------------------------------------------------------------------------


def render_markers(markdown: str, registry: Registry) -> str:
    """``markdown`` with each ``<!-- options: TARGET... [--no-nested] -->`` line (outside code fences) replaced
    by the options table of its target, as ``rstar options TARGET... --markdown`` prints it."""
    lines = markdown.split("\n")
    for i, args in _marker_lines(lines):
        nested = NO_NESTED_FLAG not in args
        target = resolve_target([a for a in args if a != NO_NESTED_FLAG], registry)
        lines[i] = options_markdown(target.model, nested=nested)
    return "\n".join(lines)


def markers(markdown: str) -> list[str]:
    """The arguments of every options marker of a page, as written (``verifier subprocess``)."""
    return [" ".join(args) for _, args in _marker_lines(markdown.split("\n"))]


def _marker_lines(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(line index, arguments) of every marker line that is not inside a fenced code block."""
    found: list[tuple[int, list[str]]] = []
    fence: str | None = None
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if fence is None and stripped[:3] in ("```", "~~~"):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None and (match := MARKER.match(line)):
            found.append((i, shlex.split(match.group("args"))))
    return found


__all__ = [
    "KERNEL_TARGET",
    "OptionRow",
    "OptionsTarget",
    "format_value",
    "markers",
    "option_rows",
    "options_markdown",
    "render_markers",
    "resolve_target",
    "targets",
]
