"""mkdocs hook: option tables generated from the code.

A line ``<!-- options: TARGET... -->`` of a page (outside code blocks) becomes the table that
``rstar options TARGET... --markdown`` prints: key, default and meaning of each option, read from the options
model of the component (``verifier subprocess``), the recipe (``recipe``, ``budget``, ``step_format``) or a model
named by its import path (``module:Model``). Components are found through the registry, as a recipe finds them,
so the tables show what the installed plugins really take. A marker naming nothing is a build error.
"""

from __future__ import annotations

from typing import Any

from mkdocs.exceptions import PluginError

from rstar.docs import render_markers
from rstar.errors import RstarError
from rstar.registry import get_registry


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Replace the page's option markers by their tables."""
    try:
        return render_markers(markdown, get_registry())
    except RstarError as exc:
        raise PluginError(f"{page.file.src_path}: options marker: {exc}") from exc
