"""The verifier-plugin tutorial cannot rot: its example plugin is installed for real, its own tests pass, a
recipe uses it, and every file of it appears verbatim in the tutorial page."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, rstar

EXAMPLE = REPO / "docs" / "plugins" / "examples" / "rstar-lint-verifier"
TUTORIAL = REPO / "docs" / "plugins" / "tutorial-verifier.md"
FILES = ["pyproject.toml", "rstar_lint_verifier/__init__.py", "tests/test_lint_verifier.py"]


@pytest.mark.parametrize("name", FILES)
def test_the_tutorial_shows_each_file_as_it_is(name):
    assert (EXAMPLE / name).read_text(encoding="utf-8").strip() in TUTORIAL.read_text(encoding="utf-8")


def test_its_own_tests_pass_before_it_is_installed(tmp_path):
    """As step 3 of the tutorial: the plugin's tests, with the plugin importable but not installed."""
    root = tmp_path / EXAMPLE.name
    subprocess.run(["cp", "-r", str(EXAMPLE), str(root)], check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    # Install from a copy, so that no build/ or egg-info appears under docs/.
    root = tmp_path_factory.mktemp("example") / EXAMPLE.name
    subprocess.run(["cp", "-r", str(EXAMPLE), str(root)], check=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(root)]
    subprocess.run(pip, check=True, capture_output=True)
    yield root
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "rstar-lint-verifier"], check=True)


def test_the_installed_plugin_is_listed(installed):
    listing = {p["name"]: p for p in json.loads(rstar("plugins", "--json").stdout)}
    assert listing["lint"]["components"]["verifier"][0]["name"] == "lint"


def test_a_recipe_uses_it(installed, tmp_path, adder_jsonl):
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "dataset": {"name": "jsonl", "path": str(adder_jsonl), "limit": 2},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "lint", "forbidden": ["os"], "inner": {"name": "subprocess", "timeout_s": 5}},
        "search": {"name": "greedy"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = rstar("search", str(path))
    assert proc.returncode == 0, proc.stderr
    trees = [json.loads(line) for line in (tmp_path / "run" / "search" / "trees.jsonl").read_text().splitlines()]
    assert [t["correct"] for t in trees] == [True, True]
