"""``recipes/rstar_math.yaml``, the paper's four rounds, run end to end in miniature on CPU.

The recipe itself needs vLLM on GPUs. Here command-line style overrides swap only what cannot run on
this machine -- the vLLM policy and PPM (for the scripted ``adder`` world and the ``hf`` reward model),
the 7B base model (for a tiny random Llama), bf16 on eight GPUs (for float32 FSDP in one CPU process), the
problem files and the sizes -- and keep everything else the recipe says: four rounds, the bootstrap prompt of round 1,
terminal-guided search in rounds 1-2, PPM-augmented search from the previous round's PPM in rounds 3-4,
the extra rollouts for unsolved problems in round 4, SFT from the base model and the PPM from the
round's SFT model in every round, and both evaluation runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import REPO, adder_problems

from rstar.config import load_recipe
from rstar.plugins import get_plugin_manager
from rstar.registry import get_registry
from rstar.rundir import DONE, read_trees
from rstar.runner import Runner

pytest.importorskip("lightning")
pytest.importorskip("transformers")

RECIPE = REPO / "recipes" / "rstar_math.yaml"
SCRIPTED = '{name: scripted, fn: "rstar.testing.worlds:adder"}'
TRAIN = (
    "{epochs: 1, lr: 1.0e-3, batch_size: 4, grad_accum: 1, max_length: 256, precision: 32-true, "
    "strategy: fsdp, accelerator: cpu, devices: 1}"
)


def miniature(tmp_path: Path, base: Path, problems: Path) -> list[str]:
    """The overrides that make the paper's recipe run here."""
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "max_in_flight=8",
        "max_batch=256",
        f"base_model={base}",
        f"dataset.path={problems}",
        f"evaluate.dataset={{name: jsonl, path: {problems}}}",
        f"policy={SCRIPTED}",
        "verifier.max_workers=2",
        "answer_checker.workers=1",
        "search.expand_samples=3",
        "budget={samples: 4, max_step_tokens: 256, max_depth: 4}",
        "extract.min_edit_distance=0",  # the adder world's right and wrong steps differ by one character
        f"train_sft={{name: sft, {TRAIN[1:]}",
        f"train_ppm={{name: ppm, {TRAIN[1:]}",
        f"evaluate.runs.greedy.policy={SCRIPTED}",
        f"evaluate.runs.mcts_ppm.policy={SCRIPTED}",
        'evaluate.runs.mcts_ppm.reward_model={name: hf, model: "@round.ppm"}',
        "evaluate.runs.mcts_ppm.search.expand_samples=3",
        "evaluate.runs.mcts_ppm.budget.samples=2",
        "rounds.0.budget.samples=3",
        "rounds.3.budget={samples: 1}",  # one rollout leaves problems for the extra rollouts to solve
        "rounds.3.search_unsolved.budget.samples=4",
        "rounds.3.search_unsolved.search.expand_samples=3",
    ]
    for k in range(4):
        overrides.append(f"rounds.{k}.policy={SCRIPTED}")
    for k in (2, 3):
        overrides.append(f'rounds.{k}.reward_model={{name: hf, model: "@previous.ppm"}}')
    return overrides


@pytest.mark.slow
def test_the_papers_four_rounds_run_end_to_end_in_miniature(tmp_path):
    from rstar.testing.models import build_tiny_llama

    base = build_tiny_llama(tmp_path / "base", context=512)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in adder_problems(6)))
    recipe = load_recipe(RECIPE, miniature(tmp_path, base, problems))
    assert recipe["rounds"][0]["step_format"] == {"prompt": "bootstrap", "few_shot": 2}  # kept from the recipe

    results = Runner(recipe, get_registry(), get_plugin_manager()).run()
    run = tmp_path / "run"
    stages = ["search", "extract", "train_sft", "train_ppm", "evaluate"]
    expected = [(k, s) for k in (1, 2, 3) for s in stages]
    expected += [(4, s) for s in ["search", "search_unsolved", *stages[1:]]]
    assert [(r.round, r.name) for r in results] == expected
    for k in (1, 2, 3, 4):
        folder = run / f"round_{k}"
        assert all((folder / name / DONE).exists() for _, name in expected if _ == k)
        trees = read_trees(folder / "search" / "trees.jsonl")
        assert len(trees) == 6
        guided = [t.usage.reward_calls > 0 for t in trees.values()]
        assert all(guided) if k >= 3 else not any(guided), f"round {k}: PPM-augmented only in rounds 3-4"
        assert (folder / "extract" / "sft.jsonl").read_text().strip()
        sft = json.loads((folder / "train_sft" / "summary.json").read_text())
        ppm = json.loads((folder / "train_ppm" / "summary.json").read_text())
        assert sft["init_model"] == str(base)  # every round's policy is fine-tuned from the base model
        assert ppm["init_model"] == str(folder / "train_sft" / "model")
        for trainer in ("train_sft", "train_ppm"):  # the recipe's FSDP, here in one CPU process
            trained = json.loads((folder / trainer / "model" / "rstar_trained.json").read_text())
            assert trained["options"]["strategy"] == "fsdp"
        for label in ("greedy", "mcts_ppm"):
            assert len(read_trees(folder / "evaluate" / label / "trees.jsonl")) == 6
    # round 3 searched with round 2's PPM, round 4 with round 3's
    for k in (3, 4):
        summary = json.loads((run / f"round_{k}" / "search" / "summary.json").read_text())
        assert summary["models"]["reward_model"] == str(run / f"round_{k - 1}" / "train_ppm" / "model")
    # round 4's extra rollouts searched exactly the problems its search left unsolved
    searched = read_trees(run / "round_4" / "search" / "trees.jsonl")
    unsolved = {i for i, t in searched.items() if not any(n.correct for n in t.nodes)}
    assert unsolved and set(read_trees(run / "round_4" / "search_unsolved" / "trees.jsonl")) == unsolved
    report = (run / "report.md").read_text()
    assert all(f"| {k} |" in report for k in (1, 2, 3, 4))
