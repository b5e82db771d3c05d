"""rstar: rStar-Math as a plugin framework.

``import rstar`` gives a plugin author everything they need: the hook marker, the component and stage
protocols, the data types, `Options`, the typed recipe and the errors. It imports no torch,
transformers or docker. Plugins implement the hooks of `rstar.hookspecs` with `hookimpl`::

    import rstar

    class MyVerifier:
        class Options(rstar.Options):
            timeout_s: float = 5.0

        def __init__(self, options): ...
        async def run(self, jobs: list[rstar.CodeJob]) -> list[rstar.Verdict]: ...

    @rstar.hookimpl
    def register_verifiers(register: rstar.RegisterFn) -> None:
        register("mine", MyVerifier, description="...")
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rstar")
"""Marker for hook implementations: ``@rstar.hookimpl def register_verifiers(register): ...``."""

# The kernel, in the order a plugin author meets it. (Defined after `hookimpl`: nothing below imports
# from this package's root.)
from rstar import rundir  # noqa: E402
from rstar.config import ComponentSpec, Recipe, RecipeChecker  # noqa: E402
from rstar.engine import problem_seed  # noqa: E402
from rstar.errors import ConfigError, DataError, MissingExtraError, RstarError, UnknownComponentError  # noqa: E402
from rstar.hookspecs import RegisterFn  # noqa: E402
from rstar.interfaces import (  # noqa: E402
    AnswerChecker,
    Closeable,
    Dataset,
    PolicyBackend,
    RewardModel,
    SearchContext,
    SearchStrategy,
    Stage,
    StageContext,
    StepVerifier,
    Trainer,
)
from rstar.options import NoOptions, Options  # noqa: E402
from rstar.steps import StepFormat  # noqa: E402
from rstar.types import (  # noqa: E402
    Budget,
    CodeJob,
    GenerationRequest,
    GenerationResult,
    Node,
    Problem,
    Reference,
    RewardRequest,
    RunInfo,
    Sample,
    Tree,
    Usage,
    Verdict,
)

__all__ = [
    "AnswerChecker",
    "Budget",
    "Closeable",
    "CodeJob",
    "ComponentSpec",
    "ConfigError",
    "DataError",
    "Dataset",
    "GenerationRequest",
    "GenerationResult",
    "MissingExtraError",
    "NoOptions",
    "Node",
    "Options",
    "PolicyBackend",
    "Problem",
    "Recipe",
    "RecipeChecker",
    "Reference",
    "RegisterFn",
    "RewardModel",
    "RewardRequest",
    "RstarError",
    "RunInfo",
    "Sample",
    "SearchContext",
    "SearchStrategy",
    "Stage",
    "StageContext",
    "StepFormat",
    "StepVerifier",
    "Trainer",
    "Tree",
    "UnknownComponentError",
    "Usage",
    "Verdict",
    "__version__",
    "hookimpl",
    "problem_seed",
    "rundir",
]
