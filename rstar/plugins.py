"""The plugin manager: the kernel's own ``core`` plugin (`rstar.builtin`), then the bundled and third-party
plugins, all loaded from the ``rstar`` entry-point group.

Environment switches:

* ``RSTAR_BLOCK_PLUGINS=name1,name2`` — do not load these plugins (entry-point names, as listed by
  ``rstar plugins``).
* ``RSTAR_TRACE_PLUGINS=1`` — print every hook call and its result to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import pluggy

from rstar import builtin, hookspecs

BLOCK_ENV = "RSTAR_BLOCK_PLUGINS"
TRACE_ENV = "RSTAR_TRACE_PLUGINS"
ENTRY_POINT_GROUP = "rstar"


def blocked_plugins() -> list[str]:
    return [name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()]


def make_plugin_manager(
    extra_plugins: Iterable[tuple[str, object]] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """A fresh plugin manager with the entry-point plugins (unless blocked) and ``extra_plugins``.

    ``extra_plugins`` are ``(name, module_or_object)`` pairs, registered after the entry points;
    tests use them to add a plugin without installing a package.
    """
    pm = pluggy.PluginManager("rstar")
    pm.add_hookspecs(hookspecs)
    for name in blocked_plugins():
        pm.set_blocked(name)
    if not pm.is_blocked("core"):
        pm.register(builtin, name="core")
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name, plugin in extra_plugins:
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    if os.environ.get(TRACE_ENV, "").strip() not in ("", "0", "false"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    pm.check_pending()
    return pm


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once)."""
    return make_plugin_manager()


def environment_versions() -> dict[str, Any]:
    """Python, the platform and every installed distribution with its version (no package is imported): what a
    run needs next to its recipe to be reproduced, or to tell why two runs of one recipe differ."""
    import platform
    from importlib import metadata

    packages = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name] = dist.version
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_facts(),
        "packages": dict(sorted(packages.items(), key=lambda item: item[0].lower())),
    }


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def cpu_facts() -> dict[str, Any]:
    """What decides a CPU's floating-point results besides the code: the model, the cores (torch uses one thread
    per core unless told otherwise), the instruction-set flags (which kernels the math libraries pick) and the
    thread variables set. Read from ``/proc/cpuinfo`` where there is one; nothing is imported."""
    facts: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            info = fh.read().split("\n\n", 1)[0]
    except OSError:
        info = ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "model name" in fields:
        facts["model"] = fields["model name"]
    flags = fields.get("flags", "").split()
    if flags:
        facts["vector_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "f16c")))
    facts["thread_variables"] = {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ}
    return facts


def plugin_versions(pm: pluggy.PluginManager) -> dict[str, dict[str, Any]]:
    """``{plugin name: {"distribution": ..., "version": ...}}`` for every loaded plugin."""
    out: dict[str, dict[str, Any]] = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            out[name] = {"distribution": dist.project_name, "version": dist.version}
    for name, plugin in pm.list_name_plugin():
        if plugin is not None and name is not None and name not in out:
            out[name] = {"distribution": None, "version": None}
    return out
