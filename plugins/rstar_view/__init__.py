"""Bundled plugin: ``rstar view``, a local, offline viewer of search trees in a browser.

The page (``page.html``, ``view.css``, ``view.js``) ships in this package and loads nothing from the
network. ``rstar view SOURCE`` serves it and the trees from 127.0.0.1, picking up trees a running search
appends; ``rstar view SOURCE -o page.html`` writes one self-contained file with the trees in it.
"""

from __future__ import annotations

import rstar
from rstar import RegisterFn


@rstar.hookimpl
def register_commands(register: RegisterFn) -> None:
    register("view", "rstar_view.command:view", description="browse search trees offline in a browser")
