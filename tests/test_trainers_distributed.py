"""``strategy: ddp`` with two CPU processes (gloo): `rstar train sft|ppm` as a command, on a tiny random Llama.

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

from rstar_lightning.sft import SFTTrainer

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


class FailingSFT(SFTTrainer):
    """Rank 1 raises in its second training step (to test that rank 0 notices and says so)."""

    def _train_and_save(self, module: Any, *args: Any, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK") == "1":
            step = module.training_step

            def failing(batch: Any, batch_idx: int) -> Any:
                if batch_idx == 1:
                    raise RuntimeError("injected failure on rank 1")
                return step(batch, batch_idx)

            module.training_step = failing
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
    env_path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": env_path, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RSTAR ERROR: trainer: training worker rank 1" in done.stdout
    assert "injected failure on rank 1" in done.stderr  # the worker's own traceback is shown
    assert not (out / "model").exists()
    assert processes_mentioning(str(out)) == []


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
