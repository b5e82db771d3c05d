"""The documentation site: every hook, command and bundled component documented; nav and pages agree; the site
builds with ``mkdocs build --strict``."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Literal

import pytest
import yaml
from helpers import REPO
from pydantic import BaseModel, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rstar import hookspecs
from rstar.cli import cli, main
from rstar.docs import (
    format_value,
    is_options_model,
    markers,
    option_rows,
    options_markdown,
    render_markers,
    resolve_target,
)
from rstar.errors import RstarError
from rstar.options import Options
from rstar.plugins import make_plugin_manager, plugin_versions
from rstar.registry import Registry, get_registry

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


KERNEL_MARKERS = ["recipe --no-nested", "budget", "step_format", "section compare"]
"""The recipes page's tables that are not a registered component's: the recipe's own keys, its sections, and the
``compare`` section (registered as a check function that carries its model as ``Options``)."""


def test_every_bundled_component_and_option_is_in_the_recipes_page():
    """Each bundled component has its lead line in its section of recipes.md and, when it takes options, a marker
    that the docs' hook replaces by its generated table; so does each plugin section with an options model."""
    page = RECIPES_PAGE.read_text(encoding="utf-8")
    registry = get_registry()
    for reg in bundled_registrations():
        if reg.kind == "command":
            continue
        text = section(RECIPES_PAGE, RECIPE_SECTIONS[reg.kind])
        assert f"**`{reg.name}`**" in text, f"docs/recipes.md: {reg.kind} {reg.name!r} is not documented"
        try:
            target = resolve_target([reg.kind, reg.name], registry)
        except RstarError:
            assert reg.kind == "section", f"{reg.kind} {reg.name}: its options cannot be resolved"
            continue  # a section checked by a function: no options model to show
        if target.model is None:
            continue  # takes no options (the stages)
        where = page if reg.kind == "section" else text
        assert f"<!-- options: {reg.kind} {reg.name} -->" in where, (
            f"docs/recipes.md: no '<!-- options: {reg.kind} {reg.name} -->' marker for its options table"
        )
    for args in KERNEL_MARKERS:
        assert f"<!-- options: {args} -->" in page, f"docs/recipes.md: no '<!-- options: {args} -->' marker"


def test_option_tables_are_generated_not_written():
    """No hand-written option table is left in the recipes page (they drift): every one is a marker."""
    assert "| key | default | meaning |" not in RECIPES_PAGE.read_text(encoding="utf-8")


def test_every_marker_of_the_docs_resolves():
    registry = get_registry()
    for page in DOCS.rglob("*.md"):
        text = page.read_text(encoding="utf-8")
        rendered = render_markers(text, registry)
        for args in markers(text):
            assert f"<!-- options: {args}" not in rendered, f"{page.relative_to(REPO)}: marker {args!r} left"


# --- the generated tables ------------------------------------------------------------------------


class _Inner(BaseModel):
    depth: int = Field(3, description="how deep")


@pydantic_dataclass(frozen=True)
class _Limits:
    steps: Annotated[int, Field(description="most steps")] = 8


class _Example(Options):
    path: str = Field(description="the 'input' file")
    mode: Literal["fast", "slow"] = Field("fast", description="speed")
    named: Literal["a", "b"] = Field("a", description="'a' or 'b'")
    tags: list[str] = Field(default_factory=lambda: ["x", "y"], description="labels <b>, *stars*, a|b")
    limit: int | None = None
    word: str = Field("007", description="_private_ and snake_case")
    limits: _Limits = Field(default_factory=_Limits, description="the limits")
    inner: _Inner | None = Field(None, description="optional section")


def test_the_table_shows_defaults_descriptions_and_choices():
    assert options_markdown(_Example).split("\n") == [
        "| key | default | meaning |",
        "|---|---|---|",
        "| `path` | required | the `input` file |",
        "| `mode` | `fast` | speed; one of `fast`, `slow` |",
        "| `named` | `a` | `a` or `b` |",
        '| `tags` | `["x", "y"]` | labels &lt;b>, \\*stars\\*, a\\|b |',
        "| `limit` | `null` |  |",
        '| `word` | `"007"` | \\_private\\_ and snake_case |',
        "| `limits` | see below | the limits |",
        "| `limits.steps` | `8` | most steps |",
        "| `inner` | `null` | optional section |",
        "| `inner.depth` | `3` | how deep |",
    ]
    shallow = [row.key for row in option_rows(_Example, nested=False)]
    assert shallow == ["path", "mode", "named", "tags", "limit", "word", "limits", "inner"]
    assert options_markdown(_Limits) == "| key | default | meaning |\n|---|---|---|\n| `steps` | `8` | most steps |"
    assert options_markdown(None) == "This takes no options."


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true"),
        (None, "null"),
        (7e-6, "7e-06"),
        ("auto", "auto"),
        ("true", '"true"'),
        ("", '""'),
        ({"a": 1}, '{"a": 1}'),
    ],
)
def test_values_are_written_as_a_recipe_would(value, text):
    assert format_value(value) == text


