"""rstar: rStar-Math as a plugin framework.

Importing ``rstar`` is cheap: it imports no torch, transformers or docker. Plugins implement the hooks
of `rstar.hookspecs` with `hookimpl`.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rstar")
"""Marker for hook implementations: ``@rstar.hookimpl def register_verifiers(register): ...``."""

__all__ = ["__version__", "hookimpl"]
