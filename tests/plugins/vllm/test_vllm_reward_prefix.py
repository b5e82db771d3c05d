"""The ``vllm`` reward model and vLLM's prefix cache, against a fake ``vllm`` module (a test fake injected into
``sys.modules``) whose engine keeps a prefix cache of whole blocks: texts are sent sorted so parents come before
their children and shared prefixes are adjacent, results come back in the caller's order, and
``tokens_computed`` counts the tokens read less those the engine found cached. The real engine:
``test_vllm_reward_prefix_real.py``."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest
from fakes.vllm_reward import FakeVLLM
from rstar_vllm.reward import VLLMRewardModel, VLLMRewardOptions, computed_tokens, engine_prefix_caching

from rstar.types import RewardRequest

BLOCK = 4
"""The fake engine's block size: only whole blocks are found in its cache, as in vLLM."""


class FakeCachingVLLM(FakeVLLM):
    """Test fake of ``vllm`` whose outputs say how many leading tokens (whole blocks, at most all but the last
    token) an earlier request, or one before it in the same call, had in common with them."""

    def __init__(self, prefix_caching: bool | None = True) -> None:
        super().__init__()
        self.prefix_caching = prefix_caching
        self.seen: list[list[int]] = []

    def module(self) -> types.ModuleType:
        mod = super().module()
        fake, classify, init = self, mod.LLM.classify, mod.LLM.__init__  # type: ignore[attr-defined]

        def cached_init(engine: Any, **kwargs: Any) -> None:
            init(engine, **kwargs)
            cache_config = types.SimpleNamespace(enable_prefix_caching=fake.prefix_caching)
            engine.llm_engine.vllm_config = types.SimpleNamespace(cache_config=cache_config)

        def cached_classify(engine: Any, prompts: list[Any], **kwargs: Any) -> list[Any]:
            outputs: list[Any] = classify(engine, prompts, **kwargs)
            for out in outputs:
                ids = out.prompt_token_ids
                common = max((_common(ids, s) for s in fake.seen), default=0)
                out.num_cached_tokens = min(common, len(ids) - 1) // BLOCK * BLOCK
                fake.seen.append(ids)
            return outputs

        mod.LLM.__init__ = cached_init  # type: ignore[attr-defined]
        mod.LLM.classify = cached_classify  # type: ignore[attr-defined]
        return mod


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeCachingVLLM:
    fake = FakeCachingVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    return fake


def make() -> VLLMRewardModel:
    return VLLMRewardModel(VLLMRewardOptions(model="some/model", transform="identity"))


PROMPT = "Question: what is 12 * 7?\n<code>\n"
PARENT = "x = 12 * 7<end_of_step>"
CHILDREN = ["\nprint(x)<end_of_code>", "\ny = x<end_of_step>", "\n# the product<end_of_step>"]


def test_texts_go_sorted_and_come_back_in_order(fake_vllm: FakeCachingVLLM) -> None:
    model = make()
    solutions = [PARENT + CHILDREN[1], "z = 0<end_of_step>", PARENT, PARENT + CHILDREN[0]]
    pairs = model.score_with_tokens_sync([RewardRequest(PROMPT, s) for s in solutions])
    [(prompts, _)] = fake_vllm.calls
    assert prompts == sorted(PROMPT + s for s in solutions)  # the parent right before its children
    assert prompts.index(PROMPT + PARENT) < prompts.index(PROMPT + PARENT + CHILDREN[0])
    # in the caller's order: the fake's raw score is the characters read (+ BOS) - 10, + 0.5 after a '>'
    assert pairs == [(1 + len(PROMPT + s) - 10 + 0.5, 1 + len(PROMPT + s)) for s in solutions]


def test_a_child_after_its_parent_computes_about_its_new_tokens(fake_vllm: FakeCachingVLLM) -> None:
    model = make()
    assert model.prefix_caching is True and model.tokens_computed == 0
    [(_, parent)] = model.score_with_tokens_sync([RewardRequest(PROMPT, PARENT)])
    assert model.tokens_computed == parent  # nothing cached yet
    pairs = model.score_with_tokens_sync([RewardRequest(PROMPT, PARENT + c) for c in CHILDREN])
    read = sum(n for _, n in pairs)
    cached = parent // BLOCK * BLOCK  # the parent's whole blocks, for each child
    assert model.tokens_computed - parent == read - len(CHILDREN) * cached
    assert model.stats()["prefix_cache_hit_rate"] == pytest.approx(len(CHILDREN) * cached / (parent + read), abs=1e-4)


def test_outputs_without_cache_counts_compute_every_token_read() -> None:
    assert computed_tokens(types.SimpleNamespace(prompt_token_ids=[1, 2, 3])) == 3
    assert computed_tokens(types.SimpleNamespace(prompt_token_ids=[1, 2, 3], num_cached_tokens=2)) == 1
    assert computed_tokens(types.SimpleNamespace(prompt_token_ids=[1, 2, 3], num_cached_tokens=None)) == 3


def test_an_engine_without_prefix_caching_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", FakeCachingVLLM(prefix_caching=False).module())
    with caplog.at_level(logging.WARNING, logger="rstar_vllm.reward"):
        model = make()
    assert model.prefix_caching is False and "does not cache prefixes" in caplog.text
    assert engine_prefix_caching(types.SimpleNamespace()) is None  # an engine that does not say
