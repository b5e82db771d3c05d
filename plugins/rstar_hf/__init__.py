"""Bundled plugin: the transformers (Hugging Face) policy backend and reward model."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_policies(register: RegisterFn) -> None:
    register("hf", "rstar_hf.policy:HFPolicy", description="transformers on CPU or GPU; Hub id, local dir or GGUF")


@hookimpl
def register_reward_models(register: RegisterFn) -> None:
    register(
        "hf",
        "rstar_hf.reward:HFRewardModel",
        description="a PPM (one-label sequence-classification checkpoint) scored with transformers on CPU or GPU",
    )
