"""Registers the scripted (test) components under the name ``scripted``."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_policies(register: RegisterFn) -> None:
    register(
        "scripted",
        "rstar.testing.scripted:ScriptedPolicy",
        description="test fake: a function fn(prompt, n) -> list[str]",
    )


@hookimpl
def register_reward_models(register: RegisterFn) -> None:
    register(
        "scripted", "rstar.testing.scripted:ScriptedRewardModel", description="test fake: a function fn(text) -> float"
    )