def test_every_bundled_table_has_the_real_defaults_and_descriptions():
    """Each row of a bundled component's table carries its field's default and description, as the model has
    them now: a changed default changes the docs with it."""
    registry = get_registry()
    for reg in bundled_registrations():
        if reg.kind in ("command", "stage") or (reg.kind == "section" and not is_options_model(reg.load())):
            continue
        model = resolve_target([reg.kind, reg.name], registry).model
        table = options_markdown(model, nested=False)
        for name, info in model.model_fields.items():
            row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
            if info.is_required():
                assert row.startswith(f"| `{name}` | required |"), row
            elif not is_options_model(type(info.get_default(call_default_factory=True))):
                default = format_value(info.get_default(call_default_factory=True))
                assert f"| `{default}` |" in row, f"{reg.kind} {reg.name}.{name}: {row}"
            words = re.findall(r"[A-Za-z]{4,}", info.description or "")
            assert all(word in row for word in words), f"{reg.kind} {reg.name}.{name}: {row}"


def test_known_defaults_reach_the_recipes_page():
    """The table of a known component shows its default and meaning (the docs once said otherwise by hand)."""
    table = render_markers("<!-- options: verifier subprocess -->", get_registry())
    assert "| `timeout_s` | `10.0` | default wall-clock limit of a job, in seconds |" in table
    assert '| `preload` | `["math", "fractions", "sympy", "numpy"]` |' in table
    budget = render_markers("<!-- options: budget -->", get_registry())
    assert "| `samples` | `4` | the strategy's main knob" in budget


# --- rstar options -------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_rstar_options_prints_the_table(capsys):
    code, out, _ = run_cli(capsys, "options", "verifier", "subprocess")
    assert code == 0
    assert "timeout_s" in out and "10.0" in out and "verifier subprocess (plugin sandbox)" in out
    code, out, _ = run_cli(capsys, "options", "mcts", "--markdown")
    assert code == 0
    assert out == options_markdown(resolve_target(["search", "mcts"], get_registry()).model) + "\n"
    code, out, _ = run_cli(capsys, "options", "trainer", "sft", "--no-nested", "--markdown")
    assert code == 0 and "| `lora` |" in out and "lora.r" not in out
    code, out, _ = run_cli(capsys, "options", "extract", "--markdown")  # the section, not the stage (no options)
    assert code == 0 and "| `sft_top_k` |" in out
    code, out, _ = run_cli(capsys, "options")
    assert code == 0 and "verifier subprocess" in out and "recipe" in out


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["nope"], ["nothing named 'nope' has options", "verifier: docker", "subprocess"]),
        (["verifier", "nope"], ["unknown verifier 'nope'", "subprocess (plugin sandbox)"]),
        (["hf"], ["'hf' names a policy", "rstar options policy hf", "rstar options dataset hf"]),
        (["gadget", "x"], ["unknown component kind 'gadget'", "verifier"]),
        (["section", "evaluate"], ["checked by a function"]),
    ],
)
def test_rstar_options_errors_name_what_exists(capsys, args, fragments):
    code, _, err = run_cli(capsys, "options", *args)
    assert code == 2
    assert "Traceback" not in err and err.startswith("error:")
    for fragment in fragments:
        assert fragment in " ".join(err.split()), err


# --- the docs' hook ------------------------------------------------------------------------------


def load_hook():
    spec = importlib.util.spec_from_file_location("rstar_docs_options_hook", DOCS / "hooks" / "options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hook_replaces_markers_by_tables():
    pytest.importorskip("mkdocs")
    hook = load_hook()
    page = SimpleNamespace(file=SimpleNamespace(src_path="page.md"))
    text = "Intro.\n\n<!-- options: answer_checker math_verify -->\n\n```\n<!-- options: nope -->\n```\nEnd.\n"
    rendered = hook.on_page_markdown(text, page=page, config=None, files=None)
    assert rendered.startswith("Intro.\n\n| key | default | meaning |\n|---|---|---|\n| `timeout_s` | `5.0` |")
    assert "| `strict` | `true` |" in rendered
    assert "```\n<!-- options: nope -->\n```\nEnd.\n" in rendered  # a marker in a code block is an example
    assert "<!-- options: answer_checker" not in rendered

    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match=re.escape("page.md: options marker: nothing named 'nope'")):
        hook.on_page_markdown("<!-- options: nope -->", page=page, config=None, files=None)


def test_mkdocs_runs_the_hook():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    assert "docs/hooks/options.py" in config["hooks"]


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
