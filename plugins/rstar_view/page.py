"""The viewer's page: ``page.html`` with the style sheet, the script and the data written into it, so that the
page is one file that loads nothing (its Content-Security-Policy forbids it anything but its own server)."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

POLL_MS = 2000
"""How often a served page asks for new trees."""

_MARKER = re.compile(r"@@(TITLE|STYLE|SCRIPT|DATA)@@")


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element: no ``<`` (so no ``</script>`` and no
    ``<!--``) and no line separators that old parsers choke on."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_page(title: str, data: dict[str, Any]) -> str:
    """The page for ``data``: ``{"live": True}`` for a served page that polls its server, or ``{"live": False,
    "index": ..., "trees": ...}`` for a page with the trees embedded."""
    files = resources.files("rstar_view")
    parts = {
        "TITLE": html.escape(f"rstar view · {title}"),
        "STYLE": files.joinpath("view.css").read_text(encoding="utf-8"),
        "SCRIPT": files.joinpath("view.js").read_text(encoding="utf-8"),
        "DATA": script_json({"poll_ms": POLL_MS, **data}),
    }
    template = files.joinpath("page.html").read_text(encoding="utf-8")
    # One pass: a marker that appears in the data or the script is not replaced again.
    return _MARKER.sub(lambda m: parts[m.group(1)], template)
