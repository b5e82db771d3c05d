"""Third-party plugin packages, installed for real: a verifier and a stage show in ``rstar plugins``
and work from a recipe, through the public API (``import rstar``) only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import rstar

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
from rstar import Options, Verdict, hookimpl
from rstar.registry import get_registry


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


def install(tmp_path_factory, pyproject: str, module_name: str, module: str) -> str:
    """Build and install a throwaway plugin package; return its distribution name (for uninstalling)."""
    root = tmp_path_factory.mktemp(module_name)
    (root / "pyproject.toml").write_text(pyproject)
    (root / f"{module_name}.py").write_text(textwrap.dedent(module))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(root)]
    subprocess.run(pip, check=True, capture_output=True)
    return pyproject.split('name = "', 1)[1].split('"', 1)[0]


def uninstall(distribution: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", distribution], check=True)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    distribution = install(tmp_path_factory, PYPROJECT, "rstar_throwaway", MODULE)
    yield
    uninstall(distribution)


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


STAGE_PYPROJECT = PYPROJECT.replace("rstar-throwaway-verifier", "rstar-throwaway-stage").replace(
    'throwaway = "rstar_throwaway"', 'throwaway_stage = "rstar_throwaway_stage"'
)

STAGE_MODULE = '''
"""A stage that counts the round's search nodes at least min_depth deep, with its own recipe section."""
import rstar


class CountOptions(rstar.Options):
    min_depth: int = 1


class CountNodes:
    needs = {"count_nodes": "{min_depth: 1}"}

    def run(self, ctx: rstar.StageContext) -> dict:
        options = ctx.recipe.section("count_nodes")
        assert isinstance(options, CountOptions)  # validated once, when the recipe was loaded
        trees = rstar.rundir.read_trees(ctx.stage_dir("search") / "trees.jsonl")
        deep = sum(1 for t in trees.values() for n in t.nodes if n.depth >= options.min_depth)
        (ctx.folder / "count.txt").write_text(str(deep))
        return {"nodes": deep, "trees": len(trees)}


@rstar.hookimpl
def register_stages(register):
    register("count_nodes", CountNodes, description="count the round's deep nodes")


@rstar.hookimpl
def register_sections(register):
    register("count_nodes", CountOptions, description="options of count_nodes")
'''


@pytest.fixture(scope="module")
def installed_stage(tmp_path_factory):
    distribution = install(tmp_path_factory, STAGE_PYPROJECT, "rstar_throwaway_stage", STAGE_MODULE)
    yield
    uninstall(distribution)


def test_an_installed_stage_runs_in_a_round_and_resumes(installed_stage, tmp_path, adder_jsonl):
    listing = {p["name"]: p for p in json.loads(rstar("plugins", "--json").stdout)}
    components = listing["throwaway_stage"]["components"]
    assert components["stage"] == [{"name": "count_nodes", "description": "count the round's deep nodes"}]
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "dataset": {"name": "jsonl", "path": str(adder_jsonl), "limit": 2},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "search": {"name": "greedy"},
        "stages": ["search", "count_nodes"],
        "count_nodes": {"min_depth": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    bad = rstar("validate", str(path), "count_nodes.min_dept=2")
    assert bad.returncode != 0 and "count_nodes.min_dept: unknown key" in bad.stderr
    missing = rstar("validate", str(path), "~count_nodes")
    assert missing.returncode != 0 and "stage 'count_nodes' needs a top-level 'count_nodes' section" in missing.stderr
    proc = rstar("run", str(path))
    assert proc.returncode == 0, proc.stderr
    stage = tmp_path / "run" / "round_1" / "count_nodes"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["trees"] == 2 and summary["nodes"] >= 2 and (stage / "DONE").exists()
    (stage / "count.txt").unlink()
    again = rstar("run", str(path))
    assert again.returncode == 0, again.stderr
    assert not (stage / "count.txt").exists()  # done: skipped, not run again
