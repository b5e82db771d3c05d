"""Helpers for plugin authors and rstar's own tests.

* `ScriptedPolicy` — a policy backend driven by a plain function ``fn(prompt, n) -> list[str]``;
  usable from a recipe as ``policy: {name: scripted, fn: "module:function"}``.
* `ScriptedRewardModel` — a reward model driven by ``fn(text) -> float``; from a recipe as
  ``reward_model: {name: scripted, fn: "module:function"}``.
* pytest fixtures (installed as a ``pytest11`` plugin, see `rstar.testing.fixtures`).

"Scripted" components are fakes for tests: they never stand in for a real model in a real run.
"""

from rstar.testing.scripted import ScriptedPolicy, ScriptedRewardModel, count_tokens

__all__ = ["ScriptedPolicy", "ScriptedRewardModel", "count_tokens"]
