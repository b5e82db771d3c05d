"""pytest fixtures for plugin authors (loaded automatically through the ``pytest11`` entry point).

* ``rstar_registry`` — the registry of every installed plugin.
* ``make_registry`` — ``make_registry(*plugins)``: a registry of the installed plugins plus extra
  plugin modules/objects, for testing a plugin before it is installed.
* ``write_recipe`` — ``write_recipe(dict, name="recipe.yaml") -> Path``: a recipe file in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rstar.plugins import make_plugin_manager
from rstar.registry import Registry


@pytest.fixture
def rstar_registry() -> Registry:
    return Registry.from_plugin_manager(make_plugin_manager())


@pytest.fixture
def make_registry() -> Callable[..., Registry]:
    def make(*plugins: object) -> Registry:
        extra = [(getattr(p, "__name__", f"test-plugin-{i}"), p) for i, p in enumerate(plugins)]
        return Registry.from_plugin_manager(make_plugin_manager(extra))

    return make


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any], name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write
