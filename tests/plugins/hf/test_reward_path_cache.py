"""Path caching in the ``hf`` reward model: a child step is scored by running only its new tokens on top of its
parent's stored keys and values, as a tree search scores it (the parent in an earlier call), with the same scores
as without any cache; ``tokens_computed`` counts what ran; the cache (`rstar_hf.kv.PathCache`) stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from rstar_hf.kv import KV, PathCache, PrefixCache
from rstar_hf.reward import HFRewardModel, HFRewardOptions

from rstar.reward import reward_text
from rstar.testing.models import CORPUS, build_tiny_llama
from rstar.types import RewardRequest

PROMPT = "question: what is the value of 12 * 7? answer with code.\n<code>\n"
STEPS = [
    "# first, the product\nx = 12 * 7\n<end_of_step>",
    "# then print it\nprint(x)\n<end_of_code>\n<output>84</output>",
    "# the answer is 84.\n<end_of_step>",
]
"""A path of three steps (lower case: the tiny tokenizer knows the characters of its corpus)."""

SIBLINGS = ["\ny = x + 1<end_of_step>", "\nprint(x * 2)<end_of_step>", "\n# done<end_of_step>"]


@pytest.fixture(scope="module")
def ppm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random one-label classifier with room for a few steps (512 positions)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    lm = build_tiny_llama(tmp_path_factory.mktemp("lm"), context=512, corpus=(*CORPUS, PROMPT, *STEPS))
    out = tmp_path_factory.mktemp("ppm")
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(lm, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(lm).save_pretrained(out)
    return out


def make(ppm_dir: Path, **options: object) -> HFRewardModel:
    return HFRewardModel(HFRewardOptions(model=str(ppm_dir), device="cpu", transform="identity", **options))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def plain(ppm_dir: Path) -> HFRewardModel:
    """No cache of any kind: every text read whole."""
    return make(ppm_dir, share_prefix=False)


def path(depth: int) -> str:
    return "".join(STEPS[:depth])


def scored(model: HFRewardModel, solutions: list[str]) -> tuple[list[float], int]:
    """The raw scores of ``PROMPT + solution`` for each solution, and the tokens computed for them."""
    before = model.tokens_computed
    scores = model.raw_scores([reward_text(PROMPT, s) for s in solutions])
    return scores, model.tokens_computed - before


def ids(model: HFRewardModel, solution: str) -> list[int]:
    row: list[int] = model.token_ids([reward_text(PROMPT, solution)])[0]
    return row


def test_a_child_runs_only_its_new_tokens_and_scores_as_without_a_cache(ppm_dir: Path, plain: HFRewardModel) -> None:
    model = make(ppm_dir)
    assert model.path_caching and not plain.path_caching
    for depth in (1, 2, 3):  # parent, child, grandchild: each in a call of its own, as MCTS scores them
        [score], computed = scored(model, [path(depth)])
        assert score == pytest.approx(plain.raw_scores([reward_text(PROMPT, path(depth))])[0], abs=1e-5)
        parent, child = ids(model, path(depth - 1)), ids(model, path(depth))
        assert child[: len(parent)] == parent  # these steps' tokens extend their parent's
        assert computed == (len(child) if depth == 1 else len(child) - len(parent))
    # tokens read stay the whole texts'
    items = [RewardRequest(PROMPT, path(3))]
    assert model.score_with_tokens_sync(items)[0][1] == len(ids(model, path(3)))


def test_siblings_after_their_parent_share_its_path(ppm_dir: Path, plain: HFRewardModel) -> None:
    model = make(ppm_dir, batch_size=2)  # three siblings: two batches
    scored(model, [path(2)])
    children = [path(2) + s for s in SIBLINGS]
    scores, computed = scored(model, children)
    assert scores == pytest.approx(plain.raw_scores([reward_text(PROMPT, c) for c in children]), abs=1e-5)
    parent = len(ids(model, path(2)))
    new = sum(len(ids(model, c)) - parent for c in children)
    assert computed <= new  # siblings sharing their step's first token run it once per batch
    assert computed >= new - len(children)


def test_a_child_whose_tokens_do_not_extend_its_parents_reuses_the_match(ppm_dir: Path, plain: HFRewardModel) -> None:
    model = make(ppm_dir)
    parent, child = path(1) + "\nx = 1", path(1) + "\nx = 123 * 4<end_of_step>"
    parent_ids, child_ids = ids(model, parent), ids(model, child)
    assert child_ids[: len(parent_ids)] != parent_ids  # '1' then '123': the boundary tokens merge differently
    common = next(i for i, (a, b) in enumerate(zip(parent_ids, child_ids, strict=False)) if a != b)
    scored(model, [parent])
    [score], computed = scored(model, [child])
    assert score == pytest.approx(plain.raw_scores([reward_text(PROMPT, child)])[0], abs=1e-5)
    assert computed == len(child_ids) - common


def test_rows_continuing_from_prefixes_of_different_lengths_batch_together(ppm_dir: Path, plain: HFRewardModel) -> None:
    model = make(ppm_dir, batch_size=8)
    scored(model, [path(1), path(2)])
    fresh = "the sum: x = 3 + 4\nprint(x)<end_of_code>"  # shares no first token with PROMPT
    texts = [reward_text(PROMPT, path(2) + SIBLINGS[0]), reward_text(PROMPT, path(1) + SIBLINGS[1]), fresh]
    before = model.tokens_computed
    scores = model.raw_scores(texts)  # one batch: two stored prefixes of different lengths and none
    assert scores == pytest.approx(plain.raw_scores(texts), abs=1e-5)
    rows = model.token_ids(texts)
    known = [len(ids(model, path(2))), len(ids(model, path(1))), 0]
    assert model.tokens_computed - before == sum(len(r) - n for r, n in zip(rows, known, strict=True))


def test_the_parent_scored_in_the_same_call_is_stored_before_its_children(ppm_dir: Path, plain: HFRewardModel) -> None:
    model = make(ppm_dir, batch_size=1)  # shortest first: the parent's batch runs before its child's
    scores, computed = scored(model, [path(3), path(2)])
    assert scores == pytest.approx(plain.raw_scores([reward_text(PROMPT, path(d)) for d in (3, 2)]), abs=1e-5)
    assert computed == len(ids(model, path(3)))


def test_without_sharing_every_token_read_is_computed(plain: HFRewardModel) -> None:
    items = [RewardRequest(PROMPT, path(1)), RewardRequest(PROMPT, path(2))]
    before = plain.tokens_computed
    read = [n for _, n in plain.score_with_tokens_sync(items)]
    assert plain.tokens_computed - before == sum(read)


def test_path_caching_off_keeps_only_shared_prefixes(ppm_dir: Path, plain: HFRewardModel) -> None:
    off, on = make(ppm_dir, path_cache_tokens=0), make(ppm_dir)
    assert off.share_prefix and not off.path_caching and isinstance(off.prefix_cache, PrefixCache)
    assert isinstance(on.prefix_cache, PathCache)
    children = [path(2) + s for s in SIBLINGS[:2]]
    grandchildren = [children[0] + s for s in SIBLINGS[1:]]
    computed = {}
    for name, model in (("off", off), ("on", on)):
        scored(model, children)  # the siblings' shared prefix is kept either way, their own steps only when on
        scores, computed[name] = scored(model, grandchildren)
        assert scores == pytest.approx(plain.raw_scores([reward_text(PROMPT, g) for g in grandchildren]), abs=1e-5)
    step = len(ids(on, children[0])) - len(ids(on, path(2)))
    assert computed["off"] >= computed["on"] + step - 1  # off runs children[0]'s own step again


def test_the_cache_stays_within_its_token_bound(ppm_dir: Path, plain: HFRewardModel) -> None:
    lengths = [len(ids(plain, path(d))) for d in (1, 2, 3)]
    bound = (lengths[1] + lengths[2]) // 2
    model = make(ppm_dir, path_cache_tokens=bound)
    assert isinstance(model.prefix_cache, PathCache)
    for depth in (1, 2, 3):
        scored(model, [path(depth)])
        assert model.prefix_cache.tokens <= bound
    # depth 3 is longer than the bound: not stored; depth 2 still is
    [score], computed = scored(model, [path(3) + SIBLINGS[0]])
    assert score == pytest.approx(plain.raw_scores([reward_text(PROMPT, path(3) + SIBLINGS[0])])[0], abs=1e-5)
    assert computed == len(ids(model, path(3) + SIBLINGS[0])) - lengths[1]


# --- the cache itself ---------------------------------------------------------------------------------------


def fake_kv(tokens: list[int]) -> KV:
    """Test fake of a model's keys and values: one layer whose position i holds the token at i."""
    import torch

    t = torch.tensor(tokens, dtype=torch.float32).view(1, 1, -1, 1)
    return [(t, -t)]


