"""Bundled plugin: the SGLang policy backend and reward model (the offline ``sglang.Engine``)."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_policies(register: RegisterFn) -> None:
    register(
        "sglang",
        "rstar_sglang.policy:SGLangPolicy",
        description="SGLang in-process on GPUs: radix prefix cache, tensor parallelism, optional async mode",
    )


@hookimpl
def register_reward_models(register: RegisterFn) -> None:
    register(
        "sglang",
        "rstar_sglang.reward:SGLangRewardModel",
        description="a PPM checkpoint on SGLang's offline Engine (is_embedding), in-process on GPUs",
    )
