"""Bundled plugin: the Lightning trainers ``sft`` (policy fine-tuning) and ``ppm`` (process preference model)."""

from __future__ import annotations

from rstar import hookimpl
from rstar.registry import RegisterFn


@hookimpl
def register_trainers(register: RegisterFn) -> None:
    """Registered once the trainers exist (see plugins/rstar_lightning)."""
