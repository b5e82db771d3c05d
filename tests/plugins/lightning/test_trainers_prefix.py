"""``share_prefix``: the trainers run the prefix all texts of a batch share once, with the same loss and
gradients as one plain pass (tiny random Llama, with and without LoRA, causal LM and PPM head)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("peft")

from rstar_lightning import _prefix, ppm, sft  # noqa: E402
from rstar_lightning._data import IGNORE_INDEX  # noqa: E402
from rstar_lightning._model import apply_lora, load_tokenizer  # noqa: E402
from rstar_lightning.options import LoraOptions, PPMOptions, SFTOptions  # noqa: E402

from rstar.testing.models import build_tiny_llama  # noqa: E402

FEW_SHOT = "Question: what is 2 + 3?\nx = 2 + 3\nprint(x)<end_of_code>\n5\nQuestion: what is 4 * 6?\nx = 4 * 6\n"
"""The part every prompt starts with (about 40 tokens of the tiny tokenizer)."""
QUESTIONS = ["Question: what is 12 * 7?\n", "Question: what is 12 + 7?\n", "Question: what is 9 - 1?\n"]
STEPS = ["x = 12 * 7\nprint(x)<end_of_step>", "y = 3<end_of_step>", "x = 9 - 1\nprint(x)<end_of_code>"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def _sft_batch(tiny: Path) -> dict[str, Any]:
    tok = load_tokenizer(str(tiny), SFTOptions())
    examples = [sft.make_example(tok, FEW_SHOT + q, s) for q, s in zip(QUESTIONS, STEPS, strict=True)]
    return sft.collate(examples, tok.pad_token_id)


def _ppm_batch(tiny: Path) -> dict[str, Any]:
    tok = load_tokenizer(str(tiny), PPMOptions())
    pairs = [
        (ppm.score_ids(tok, FEW_SHOT + q, s, 96), ppm.score_ids(tok, FEW_SHOT + q, "z = 0<end_of_step>", 96), 1.0)
        for q, s in zip(QUESTIONS, STEPS, strict=True)
    ]
    return ppm.collate(pairs, tok.pad_token_id)  # type: ignore[arg-type]


def _grads(model: Any) -> dict[str, Any]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model: Any, run_plain: Any, run_shared: Any) -> tuple[Any, Any]:
    """The plain and shared outputs' values and the gradients of both; the two must match."""
    model.zero_grad()
    plain = run_plain()
    plain.backward()
    plain_grads = _grads(model)
    model.zero_grad()
    shared = run_shared()
    shared.backward()
    shared_grads = _grads(model)
    assert plain_grads and plain_grads.keys() == shared_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return plain.detach(), shared.detach()


def test_the_shared_length_stops_before_labels_and_leaves_each_row_a_token() -> None:
    ids = torch.tensor([[5] * 40 + [1, 2], [5] * 40 + [3, 0]])
    mask = torch.tensor([[1] * 42, [1] * 41 + [0]])
    assert _prefix.shared_length(ids, mask) == 40
    assert _prefix.shared_length(ids[:, :41], mask[:, :41]) == 40  # the shorter row keeps its last token
    same = torch.tensor([[5] * 40, [5] * 40])
    assert _prefix.shared_length(same, torch.ones_like(same)) == 39
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[1, 36] = 9  # predicted from position 35, which must be the row's own
    assert _prefix.shared_length(ids, mask, labels) == 35
    labels[1, 20] = 9
    assert _prefix.shared_length(ids, mask, labels) == 0  # under MIN_SHARED_PREFIX: not worth it
    assert _prefix.shared_length(ids[:1], mask[:1]) == 0  # one row: nothing to share


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_loss_and_gradients_equal_the_plain_pass(tiny: Path, lora: bool) -> None:
    from transformers import AutoModelForCausalLM

    batch = _sft_batch(tiny)
    shared = _prefix.shared_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert shared >= _prefix.MIN_SHARED_PREFIX
    model = AutoModelForCausalLM.from_pretrained(tiny)
    if lora:
        model = apply_lora(model, LoraOptions(dropout=0.0), "CAUSAL_LM")
        for name, p in model.named_parameters():  # non-zero B matrices, so LoRA's gradients are not trivial
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    model.train()
    out = _prefix.forward(model, **batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1] - shared  # only the rows' own tokens ran
    plain, share = _compare(model, lambda: model(**batch).loss, lambda: _prefix.forward(model, **batch).loss)
    torch.testing.assert_close(share, plain, rtol=1e-5, atol=1e-6)


def test_ppm_scores_and_gradients_equal_the_plain_pass(tiny: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    batch = _ppm_batch(tiny)
    texts = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert _prefix.shared_length(**texts) >= _prefix.MIN_SHARED_PREFIX
    tok = load_tokenizer(str(tiny), PPMOptions())
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    model.train()
    plain_scores = model(**texts).logits[:, 0]
    shared_scores = _prefix.forward(model, **texts).logits[:, 0]
    torch.testing.assert_close(shared_scores, plain_scores, rtol=1e-5, atol=1e-5)
    assert len(set(plain_scores.round(decimals=4).tolist())) == len(plain_scores)  # six different texts

    def loss(run: Any) -> Any:
        scores = run(model, **texts).logits[:, 0]
        return ppm.bt_loss(scores[:3], scores[3:], batch["weights"])

    _compare(model, lambda: loss(lambda m, **t: m(**t)), lambda: loss(_prefix.forward))


def test_gradient_checkpointing_runs_the_plain_pass(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    batch = _sft_batch(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # as the trainers' adapt() sets it
    model.train()
    assert _prefix.forward(model, **batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_a_sliding_window_model_runs_the_plain_pass() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=8,  # its cache keeps only a window of keys: the prefix could not be shared whole
    )
    model = MistralForCausalLM(config)
    ids = torch.cat([torch.full((2, 40), 5), torch.tensor([[1, 2], [3, 4]])], dim=1)
    out = _prefix.forward(model, input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape[1] == ids.shape[1]
