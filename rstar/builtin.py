"""The kernel's own plugin, registered first under the name ``core``: the one stage the kernel offers,
``search``, the runner's resumable search. Everything else a round does comes from plugins."""

from __future__ import annotations

import pluggy

from rstar.hookspecs import RegisterFn

hookimpl = pluggy.HookimplMarker("rstar")


@hookimpl
def register_stages(register: RegisterFn) -> None:
    register("search", "rstar.runner:SearchStage", description="search every problem of the round's dataset")
