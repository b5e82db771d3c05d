"""Plugins and the registry: entry points, lazy factories, suggestions, blocking, tracing."""

from __future__ import annotations

import types

import pytest

from rstar import hookimpl
from rstar.errors import RstarError, UnknownComponentError
from rstar.options import NoOptions
from rstar.plugins import make_plugin_manager, plugin_versions
from rstar.registry import KINDS, Registry


def test_bundled_plugins_register_through_entry_points(rstar_registry):
    assert "hf" in rstar_registry.names("policy")
    assert {"greedy", "best_of_n"} <= set(rstar_registry.names("search"))
    assert rstar_registry.get("verifier", "subprocess").plugin == "sandbox"
    assert rstar_registry.get("dataset", "jsonl").plugin == "data"


def test_every_kind_has_a_registration_hook():
    pm = make_plugin_manager(entry_points=False)
    for hook in KINDS.values():
        assert hasattr(pm.hook, hook)


def test_unknown_name_lists_available_names_with_plugins_and_closest_match(rstar_registry):
    with pytest.raises(UnknownComponentError) as info:
        rstar_registry.get("search", "best_of")
    msg = str(info.value)
    assert "Did you mean 'best_of_n'?" in msg
    assert "greedy (plugin search)" in msg


def test_lazy_factories_are_imported_only_when_built(make_registry):
    plugin = types.ModuleType("plugin")

    @hookimpl
    def register_verifiers(register):
        register("lazy", "tests_missing_module:Verifier")

    plugin.register_verifiers = register_verifiers
    registry = make_registry(plugin)
    assert "lazy" in registry.names("verifier")  # listing did not import anything
    with pytest.raises(RstarError, match="could not be loaded from 'tests_missing_module:Verifier'"):
        registry.build("verifier", {"name": "lazy"})


def test_build_validates_options_and_passes_them(make_registry):
    class Thing:
        Options = NoOptions

        def __init__(self, options):
            self.options = options

    plugin = types.ModuleType("plugin")

    @hookimpl
    def register_reward_models(register):
        register("thing", Thing)

    plugin.register_reward_models = register_reward_models
    registry = make_registry(plugin)
    assert isinstance(registry.build("reward_model", {"name": "thing"}), Thing)
    with pytest.raises(RstarError, match=r"reward_model\.x: unknown key; this takes no options"):
        registry.build("reward_model", {"name": "thing", "x": 1})


def test_two_plugins_claiming_one_name_is_an_error():
    registry = Registry()
    from rstar.registry import Registration

    registry.add(Registration("policy", "p", object, "a"))
    with pytest.raises(RstarError, match="registered by two plugins"):
        registry.add(Registration("policy", "p", object, "b"))


def test_blocking_a_plugin_by_environment(monkeypatch):
    monkeypatch.setenv("RSTAR_BLOCK_PLUGINS", "hf, search")
    registry = Registry.from_plugin_manager(make_plugin_manager())
    assert "hf" not in registry.names("policy")
    assert registry.names("search") == []
    assert "subprocess" in registry.names("verifier")


def test_tracing_by_environment(monkeypatch, capsys):
    monkeypatch.setenv("RSTAR_TRACE_PLUGINS", "1")
    Registry.from_plugin_manager(make_plugin_manager())
    pm = make_plugin_manager()
    pm.hook.register_policies(register=lambda *a, **k: None)
    assert "register_policies" in capsys.readouterr().err


def test_plugin_versions_name_the_distribution():
    versions = plugin_versions(make_plugin_manager())
    assert versions["search"]["distribution"] == "rstar"
    assert versions["search"]["version"]
