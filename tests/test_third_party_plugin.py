"""A third-party plugin package, installed for real, shows in ``rstar plugins`` and works from a recipe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_cli import rstar

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "rstar-throwaway-verifier"
version = "0.0.1"

[project.entry-points.rstar]
throwaway = "rstar_throwaway"
"""

MODULE = '''
"""A verifier that refuses programs importing os and runs the rest in the subprocess verifier."""
from rstar import hookimpl
from rstar.config import Options
from rstar.registry import get_registry
from rstar.types import Verdict


class NoOsOptions(Options):
    timeout_s: float = 5.0


class NoOsVerifier:
    Options = NoOsOptions

    def __init__(self, options):
        self.inner = get_registry().build("verifier", {"name": "subprocess", "timeout_s": options.timeout_s})

    async def run(self, jobs):
        allowed = [j for j in jobs if "import os" not in j.program]
        verdicts = iter(await self.inner.run(allowed))
        return [Verdict("error", "", "PolicyError: os is not allowed") if "import os" in j.program
                else next(verdicts) for j in jobs]

    def close(self):
        self.inner.close()


@hookimpl
def register_verifiers(register):
    register("no_os", NoOsVerifier, description="refuses programs that import os")
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "rstar_throwaway.py").write_text(textwrap.dedent(MODULE))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(root)]
    subprocess.run(pip, check=True, capture_output=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "rstar-throwaway-verifier"], check=True)


def test_installed_plugin_is_listed(installed_plugin):
    listing = {p["name"]: p for p in json.loads(rstar("plugins", "--json").stdout)}
    plugin = listing["throwaway"]
    assert plugin["distribution"] == "rstar-throwaway-verifier" and plugin["version"] == "0.0.1"
    assert plugin["components"]["verifier"] == [{"name": "no_os", "description": "refuses programs that import os"}]


def test_installed_plugin_is_usable_from_a_recipe(installed_plugin, tmp_path, adder_jsonl):
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "dataset": {"name": "jsonl", "path": str(adder_jsonl), "limit": 2},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "no_os", "timeout_s": 3},
        "search": {"name": "greedy"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert rstar("validate", str(path), "verifier.timeout=1").returncode != 0
    proc = rstar("search", str(path))
    assert proc.returncode == 0, proc.stderr
    trees = [json.loads(line) for line in Path(tmp_path / "run" / "search" / "trees.jsonl").read_text().splitlines()]
    assert [t["correct"] for t in trees] == [True, True]


def test_blocking_the_installed_plugin(installed_plugin, monkeypatch):
    monkeypatch.setenv("RSTAR_BLOCK_PLUGINS", "throwaway")
    listing = {p["name"] for p in json.loads(rstar("plugins", "--json").stdout)}
    assert "throwaway" not in listing
