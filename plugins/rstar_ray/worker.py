"""One worker of the ``ray`` executor: a Ray actor owning a whole engine, built from the search's recipe.

`rstar_ray.executor` makes this class an actor with ``ray.remote``; the class itself imports no Ray, so its
methods can be read and tested as plain Python. Its ``search`` is a coroutine, which makes it an *async actor*:
the problems the driver hands it run side by side on one event loop, and their component calls join the same
batches (`rstar.executors.SearchService`), as the problems of an in-process search do.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from rstar.config import Recipe
from rstar.engine import Components, EngineSnapshot
from rstar.executors import SearchService
from rstar.registry import Registry
from rstar.runner import ComponentCache, component_stats
from rstar.types import Problem, Tree


class SearchWorker:
    """Builds the recipe's policy, verifier, answer checker and reward model in `start`, then searches the
    problems handed to `search` until the driver closes it."""

    def __init__(self, recipe: Recipe, registry: Registry) -> None:
        # Nothing that can fail here: an error in a constructor would look like the worker dying.
        self.recipe = recipe
        self.registry = registry
        self.cache: ComponentCache | None = None
        self.components: Components | None = None
        self.service: SearchService | None = None

    def start(self) -> dict[str, Any]:
        """Build the engine; say where it runs and how long loading took."""
        started = time.perf_counter()
        recipe, self.cache = self.recipe, ComponentCache(self.registry)
        reward = recipe.component("reward_model")
        self.components = Components(
            verifier=self.cache.get(recipe.require("verifier")),
            policy=self.cache.get(recipe.require("policy")),
            checker=self.cache.get(recipe.require("answer_checker")),
            reward_model=self.cache.get(reward) if reward is not None else None,
        )
        self.service = SearchService(recipe, self.components, self.registry)
        return {"pid": os.getpid(), "node": socket.gethostname(), "seconds": round(time.perf_counter() - started, 3)}

    async def search(self, problem: Problem) -> Tree:
        assert self.service is not None, "start() first"
        return await self.service.search(problem)

    def snapshot(self) -> EngineSnapshot | None:
        return self.service.snapshot() if self.service is not None else None

    def stats(self) -> dict[str, Any]:
        """What the components measured (`rstar.runner.component_stats`)."""
        return component_stats(self.components) if self.components is not None else {}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
