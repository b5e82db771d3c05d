"""Name → factory, per component kind, filled by the plugins' registration hooks.

A factory is a class or callable taking the component's validated options, or a lazy
``"module:attr"`` string imported only when a recipe builds that component.
"""

from __future__ import annotations

import difflib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rstar.errors import RstarError, UnknownComponentError
from rstar.hookspecs import RegisterFn
from rstar.options import NoOptions, Options, validate_options

if TYPE_CHECKING:
    import pluggy

KINDS: dict[str, str] = {
    "policy": "register_policies",
    "verifier": "register_verifiers",
    "reward_model": "register_reward_models",
    "search": "register_search_strategies",
    "trainer": "register_trainers",
    "answer_checker": "register_answer_checkers",
    "dataset": "register_datasets",
    "stage": "register_stages",
    "section": "register_sections",
    "command": "register_commands",
}
"""Component kind → the registration hook that fills it."""


def import_string(path: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted), with `pkgutil.resolve_name`."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:attr', got {path!r}")
    return pkgutil.resolve_name(path)


@dataclass(frozen=True)
class Registration:
    """One registered component."""

    kind: str
    name: str
    factory: Any
    plugin: str
    description: str = ""

    def load(self) -> Any:
        """The factory itself, importing it if it was registered lazily."""
        if not isinstance(self.factory, str):
            return self.factory
        try:
            return import_string(self.factory)
        except RstarError:
            raise
        except Exception as exc:
            raise RstarError(
                f"{self.kind} {self.name!r} (plugin {self.plugin!r}) could not be loaded from "
                f"{self.factory!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def options_model(self) -> type[Options]:
        """The pydantic model that validates this component's recipe keys."""
        return getattr(self.load(), "Options", NoOptions)  # type: ignore[no-any-return]


class Registry:
    """All registered components, by kind and name."""

    def __init__(self, registrations: list[Registration] = ()) -> None:  # type: ignore[assignment]
        self._by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for reg in registrations:
            self.add(reg)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        """Call every registration hook through pluggy, one plugin at a time (so that each registration
        knows its plugin), with ``register`` passed by keyword."""
        registry = cls()
        plugins = [plugin for _, plugin in pm.list_name_plugin() if plugin is not None]
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                plugin_name = impl.plugin_name
                hook = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not impl.plugin])

                def register(
                    name: str, factory: Any, description: str = "", _kind: str = kind, _plugin: str = plugin_name
                ) -> None:
                    registry.add(Registration(_kind, name, factory, _plugin, description))

                hook(register=register)
        return registry

    def add(self, reg: Registration) -> None:
        if reg.kind not in self._by_kind:
            raise ValueError(f"unknown component kind {reg.kind!r}; kinds: {', '.join(KINDS)}")
        existing = self._by_kind[reg.kind].get(reg.name)
        if existing is not None and existing.plugin != reg.plugin:
            raise RstarError(
                f"{reg.kind} {reg.name!r} is registered by two plugins, {existing.plugin!r} and "
                f"{reg.plugin!r}; block one with RSTAR_BLOCK_PLUGINS={existing.plugin}"
            )
        self._by_kind[reg.kind][reg.name] = reg

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def all(self) -> list[Registration]:
        return [reg for kind in KINDS for reg in self._by_kind[kind].values()]

    def get(self, kind: str, name: str) -> Registration:
        try:
            return self._by_kind[kind][name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        available = self._by_kind[kind]
        msg = f"unknown {kind} {name!r}."
        close = difflib.get_close_matches(str(name), list(available), n=1)
        if close:
            msg += f" Did you mean {close[0]!r}?"
        if available:
            listing = ", ".join(f"{n} (plugin {r.plugin})" for n, r in sorted(available.items()))
            msg += f" Available: {listing}."
        else:
            msg += f" No installed plugin registers a {kind}."
        return msg

    def build(self, kind: str, spec: Any) -> Any:
        """Construct a component: ``factory(options)``.

        ``spec`` is a validated `rstar.config.ComponentSpec` (a recipe's component, validated once when
        the recipe was loaded), or a plain ``{name: ..., **options}`` mapping, validated here.
        """
        if not isinstance(spec, Mapping):
            factory: Callable[..., Any] = self.get(kind, spec.name).load()
            return factory(spec.options)
        options = dict(spec)
        name = options.pop("name", None)
        if name is None:
            raise RstarError(f"{kind}: missing 'name' (one of: {', '.join(self.names(kind))})")
        reg = self.get(kind, str(name))
        factory = reg.load()
        return factory(validate_options(reg.options_model(), options, path=kind))


def get_registry() -> Registry:
    """The registry of the process-wide plugin manager (built once per process)."""
    global _REGISTRY
    if _REGISTRY is None:
        from rstar.plugins import get_plugin_manager

        _REGISTRY = Registry.from_plugin_manager(get_plugin_manager())
    return _REGISTRY


_REGISTRY: Registry | None = None

__all__ = ["KINDS", "RegisterFn", "Registration", "Registry", "get_registry", "import_string"]
