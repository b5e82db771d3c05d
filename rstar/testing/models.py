"""Tiny random transformers models built offline, for tests of components that load a checkpoint.

``build_tiny_llama(path)`` writes a Hugging Face directory (config, safetensors weights, a small
byte-level BPE tokenizer trained on step-format text) in well under a second. Its outputs are
random, so tests assert on mechanics (shapes, batching, determinism, files), never on quality.
Needs the ``[hf]`` extra; imported lazily so that ``rstar.testing`` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CORPUS: tuple[str, ...] = (
    "Let's think step by step. The answer is 42.<end_of_step>",
    "x = 3 * 4\nprint(x)\n<end_of_code>\n<output>12</output>",
    "First, compute the sum of the numbers: 1 + 2 + 3 = 6.<end_of_step>",
    "def f(n):\n    return n * (n + 1) // 2\nprint(f(10))<end_of_code>",
    "The quick brown fox jumps over the lazy dog; 0123456789 ()[]{}<>=+-*/%#@!?,.'\"",
    "Question: what is the value of 12 * 7? Answer: 84. Therefore the final answer is \\boxed{84}.",
)
"""Text the tiny tokenizer is trained on: every character the tests use should occur in it."""


def build_tiny_llama(
    path: str | Path,
    *,
    context: int = 96,
    corpus: Sequence[str] = CORPUS,
    vocab_size: int = 320,
    initializer_range: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` (2 layers, hidden size 32) and its tokenizer to ``path``.

    ``initializer_range`` 0.5 gives peaked next-token distributions, so greedy paths are far from ties.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>"], show_progress=False
    )
    tok.train_from_iterator(list(corpus) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=fast.backend_tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


__all__ = ["CORPUS", "build_tiny_llama"]
