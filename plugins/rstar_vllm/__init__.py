"""Bundled plugin: the vLLM policy backend (offline ``LLM`` or the async engine) and reward model."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_policies(register: RegisterFn) -> None:
    register(
        "vllm",
        "rstar_vllm.policy:VLLMPolicy",
        description="vLLM in-process on GPUs: prefix caching, tensor parallelism, optional async engine",
    )


@hookimpl
def register_reward_models(register: RegisterFn) -> None:
    register(
        "vllm",
        "rstar_vllm.reward:VLLMRewardModel",
        description="a PPM checkpoint on vLLM's pooling runner, in-process on GPUs",
    )
