"""``strategy: ddp`` and ``fsdp`` on two CPU processes (gloo): `rstar train sft|ppm` as commands, tiny random Llama.

The trainers start their own worker processes (`rstar_lightning._launch`), so these tests check what
would break if they did not: both ranks take part (the world size is logged and every rank sees half
the data, so the number of optimizer steps halves), only rank 0 writes, every process exits with 0 and
none is left behind; and a worker that fails makes the command fail, naming it, instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")
pytest.importorskip("peft")
pytest.importorskip("torch")

from rstar_lightning import _prefix
from rstar_lightning._model import load_tokenizer
from rstar_lightning.options import SFTOptions
from rstar_lightning.trainers import SFTTrainer

from rstar.testing.models import build_tiny_llama

TRAIN = {"lr": 1e-2, "batch_size": 2, "max_length": 64, "epochs": 2, "log_every_n_steps": 1, "accelerator": "cpu"}
DDP = ["strategy=ddp", "devices=2"]
TIMEOUT_S = 240


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(root: Path) -> Path:
    """A recipe with the sections `rstar train` needs; the data and models are given on the command line."""
    recipe = {
        "output_dir": str(root / "run"),
        "dataset": {"name": "jsonl", "path": str(root / "sft.jsonl")},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "search": {"name": "mcts"},
        "train_sft": {"name": "sft", **TRAIN},
        "train_ppm": {"name": "ppm", **TRAIN, "val_fraction": 0.25},
    }
    path = root / "recipe.json"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    return path


def rstar_command() -> list[str]:
    """The installed ``rstar`` script next to this interpreter (what users run), else ``python -m rstar.cli``."""
    script = Path(sys.executable).parent / "rstar"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rstar.cli"]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the running processes that contain ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line and "pytest" not in line:
            found.append(line)
    return found


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a shared machine: no thread oversubscription
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code`` with this folder importable (for the trainer subclasses defined here)."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", code]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="looks for stray processes in /proc")


@pytest.mark.slow
@needs_proc
def test_sft_then_ppm_with_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    tiny = build_tiny_llama(tmp_path / "tiny")
    prompt, response = "Question: what is 12 * 7?\n", "x = 12 * 7\nprint(x)<end_of_step>"
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": prompt, "response": response}] * 8)
    pairs = [
        {
            "prompt": f"Question: what is {3 + i} * {7 + 2 * i}?\n",
            "pos": f"x = {3 + i} * {7 + 2 * i}\nprint(x)<end_of_step>",
            "neg": f"x = {3 + i} + {7 + 2 * i} # error!<end_of_step>",
            "pos_count": 2,
            "neg_count": 2,
        }
        for i in range(12)
    ]
    pair_data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    recipe = write_recipe(tmp_path)

    sft_out = tmp_path / "sft"
    sft_args = ["train", "sft", str(recipe), *(f"train_sft.{o}" for o in DDP)]
    done = run(
        [*rstar_command(), *sft_args, "--data", str(sft_data), "--init", str(tiny), "--out", str(sft_out)], tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    metrics = json.loads((sft_out / "metrics.json").read_text())
    # 8 examples, batch 2: each of 2 ranks takes 4 examples = 2 steps per epoch, 2 epochs (1 process: 8)
    assert (metrics["world_size"], metrics["steps"], metrics["examples"]) == (2, 4, 8)
    assert processes_mentioning(str(sft_out)) == []

    ppm_out = tmp_path / "ppm"
    ppm_args = ["train", "ppm", str(recipe), *(f"train_ppm.{o}" for o in DDP), "--data", str(pair_data)]
    done = run(
        [sys.executable, "-m", "rstar.cli", *ppm_args, "--init", str(sft_out / "model"), "--out", str(ppm_out)],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((ppm_out / "metrics.json").read_text())
    # 12 pairs, 3 held out; 9 shared by 2 ranks = 5 each (one repeated), batches of 2: 3 steps per epoch
    assert (metrics["world_size"], metrics["steps"], metrics["pairs"], metrics["val_pairs"]) == (2, 6, 9, 3)
    assert 0.0 <= metrics["val_accuracy_initial"] <= 1.0 and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert processes_mentioning(str(ppm_out)) == []

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    policy = AutoModelForCausalLM.from_pretrained(sft_out / "model")
    assert policy.get_input_embeddings().weight.shape[0] > 0
    ppm_model = AutoModelForSequenceClassification.from_pretrained(ppm_out / "model")
    assert ppm_model.config.num_labels == 1
    # only rank 0 wrote: one log folder, one checkpoint, no stray files of a second writer
    for out in (sft_out, ppm_out):
        assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "logs", "metrics.json", "model"]
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]


def fail_in_training_step(module: Any, when: Any, message: str) -> None:
    """Make ``module``'s training step raise ``RuntimeError(message)`` whenever ``when(batch_idx)`` is true."""
    step = module.training_step

    def failing(batch: Any, batch_idx: int) -> Any:
        if when(batch_idx):
            raise RuntimeError(message)
        return step(batch, batch_idx)

    module.training_step = failing


