"""Device, dtype and tokenizer choices shared by the ``hf`` policy and the ``hf`` reward model.

``who`` names the component in error messages (``"hf policy"``, ``"hf reward model"``), so that a bad
``device`` is reported under the recipe section it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rstar.errors import ConfigError, MissingExtraError, RstarError
from rstar.models import resolve_source

if TYPE_CHECKING:
    import torch


def pick_device(name: str, who: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; otherwise the named torch device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError([f"{who}: device {name!r} is not a torch device ({exc})"]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"{who}: device {name!r} asked for, but torch sees no CUDA GPU; use device: cpu"])
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 (fp16 where bf16 is missing) on a GPU, fp32 on the CPU; otherwise the named dtype."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(source: str, gguf: str | None, trust_remote_code: bool, who: str) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise RstarError(f"{who}: cannot load the tokenizer from {describe(source, gguf)}: {exc}") from exc


def describe(source: str, gguf: str | None) -> str:
    """A model source for messages: the path or Hub id, and the GGUF file if any."""
    return f"{source!r} (GGUF file {gguf!r})" if gguf else repr(source)


@dataclass(frozen=True)
class Loaded:
    """What the policy and the reward model set up alike before loading their model class."""

    device: torch.device
    dtype: torch.dtype
    source: str
    gguf: str | None
    tokenizer: Any


def prepare(options: Any, what: str) -> Loaded:
    """Check the extras, set torch's threads, pick device and dtype, resolve the model and tokenizer
    sources and load the tokenizer, for the ``hf`` component ``what`` (``"policy"``, ``"reward model"``).
    ``options`` has ``model``, ``gguf_file``, ``tokenizer``, ``device``, ``dtype``, ``threads`` and
    ``trust_remote_code``."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"the 'hf' {what}", exc.name or "transformers", "hf") from None
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    who = f"hf {what}"
    device = pick_device(options.device, who)
    dtype = pick_dtype(options.dtype, device)
    source, gguf = resolve_source(options.model, options.gguf_file)
    if options.tokenizer is None:
        tok_src, tok_gguf = source, gguf
    else:
        tok_src, tok_gguf = resolve_source(options.tokenizer, None)
    if gguf is not None or tok_gguf is not None:
        try:
            import gguf as _gguf  # noqa: F401
        except ImportError:
            raise MissingExtraError(f"the 'hf' {what} (GGUF models)", "gguf", "hf") from None
    tokenizer = load_tokenizer(tok_src, tok_gguf, options.trust_remote_code, who)
    return Loaded(device, dtype, source, gguf, tokenizer)
