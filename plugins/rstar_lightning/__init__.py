"""Bundled plugin: the Lightning trainers ``sft`` (policy fine-tuning) and ``ppm`` (process preference model)."""

from __future__ import annotations

from rstar import hookimpl
from rstar.registry import RegisterFn


@hookimpl
def register_trainers(register: RegisterFn) -> None:
    """The trainers are imported lazily: torch and lightning load only when a recipe builds one."""
    register("sft", "rstar_lightning.sft:SFTTrainer", description="fine-tune the policy on its best solutions")
    register(
        "ppm", "rstar_lightning.ppm:PPMTrainer", description="process preference model: scalar head, pairwise loss"
    )
