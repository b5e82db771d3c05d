"""The ``executor`` section of a recipe: where searches run. Pydantic models only; imports no Ray.

```yaml
executor: {name: ray, workers: 4, address: auto, num_gpus_per_worker: 1}
```

``{name: local}`` is the default, the runner's own engine in its own process (`rstar.executors.InProcess`);
``{name: ray, ...}`` runs searches on Ray actors (`rstar_ray.executor.RayExecutor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from rstar.config import RecipeChecker
from rstar.executors import InProcess
from rstar.options import NoOptions, Options

EXECUTORS = ("local", "ray")


class RayOptions(Options):
    """Options of the ``ray`` executor (``executor: {name: ray, ...}``)."""

    workers: int = Field(1, ge=1, description="Ray actors searching at once, each with a whole engine of its own")
    address: str = Field(
        "local",
        description=(
            "the Ray cluster: 'local' starts one on this machine (or uses the one this process already joined), "
            "'auto' joins the cluster this machine is part of (`ray start`), 'HOST:PORT' or 'ray://HOST:PORT' "
            "a remote one"
        ),
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the Ray instance that address 'local' starts (default: every CPU here)"
    )
    num_cpus_per_worker: float = Field(
        1.0, ge=0, description="CPUs Ray reserves for each worker (its verifier pool and answer checker run there)"
    )
    num_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs Ray reserves for each worker (its policy engine)")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="other Ray resources each worker reserves, e.g. {node_type_a100: 1}"
    )
    max_worker_deaths: int = Field(
        3,
        ge=0,
        description=(
            "workers that may die in one search (their problems are searched again on another); one more ends "
            "the search with an error, and the same command resumes it"
        ),
    )
    start_timeout_s: float = Field(
        900.0,
        gt=0,
        description="how long a search waits for a worker to start (load its models) while no other worker runs",
    )
    runtime_env: dict[str, Any] | None = Field(
        None,
        description=(
            "Ray runtime environment of the workers (env_vars, working_dir, py_modules, ...); with address "
            "'local' the workers also import from this process's sys.path"
        ),
    )


def check_executor(value: Any, data: Mapping[str, Any], checker: RecipeChecker, path: str) -> tuple[Any, list[str]]:
    """The ``executor`` section, as registered with ``register_sections``: `InProcess` for ``{name: local}``,
    a `rstar_ray.executor.RayExecutor` for ``{name: ray, ...}``."""
    if not isinstance(value, Mapping):
        return None, [f"{path}: expected a mapping like {{name: ray, workers: 4}} (got {value!r})"]
    name = value.get("name")
    if name not in EXECUTORS:
        got = "missing" if name is None else f"{name!r} is unknown"
        return None, [f"{path}.name: {got}; one of: {', '.join(EXECUTORS)}"]
    model: type[Options] = RayOptions if name == "ray" else NoOptions
    options, problems = checker.options(model, {k: v for k, v in value.items() if k != "name"}, path)
    if options is None:
        return None, problems
    if name == "local":
        return InProcess(), []
    from rstar_ray.executor import RayExecutor

    return RayExecutor(options), []


check_executor.Options = RayOptions  # type: ignore[attr-defined]  # what `rstar options section executor` shows

__all__ = ["EXECUTORS", "RayOptions", "check_executor"]
