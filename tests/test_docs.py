"""The documentation site: every hook, command and bundled component documented; nav and pages agree; the site
builds with ``mkdocs build --strict``."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rstar import hookspecs
from rstar.cli import cli
from rstar.plugins import make_plugin_manager, plugin_versions
from rstar.registry import Registry

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
HOOKS_PAGE = DOCS / "plugins" / "hooks.md"
RECIPES_PAGE = DOCS / "recipes.md"
CLI_PAGE = DOCS / "cli.md"

RECIPE_SECTIONS = {
    "dataset": "Datasets",
    "policy": "Policies",
    "verifier": "Verifiers",
    "answer_checker": "Answer checkers",
    "search": "Search strategies",
    "reward_model": "Reward models",
    "trainer": "Trainers",
    "stage": "Stages",
    "section": "Pipeline sections",
}
"""Component kind → the ``###`` section of recipes.md that documents the bundled components of that kind."""


def hookspec_names() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "rstar_spec"))


def headings(path: Path, level: int) -> set[str]:
    marks = "#" * level
    return {m.group(1).strip() for m in re.finditer(rf"^{marks} (.+)$", path.read_text(encoding="utf-8"), re.M)}


def section(path: Path, title: str) -> str:
    """The text of the ``### title`` section of a page (up to the next heading of level 3 or above)."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#{{1,3}} |\Z)", text, re.M | re.S)
    assert match, f"{path.relative_to(REPO)} has no '### {title}' section"
    return match.group(1)


def nav_pages(entries: object) -> list[str]:
    """Every page path in a mkdocs nav (strings, ``{title: page}`` and nested sections)."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def bundled_registrations() -> list:
    pm = make_plugin_manager()
    bundled = {name for name, info in plugin_versions(pm).items() if info["distribution"] == "rstar"}
    return [reg for reg in Registry.from_plugin_manager(pm).all() if reg.plugin in bundled]


@pytest.mark.parametrize("name", hookspec_names())
def test_every_hook_has_a_docstring_and_a_section(name):
    assert inspect.getdoc(getattr(hookspecs, name)), f"hookspec {name} has no docstring"
    assert name in headings(HOOKS_PAGE, 2), f"docs/plugins/hooks.md has no '## {name}' section"


def test_the_hooks_page_documents_only_real_hooks():
    assert headings(HOOKS_PAGE, 2) == set(hookspec_names())


def test_nav_and_pages_agree():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = nav_pages(config["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert len(in_nav) == len(set(in_nav)), "a page is listed twice in the nav"
    assert sorted(in_nav) == on_disk, "docs/ pages and the nav of mkdocs.yml differ"


def test_every_command_has_a_section():
    documented = headings(CLI_PAGE, 2)
    for name in cli.commands:
        assert any(h.startswith(f"`rstar {name}") for h in documented), f"docs/cli.md: no section for rstar {name}"
    for reg in bundled_registrations():
        if reg.kind == "command":
            assert any(h.startswith(f"`rstar {reg.name}") for h in documented), f"docs/cli.md: no rstar {reg.name}"


def test_every_bundled_component_and_option_is_in_the_recipes_page():
    for reg in bundled_registrations():
        if reg.kind == "command":
            continue
        text = section(RECIPES_PAGE, RECIPE_SECTIONS[reg.kind])
        assert f"**`{reg.name}`**" in text, f"docs/recipes.md: {reg.kind} {reg.name!r} is not documented"
        for field in reg.options_model().model_fields:
            assert f"| `{field}` |" in text, f"docs/recipes.md: {reg.kind} {reg.name!r} option {field!r} is missing"


@pytest.mark.slow
def test_the_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
