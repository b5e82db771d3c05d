"""Bundled plugin: a policy backend for any OpenAI-compatible completions server."""

from __future__ import annotations

from rstar import hookimpl
from rstar.registry import RegisterFn


@hookimpl
def register_policies(register: RegisterFn) -> None:
    register(
        "openai",
        "rstar_openai.policy:OpenAIPolicy",
        description="an OpenAI-compatible completions server (vllm serve, SGLang, llama.cpp)",
    )
