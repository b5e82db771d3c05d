"""Bundled plugin: the Lightning trainers ``sft`` (policy fine-tuning) and ``ppm`` (process preference model).

Modules:

* `rstar_lightning.options`: the recipe keys (pydantic; no torch);
* `rstar_lightning.trainers`: the trainers the registry builds and their life cycle (no torch until ``fit``);
* `rstar_lightning.sft`, `rstar_lightning.ppm`: what each trainer trains (data, batches, Lightning module);
* ``_run`` (begin, adapt, train, save), ``_data`` (data files, batches), ``_model`` (tokenizer, weights,
  step tags, LoRA), ``_checkpoint`` (the saved directory), ``_prefix`` (shared-prefix forward passes),
  ``_launch`` (local worker processes), ``_fsdp`` (FSDP on CPUs): shared by both.
"""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_trainers(register: RegisterFn) -> None:
    """The trainers are imported lazily, from a module (and with options) that import no torch or lightning:
    those load only when a trainer runs."""
    register("sft", "rstar_lightning.trainers:SFTTrainer", description="fine-tune the policy on its best solutions")
    register(
        "ppm",
        "rstar_lightning.trainers:PPMTrainer",
        description="process preference model: scalar head, pairwise loss",
    )