def test_path_cache_stores_each_prefix_once_and_drops_least_recently_used_leaves() -> None:
    cache = PathCache(max_tokens=12)
    assert cache.lookup([1, 2, 3]) == (0, None)
    cache.put([1, 2, 3, 4, 5], fake_kv([1, 2, 3, 4, 5]))
    cache.put([1, 2, 3, 7], fake_kv([1, 2, 3, 7]))  # splits the first segment after [1, 2, 3]
    assert cache.tokens == 6 and len(cache) == 3
    known, kv = cache.lookup([1, 2, 3, 7, 9])
    assert known == 4 and kv is not None and kv[0][0].flatten().tolist() == [1, 2, 3, 7]
    assert kv[0][1].flatten().tolist() == [-1, -2, -3, -7]
    known, kv = cache.lookup([1, 2, 3, 4, 6])  # part of a segment
    assert known == 4 and kv is not None and kv[0][0].flatten().tolist() == [1, 2, 3, 4]
    cache.put([8, 9, 10, 11, 12], fake_kv([8, 9, 10, 11, 12]))
    assert cache.tokens == 11
    cache.lookup([1, 2, 3, 7])  # of the leaves, [4, 5] is now the least recently used
    cache.put([1, 2, 3, 7, 20, 21], fake_kv([1, 2, 3, 7, 20, 21]))  # 13 tokens: [4, 5] goes
    assert cache.tokens == 11 and cache.lookup([1, 2, 3, 4, 5])[0] == 3
    cache.lookup([1, 2, 3, 7, 20, 21])
    cache.put([30, 31], fake_kv([30, 31]))  # 13 tokens: [8..12] goes, the oldest leaf
    assert cache.tokens == 8 and cache.lookup([8, 9])[0] == 0 and cache.lookup([1, 2, 3, 7, 20, 21])[0] == 6
    cache.put(list(range(100, 113)), fake_kv(list(range(100, 113))))  # longer than the bound: not kept
    assert cache.lookup([100])[0] == 0 and cache.tokens == 8
    cache.clear()
    assert cache.tokens == 0 and cache.lookup([1])[0] == 0
