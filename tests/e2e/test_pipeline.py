"""The whole self-evolution loop through `rstar run`: two rounds of search -> extract -> train SFT ->
train PPM -> evaluate, with the real verifier, checker, extraction, Lightning trainers and `hf` reward
model. The policy is the scripted ``adder`` world (a tiny random model would solve nothing, so there
would be no data); the trained models are tiny random Llamas (`rstar.testing.models`).

Also: killing `rstar run` in the middle of a stage and running the same command again resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import adder_problems

from rstar.errors import ConfigError
from rstar.plugins import get_plugin_manager
from rstar.registry import get_registry
from rstar.rundir import DONE, read_trees
from rstar.runner import Runner

pytest.importorskip("lightning")
pytest.importorskip("transformers")

STAGES = ["search", "extract", "train_sft", "train_ppm", "evaluate"]
TRAIN = {"epochs": 1, "lr": 1e-3, "batch_size": 4, "max_length": 256, "accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rstar.testing.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("base"), context=512)


def pipeline_recipe(tmp_path: Path, problems: Path, base: Path, **extra: object) -> dict:
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "dataset": {"name": "jsonl", "path": str(problems)},
        "step_format": {"prompt": "sft", "few_shot": 0},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "answer_checker": {"name": "math_verify"},
        "search": {"name": "mcts", "expand_samples": 3},
        "budget": {"samples": 4, "max_depth": 4},
        "base_model": str(base),
        # the adder world's right and wrong first steps differ by one character ("+" / "-")
        "extract": {"min_edit_distance": 0},
        "train_sft": {"name": "sft", **TRAIN},
        "train_ppm": {"name": "ppm", **TRAIN},
        "evaluate": {
            "runs": {
                "greedy": {"search": {"name": "greedy"}, "budget": {"samples": 1}, "reward_model": {"name": "none"}},
                "mcts_ppm": {
                    "search": {"name": "mcts", "mode": "test"},
                    "reward_model": {"name": "hf", "model": "@round.ppm"},
                },
            }
        },
        "stages": STAGES,
        "rounds": [{}, {"reward_model": {"name": "hf", "model": "@previous.ppm"}}],
    }
    recipe.update(extra)
    return recipe


def test_two_rounds_end_to_end(tmp_path, adder_jsonl, tiny_base):
    runner = Runner(pipeline_recipe(tmp_path, adder_jsonl, tiny_base), get_registry(), get_plugin_manager())
    results = runner.run()
    run = tmp_path / "run"
    assert [(r.round, r.name) for r in results] == [(k, s) for k in (1, 2) for s in STAGES]
    for k in (1, 2):
        folder = run / f"round_{k}"
        assert all((folder / s / DONE).exists() for s in STAGES)
        sft = [json.loads(line) for line in (folder / "extract" / "sft.jsonl").read_text().splitlines()]
        pairs = [json.loads(line) for line in (folder / "extract" / "pairs.jsonl").read_text().splitlines()]
        assert sft and pairs
        assert all(r["prompt"].startswith("<|user|>:\n") and "\\boxed{" in r["response"] for r in sft)
        sft_model = folder / "train_sft" / "model"
        ppm_model = folder / "train_ppm" / "model"
        assert (sft_model / "config.json").is_file() and (ppm_model / "config.json").is_file()
        ppm_config = json.loads((ppm_model / "config.json").read_text())
        assert ppm_config.get("num_labels", len(ppm_config.get("id2label", {}))) == 1
        assert "rstar_reward" in ppm_config
        summary = json.loads((folder / "train_ppm" / "summary.json").read_text())
        assert summary["init_model"] == str(sft_model)  # the PPM starts from the round's SFT model
        assert json.loads((folder / "train_sft" / "summary.json").read_text())["init_model"] == str(tiny_base)
        for label in ("greedy", "mcts_ppm"):
            trees = read_trees(folder / "evaluate" / label / "trees.jsonl")
            assert len(trees) == 6
        # the PPM scored the evaluation's MCTS: values other than the terminal +-1 appear
        mcts = read_trees(folder / "evaluate" / "mcts_ppm" / "trees.jsonl")
        assert all(t.usage.reward_calls > 0 for t in mcts.values())
    # round 2's search was guided by round 1's PPM (PPM-initialised values), round 1's was not
    r1 = read_trees(run / "round_1" / "search" / "trees.jsonl")
    r2 = read_trees(run / "round_2" / "search" / "trees.jsonl")
    assert all(t.usage.reward_calls == 0 for t in r1.values())
    assert all(t.usage.reward_calls > 0 for t in r2.values())
    # round 0: the base policy, evaluated before round 1's models; a run that needs a trained PPM has no round 0
    base = run / "round_0" / "evaluate"
    assert (base / DONE).exists() and len(read_trees(base / "greedy" / "trees.jsonl")) == 6
    assert not (base / "mcts_ppm").exists()
    report = (run / "report.md").read_text()
    assert "| 0 |" in report and "| 1 |" in report and "| 2 |" in report and "eval: mcts_ppm" in report
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run does nothing
    again = Runner(pipeline_recipe(tmp_path, adder_jsonl, tiny_base), get_registry(), get_plugin_manager()).run()
    assert all(r.skipped for r in again)


def test_a_marker_for_a_stage_that_has_not_run_is_an_error(tmp_path, adder_jsonl, tiny_base):
    recipe = pipeline_recipe(tmp_path, adder_jsonl, tiny_base, stages=["search"])
    recipe["rounds"] = [{"reward_model": {"name": "hf", "model": "@round.ppm"}}]
    with pytest.raises(ConfigError, match="train_ppm stage has not written yet"):
        Runner(recipe, get_registry(), get_plugin_manager()).run()
    recipe["rounds"] = [{"reward_model": {"name": "hf", "model": "@previous.ppm"}}]
    recipe["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(ConfigError, match="round 1 has no previous round"):
        Runner(recipe, get_registry(), get_plugin_manager()).run()


def test_validation_names_missing_sections_and_bad_derived_runs(tmp_path, adder_jsonl, tiny_base):
    from rstar.config import check_recipe

    recipe = pipeline_recipe(tmp_path, adder_jsonl, tiny_base)
    del recipe["train_ppm"]
    recipe["evaluate"]["runs"]["greedy"]["search"] = {"name": "greedy", "temprature": 0}
    recipe["extract"] = {"sft_top": 3}
    problems = check_recipe(recipe, get_registry())
    text = "\n".join(problems)
    assert "stage 'train_ppm' needs a top-level 'train_ppm' section" in text
    assert "evaluate.runs.greedy.search.temprature: unknown key" in text
    assert "extract.sft_top: unknown key" in text


# --- kill and resume ---------------------------------------------------------------------------------


def _start(recipe_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rstar.cli", "run", str(recipe_path)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen[bytes], condition, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_in_the_middle_of_stages_and_resumed(tmp_path, write_recipe, tiny_base):
    problems = tmp_path / "adds.jsonl"
    problems.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in adder_problems(24)))
    recipe = pipeline_recipe(tmp_path, problems, tiny_base, max_in_flight=2, rounds=1)
    # every program forked (not run inline): a search slow enough for the kill to land inside it
    recipe["verifier"] = {**recipe["verifier"], "inline": False}
    # many small optimizer steps with a checkpoint after each, so that the kill lands inside training
    recipe["train_sft"] = {**recipe["train_sft"], "batch_size": 1, "epochs": 3, "checkpoint_every_n_steps": 1}
    path = write_recipe(recipe)
    run = tmp_path / "run" / "round_1"
    trees_file = run / "search" / "trees.jsonl"

    # 1. killed during the search, after some problems finished
    proc = _start(path, tmp_path)
    _kill_when(proc, lambda: trees_file.exists() and len(trees_file.read_text().splitlines()) >= 6)
    before = trees_file.read_text().splitlines()
    assert 6 <= len(before) < 24 and not (run / "search" / DONE).exists()

    # 2. resumed, then killed during SFT training, after a checkpoint was written
    ckpt = run / "train_sft" / "checkpoints" / "last.ckpt"
    proc = _start(path, tmp_path)
    _kill_when(proc, ckpt.exists)
    after = trees_file.read_text().splitlines()
    assert after[: len(before)] == before  # finished problems were kept, not searched again
    assert len(after) == 24 and len({json.loads(line)["id"] for line in after}) == 24
    assert (run / "search" / DONE).exists() and (run / "extract" / DONE).exists()
    assert not (run / "train_sft" / DONE).exists()

    # 3. resumed to the end: training continued from the checkpoint
    proc = _start(path, tmp_path)
    assert proc.wait(timeout=600) == 0
    assert all((run / s / DONE).exists() for s in STAGES)
    metrics = json.loads((run / "train_sft" / "metrics.json").read_text())
    assert metrics.get("resumed_from") or metrics.get("resumed")


def test_round_0_evaluates_the_base_model_with_the_base_format(tmp_path, tiny_base):
    """Round 0's runs: @round.sft / @previous.sft stand for the base model, the step format is round 1's (the one
    the base model is searched with), and runs that need a trained PPM are left out."""
    from rstar_pipeline.stages import base_runs

    from rstar.runner import StageRun

    recipe = pipeline_recipe(tmp_path, tmp_path / "p.jsonl", tiny_base)
    recipe["policy"] = {"name": "hf", "model": "base-model-on-the-hub"}
    recipe["evaluate"]["runs"]["greedy"]["policy"] = {"model": "@round.sft"}
    recipe["evaluate"]["runs"]["greedy"]["step_format"] = {"prompt": "sft", "few_shot": 0}
    recipe["rounds"] = [{"step_format": {"prompt": "bootstrap", "few_shot": 1}}, {}]
    runner = Runner(recipe, get_registry(), get_plugin_manager())
    ctx = StageRun(runner, runner.validated.round(1), 1, tmp_path / "run" / "round_1" / "evaluate")
    runs = base_runs(ctx)
    assert list(runs) == ["greedy"]  # mcts_ppm needs @round.ppm
    greedy = runs["greedy"]
    assert greedy.require("policy").options.model == str(tiny_base)  # base_model, not the top-level policy's
    assert greedy.options.step_format.prompt == "bootstrap" and greedy.options.step_format.few_shot == 1


def test_extraction_renders_the_trained_models_format_not_the_rounds(tmp_path, adder_jsonl, tiny_base):
    """A round that overrides step_format (the bootstrap round's few-shot prompt) searches with it, but its
    data is rendered with the top-level step_format, the one the trained models are searched with."""
    from rstar.steps import StepFormat

    recipe = pipeline_recipe(tmp_path, adder_jsonl, tiny_base, stages=["search", "extract"])
    recipe["rounds"] = [{"step_format": {"prompt": "bootstrap", "few_shot": 1}}]
    Runner(recipe, get_registry(), get_plugin_manager()).run()
    extracted = tmp_path / "run" / "round_1" / "extract"
    records = [json.loads(line) for line in (extracted / "sft.jsonl").read_text().splitlines()]
    trees = read_trees(tmp_path / "run" / "round_1" / "search" / "trees.jsonl")
    sft, bootstrap = StepFormat.from_options("sft", 0), StepFormat.from_options("bootstrap", 1)
    assert records and all(r["prompt"] == sft.render_prompt(trees[r["id"]].question) for r in records)
    assert all(not r["prompt"].startswith(bootstrap.render_prompt("")[:40]) for r in records)
