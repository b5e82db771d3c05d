"""The ``vllm`` reward model on the real engine (vLLM's CPU build: scripts/setup-vllm.sh): a node's children, scored
after it, are found in vLLM's prefix cache, so ``tokens_computed`` stays below the tokens read.

Run with ``.venv-vllm/bin/python -m pytest -m vllm tests/plugins/vllm/test_vllm_reward_prefix_real.py`` (about a
minute on 2 cores). The PPM is a tiny random Llama (head size 32, which vLLM's CPU attention supports), built here;
the engine runs in a child Python, as vLLM's engine process needs its caller to be a ``__main__`` script.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import in_session

pytestmark = pytest.mark.vllm

vllm = pytest.importorskip("vllm", reason="needs the vLLM engine: scripts/setup-vllm.sh")
if not hasattr(vllm, "LLM"):  # a fake module left by another test
    pytest.skip("a fake vllm module is installed", allow_module_level=True)

TIMEOUT_S = 600
BLOCK = 128
"""vLLM's block size on the CPU: only whole blocks are cached, so a parent must be longer than one."""

EXAMPLE = (
    "question: what is the value of {a} * {b}?\n<code>\n# first, the product\nx = {a} * {b}\n<end_of_step>\n"
    "# then print it\nprint(x)\n<end_of_code>\n<output>{c}</output>\nthe answer is \\boxed{{{c}}}.\n"
)
PROMPT = "".join(EXAMPLE.format(a=a, b=b, c=a * b) for a, b in ((12, 7), (3, 4), (6, 9))) + "question: 2 + 3?\n"
PARENT = "<code>\n# first, the sum\nx = 2 + 3\n<end_of_step>\n"
CHILDREN = ["# then print it\nprint(x)\n<end_of_code>", "# print the double\nprint(2 * x)\n<end_of_code>"]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from rstar.registry import get_registry
    from rstar.types import RewardRequest

    def main(ppm, prompt, parent, children):
        spec = {"name": "vllm", "model": ppm, "dtype": "float32", "max_model_len": 1024, "transform": "identity",
                "engine_kwargs": {"enforce_eager": True}}
        model = get_registry().build("reward_model", spec)
        calls = []
        for batch in ([parent], [parent + c for c in children]):  # the parent in a call before its children
            before = model.tokens_computed
            pairs = model.score_with_tokens_sync([RewardRequest(prompt, s) for s in batch])
            calls.append({"read": [n for _, n in pairs], "computed": model.tokens_computed - before})
        print("COUNTS " + json.dumps({"calls": calls, "prefix_caching": model.prefix_caching}))
        model.close()

    if __name__ == "__main__":
        main(sys.argv[1], *json.loads(sys.argv[2]))
    """
)


@pytest.fixture(scope="module")
def ppm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random one-label Llama classifier whose tokenizer knows the texts scored here."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rstar.testing.models import CORPUS, build_tiny_llama

    folder = tmp_path_factory.mktemp("ppm")
    lm = build_tiny_llama(folder / "lm", corpus=(*CORPUS, PROMPT, PARENT, *CHILDREN))
    tokenizer = AutoTokenizer.from_pretrained(lm)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_children_scored_after_their_parent_are_found_in_the_prefix_cache(tmp_path: Path, ppm: Path) -> None:
    script = tmp_path / "prefix.py"
    script.write_text(SCRIPT)
    proc = in_session(sys.executable, str(script), str(ppm), json.dumps([PROMPT, PARENT, CHILDREN]), timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("COUNTS "))
    counts = json.loads(line[len("COUNTS ") :])
    assert counts["prefix_caching"] is True  # vLLM's default for a causal model pooled at its last token
    parent, children = counts["calls"]
    [parent_tokens] = parent["read"]
    assert parent_tokens > BLOCK
    assert parent["computed"] == parent_tokens  # a cold cache
    # each child finds at least its parent's whole blocks
    assert 0 < children["computed"] <= sum(children["read"]) - len(CHILDREN) * (parent_tokens // BLOCK * BLOCK)
