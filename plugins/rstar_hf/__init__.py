"""Bundled plugin: the transformers (Hugging Face) policy backend."""

from __future__ import annotations

from rstar import hookimpl
from rstar.registry import RegisterFn


@hookimpl
def register_policies(register: RegisterFn) -> None:
    register("hf", "rstar_hf.policy:HFPolicy", description="transformers on CPU or GPU; Hub id, local dir or GGUF")
