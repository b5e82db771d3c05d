"""Training on several machines (``num_nodes``): two "nodes" on this machine, each an ``rstar train sft`` command
with its ``NODE_RANK``, meeting over localhost (gloo), train what one process trains.

The data are 8 copies of one example, so a batch's gradient is the same whichever examples it holds: one process
with batches of 4 and two nodes with batches of 2 each (a global batch of 4, gradients averaged over the nodes)
take the same optimizer steps, and their weights agree to the tolerance of the DDP/FSDP test (1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("torch")

from lightning.fabric.plugins.environments.lightning import find_free_network_port
from rstar_lightning._launch import check_nodes
from rstar_lightning.options import SFTOptions
from test_trainers_distributed import (
    TIMEOUT_S,
    assert_same_weights,
    needs_proc,
    processes_mentioning,
    rstar_command,
    weights,
    write_jsonl,
    write_recipe,
)

from rstar.errors import ConfigError
from rstar.testing.models import build_tiny_llama

NODE_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@pytest.fixture
def bare_environment(monkeypatch):
    for key in NODE_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_several_nodes_need_the_rendezvous_in_the_environment(bare_environment):
    check_nodes(SFTOptions(num_nodes=1))  # one machine: nothing to ask
    with pytest.raises(ConfigError, match=r"num_nodes=2: set MASTER_ADDR, MASTER_PORT, NODE_RANK in the environment"):
        check_nodes(SFTOptions(num_nodes=2))
    bare_environment.setenv("MASTER_ADDR", "10.0.0.1")
    bare_environment.setenv("MASTER_PORT", "29500")
    bare_environment.setenv("NODE_RANK", "2")
    with pytest.raises(ConfigError, match=r"NODE_RANK=2 is not one of 0 to 1"):
        check_nodes(SFTOptions(num_nodes=2))
    bare_environment.setenv("NODE_RANK", "1")
    check_nodes(SFTOptions(num_nodes=2))


@pytest.mark.slow
@needs_proc
def test_two_nodes_over_localhost_train_what_one_process_trains(tmp_path: Path) -> None:
    tiny = build_tiny_llama(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q: 12 * 7?\n", "response": "x = 12 * 7<end_of_step>"}] * 8)
    recipe = write_recipe(tmp_path)
    train = [*rstar_command(), "train", "sft", str(recipe), "--data", str(data), "--init", str(tiny)]
    env = {**{k: v for k, v in os.environ.items() if k not in NODE_ENV}, "OMP_NUM_THREADS": "1"}

    one = tmp_path / "one"
    done = subprocess.run(
        [*train, "train_sft.batch_size=4", "--out", str(one)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    two = tmp_path / "two"  # one folder, as on a shared file system: only node 0 writes
    nodes = ["train_sft.num_nodes=2", "train_sft.strategy=ddp", "train_sft.devices=1", "train_sft.batch_size=2"]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_network_port())}
    procs = [
        subprocess.Popen(
            [*train, *nodes, "--out", str(two)],
            cwd=tmp_path,
            env={**env, **rendezvous, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, output) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {rank}:\n{output[-3000:]}"

    metrics = {name: json.loads((run / "metrics.json").read_text()) for name, run in (("one", one), ("two", two))}
    assert (metrics["one"]["world_size"], metrics["two"]["world_size"]) == (1, 2)
    assert metrics["one"]["steps"] == metrics["two"]["steps"] == 4  # 8 examples, a global batch of 4, 2 epochs
    assert_same_weights(weights(two / "model"), weights(one / "model"))
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "logs", "metrics.json", "model"]
    assert processes_mentioning(str(two)) == []