class FailingSFT(SFTTrainer):
    """Rank 1 raises in its second training step (to test that rank 0 notices and says so)."""

    def _train_and_save(self, module: Any, *args: Any, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK") == "1":
            fail_in_training_step(module, lambda batch_idx: batch_idx == 1, "injected failure on rank 1")
        super()._train_and_save(module, *args, **kwargs)


@pytest.mark.slow
@needs_proc
def test_a_failing_worker_fails_the_run_naming_it(tmp_path: Path) -> None:
    tiny = build_tiny_llama(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q: 1 + 1?\n", "response": "x = 2<end_of_step>"}] * 8)
    out = tmp_path / "out"
    code = (
        "import sys; from pathlib import Path; from rstar.errors import RstarError; "
        "from test_trainers_distributed import FailingSFT, TRAIN\n"
        "trainer = FailingSFT(FailingSFT.Options(**TRAIN, strategy='ddp', devices=2))\n"
        "try:\n"
        f"    trainer.fit(Path({str(data)!r}), {str(tiny)!r}, Path({str(out)!r}))\n"
        "except RstarError as exc:\n"
        "    print('RSTAR ERROR:', exc); sys.exit(2)\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RSTAR ERROR: trainer: training worker rank 1" in done.stdout
    assert "injected failure on rank 1" in done.stderr  # the worker's own traceback is shown
    assert not (out / "model").exists()
    assert processes_mentioning(str(out)) == []


class CrashAtStep2(SFTTrainer):
    """Every rank raises once 2 optimizer steps are done (after ``checkpoint_every_n_steps: 2`` wrote last.ckpt)."""

    def _train_and_save(self, module: Any, *args: Any, **kwargs: Any) -> None:
        fail_in_training_step(module, lambda _: module.trainer.global_step == 2, "injected crash after step 2")
        super()._train_and_save(module, *args, **kwargs)


def weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def shared_prefix(model: Path, data: Path) -> int:
    """The shared prefix of the first two SFT examples of ``data`` (all of them fit ``TRAIN``'s max_length)."""
    from rstar_lightning import sft

    tok = load_tokenizer(str(model), SFTOptions())
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    examples = [sft.make_example(tok, r["prompt"], r["response"]) for r in rows]
    assert max(len(ids) for ids, _ in examples) <= TRAIN["max_length"]
    return _prefix.shared_length(**sft.collate(examples[:2], tok.pad_token_id))


@pytest.mark.slow
@needs_proc
def test_fsdp_on_two_cpu_processes_matches_ddp_and_resumes(tmp_path: Path) -> None:
    """FSDP (full shard, gloo) trains exactly what DDP trains; a crashed FSDP run resumes from its checkpoint.

    The same data, seed and optimizer on 2 ranks give the same weights whether the model is replicated
    (ddp) or sharded (fsdp): this checks the sharded optimizer step (weight decay included: under FSDP
    every parameter is a flat 1-D shard), the gathering of the full state dict for ``save_pretrained``,
    and, through the crash after step 2 and the resumed run, the full checkpoint (model and optimizer
    state gathered to rank 0, then sharded again on loading).
    """
    import torch

    tiny = build_tiny_llama(tmp_path / "tiny")
    # every text starts with the same few-shot part (42 tokens): both strategies run it once per batch
    few_shot = "Q: 2 + 2?\nx = 2 + 2\nprint(x)<end_of_step>\nQ: 1 + 5?\nx = 1 + 5\n"
    sft_data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"prompt": f"{few_shot}Q: {i} + {i}?\n", "response": f"x = {i} + {i}<end_of_step>"} for i in range(8)],
    )
    pair_data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": f"{few_shot}Q: {i} * 3?\n", "pos": f"x = {i} * 3<end_of_step>", "neg": f"x = {i}<end_of_step>"}
            for i in range(8)
        ],
    )
    assert shared_prefix(tiny, sft_data) >= _prefix.MIN_SHARED_PREFIX
    recipe = write_recipe(tmp_path)
    sft = ["train", "sft", str(recipe), "--data", str(sft_data), "--init", str(tiny)]

    done = run([*rstar_command(), *sft, *(f"train_sft.{o}" for o in DDP), "--out", str(tmp_path / "ddp")], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # fsdp: crash after step 2 (last.ckpt written at step 2), then the same command again resumes
    out = tmp_path / "fsdp"
    options = {**TRAIN, "strategy": "fsdp", "devices": 2, "checkpoint_every_n_steps": 2}
    code = (
        "from pathlib import Path; from test_trainers_distributed import CrashAtStep2\n"
        f"trainer = CrashAtStep2(CrashAtStep2.Options(**{options!r}))\n"
        f"trainer.fit(Path({str(sft_data)!r}), {str(tiny)!r}, Path({str(out)!r}))\n"
    )
    crashed = run_python(code, tmp_path)
    assert crashed.returncode != 0 and "injected crash after step 2" in crashed.stderr, crashed.stderr[-3000:]
    assert not (out / "model").exists() and processes_mentioning(str(out)) == []
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    full = {k: v.shape for k, v in checkpoint["state_dict"].items()}  # gathered whole, not shards
    assert (
        full["model.model.embed_tokens.weight"]
        == weights(tmp_path / "ddp" / "model")["model.embed_tokens.weight"].shape
    )
    assert sorted(checkpoint["optimizer_states"][0]["state"]) == list(range(len(full)))  # standard layout

    fsdp = [
        *(f"train_sft.{o}" for o in ("strategy=fsdp", "devices=2", "checkpoint_every_n_steps=2")),
        "--out",
        str(out),
    ]
    done = run([*rstar_command(), *sft, *fsdp], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["steps"], metrics["resumed_from_step"]) == (2, 4, 2)
    assert_same_weights(weights(out / "model"), weights(tmp_path / "ddp" / "model"))
    assert processes_mentioning(str(out)) == []

    # the PPM trainer (a sequence-classification model) under both strategies, from the same SFT model
    ppm = ["train", "ppm", str(recipe), "--data", str(pair_data), "--init", str(out / "model")]
    for strategy in ("ddp", "fsdp"):
        args = [
            *ppm,
            f"train_ppm.strategy={strategy}",
            "train_ppm.devices=2",
            "--out",
            str(tmp_path / f"ppm_{strategy}"),
        ]
        done = run([*rstar_command(), *args], tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "ppm_fsdp" / "model"), weights(tmp_path / "ppm_ddp" / "model"))
    ppm_metrics = json.loads((tmp_path / "ppm_fsdp" / "metrics.json").read_text())
    assert ppm_metrics["world_size"] == 2 and 0.0 <= ppm_metrics["val_accuracy"] <= 1.0


@pytest.mark.gpu
@pytest.mark.slow
@needs_proc
def test_sft_with_fsdp_on_gpus(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    devices = min(2, torch.cuda.device_count())
    tiny = build_tiny_llama(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q: 1 + 1?\n", "response": "x = 2<end_of_step>"}] * 8)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    options = ["train_sft.strategy=fsdp", f"train_sft.devices={devices}", "train_sft.accelerator=gpu"]
    args = ["train", "sft", str(recipe), *options, "--data", str(data), "--init", str(tiny), "--out", str(out)]
    done = run([sys.executable, "-m", "rstar.cli", *args], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["steps"]) == (devices, 2 * 4 // devices)  # 8 examples, batch 2, 2 epochs
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model").config.pad_token_id is not None
    assert processes_mentioning(str(out)) == []
