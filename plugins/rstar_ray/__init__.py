"""Bundled plugin: searches on Ray actors, each owning a whole engine (``executor: {name: ray, ...}``).

It registers the recipe section ``executor``: ``{name: local}`` (the default: the runner's own engine) or
``{name: ray, workers: N, address: ..., ...}``. The kernel's side of the seam is `rstar.executors`; the driver
is `rstar_ray.executor`, the workers `rstar_ray.worker`. Ray itself (the ``ray`` extra) is imported only when a
search starts, so this plugin costs nothing to load and validates recipes without Ray installed.
"""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_sections(register: RegisterFn) -> None:
    register(
        "executor",
        "rstar_ray.options:check_executor",
        description="where searches run: {name: local} (this process) or {name: ray, workers: N, ...}",
    )
