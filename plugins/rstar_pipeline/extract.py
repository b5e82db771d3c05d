"""Training data from search trees: SFT solutions for the policy, preference pairs for the PPM.

One round of self-evolution searches every problem (``trees.jsonl``), then mines its trees for the
next round's training data (ALGORITHM.md section 6):

* **SFT records** (`sft_records`): the correct solutions of a problem (root-to-leaf paths that end
  on an answer labelled correct), ranked by the mean Q-value of their steps (then the lowest step
  Q-value); the best ``sft_top_k`` are kept, and then any kept solution that contains "error"
  (any case) is dropped, as in the original.
* **Step pairs** (`pair_records`): at a node, the children with a correct answer below them are
  positives (highest Q first), the children with a wrong answer below them are negatives (lowest Q
  first); the best of each are paired. Both steps share the prefix, so the PPM learns to rank
  candidate next steps. The walk descends into children with both outcomes below them.
* **Final pairs**: the paper's trajectory-level pairs, which the released code never wrote: the
  correct full solutions with the highest mean Q against the wrong ones with the lowest, for the
  bare question.

Correctness comes from the answer nodes' ``correct`` labels (the tree file's ground-truth check), not
from the original's test ``q_value == ±1`` (ALGORITHM.md section 10, bug 16): that test only works on
trees whose answers received exactly one ±1 visit, and silently finds nothing in trees scored by a
reward model. Leaves that ended with "too many code errors" would be wrong trajectories, but SFT keeps
only correct ones, and, as in the original, they are never negatives of a pair: a broken program
teaches the PPM little about which reasoning step was worse. Leaves without an answer (too many
steps, a sample cut off without a stop string, unexpanded nodes) are not trajectories at all.

Every record's ``prompt`` is rendered with the step format the trained models are searched with: the
recipe's top-level ``step_format`` (a round may override it for its own search, as the bootstrap round
does; see `rstar_pipeline.stages.ExtractStage`), so that ``prompt + response`` is exactly the text the
policy continues, and ``prompt + pos`` / ``prompt + neg`` exactly the text the PPM scores at search time
(`rstar.reward.reward_text`). This removes the original's one-newline mismatch between training and
inference prompts (bug 22).

Record formats (one JSON object per line of ``sft.jsonl`` and ``pairs.jsonl``)::

    SFT:  {"id", "question", "prompt", "response", "mean_q", "min_q"}
    pair: {"id", "question", "prompt", "pos", "neg", "pos_count", "neg_count", "step_margin",
           "kind": "step" | "final" | "imported"}

The importers read the original's released files (``{query, response}`` SFT lists and
``{prompt, pos, neg, pos_count, neg_count}`` pair lists) into the same records.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from rstar.errors import DataError, RstarError
from rstar.options import Options
from rstar.rundir import read_jsonl, read_trees, write_jsonl
from rstar.steps import SENTINELS, TOO_MANY_ERRORS, StepFormat
from rstar.types import Node, Tree

SFT_FILE = "sft.jsonl"
PAIRS_FILE = "pairs.jsonl"
TREES_FILE = "trees.jsonl"


class ExtractOptions(Options):
    """The recipe's ``extract`` section. The defaults reproduce the original's scripts, plus the paper's
    trajectory-level pairs (``final_step_pairs``), which the scripts never wrote."""

    sft_top_k: int = Field(2, ge=1, description="correct solutions kept per problem, best (mean Q, min Q) first")
    sft_drop_error: bool = Field(
        True, description="drop a kept solution that contains 'error' (any case), after the top-k cut"
    )
    pair_top_k: int = Field(2, ge=1, description="positives and negatives used at each node")
    pair_widen: int = Field(
        4, ge=1, description="with a single positive, use this many negatives (and with a single negative, positives)"
    )
    min_margin: float = Field(0.5, description="least Q(pos) - Q(neg) of a kept pair")
    min_edit_distance: int = Field(
        20, ge=0, description="least character edit distance between a kept pair's pos and neg"
    )
    continuation_check: bool = Field(
        True,
        description="keep a step pair only if its margin is positive and pos's greedy continuation has a "
        "higher mean Q than neg's",
    )
    queue: Literal["all", "vis_count"] = Field(
        "all",
        description="children the pair walk descends into: every child with both outcomes below it ('all') "
        "or only the most visited one ('vis_count')",
    )
    final_step_pairs: int = Field(
        2, ge=0, description="trajectory-level pairs: this many best correct vs worst wrong solutions; 0 disables"
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"prompt", "few_shot"} & set(data):
            raise PydanticCustomError(
                "moved",
                "extract.prompt and extract.few_shot are gone: records are rendered with the recipe's top-level "
                "step_format (its prompt and few_shot), the format the trained models are searched with; "
                "move the keys there",
            )
        return data


@dataclass
class Extraction:
    """What `extract` found: SFT records, pair records, and counts of what was kept and dropped."""

    sft: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


# --- the tree as a graph -------------------------------------------------------------------------

Outcome = Literal["correct", "wrong", "error"]


def outcome(node: Node) -> Outcome | None:
    """A leaf's label: a correct or wrong answer, a "too many code errors" leaf, or None (no outcome)."""
    if node.final_answer == TOO_MANY_ERRORS:
        return "error"
    if node.final_answer is None or node.final_answer in SENTINELS or node.correct is None:
        return None
    return "correct" if node.correct else "wrong"


class _Graph:
    """Children, paths and outcome counts of a tree's nodes (children in tree-file order)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.by_id = {n.id: n for n in tree.nodes}
        self.children: dict[str, list[Node]] = {n.id: [] for n in tree.nodes}
        roots = []
        for n in tree.nodes:
            if n.parent is None:
                roots.append(n)
            elif n.parent in self.children:
                self.children[n.parent].append(n)
            else:
                raise RstarError(f"tree {tree.id!r}: node {n.id!r} names a missing parent {n.parent!r}")
        if len(roots) != 1:
            raise RstarError(f"tree {tree.id!r}: expected one root node (parent null), found {len(roots)}")
        self.root = roots[0]
        self.correct: dict[str, int] = {}
        self.wrong: dict[str, int] = {}
        for n in reversed(self._bfs()):  # children before parents
            label = outcome(n)
            kids = self.children[n.id]
            self.correct[n.id] = (label == "correct") + sum(self.correct[c.id] for c in kids)
            self.wrong[n.id] = (label == "wrong") + sum(self.wrong[c.id] for c in kids)

    def _bfs(self) -> list[Node]:
        order = [self.root]
        i = 0
        while i < len(order):
            order.extend(self.children[order[i].id])
            i += 1
        return order

    def path(self, node: Node) -> list[Node]:
        """The steps from the root's child down to ``node`` (the root itself has no text)."""
        steps: list[Node] = []
        current: Node | None = node
        while current is not None and current.parent is not None:
            steps.append(current)
            current = self.by_id[current.parent]
        return steps[::-1]


def _text(steps: Sequence[Node]) -> str:
    return "".join(n.text for n in steps)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class _Trajectory:
    steps: list[Node]
    mean_q: float
    min_q: float

    @property
    def text(self) -> str:
        return _text(self.steps)


def _trajectories(graph: _Graph, label: Outcome) -> list[_Trajectory]:
    """Root-to-leaf paths ending on a leaf with ``label``, in depth-first order (children in tree order).

    This is the order in which the original's ``extra_sft_file.py`` enumerates its traces, and so the
    order its stable sorts keep among equal keys (ALGORITHM.md 6.1, step 3): a deep path under the
    first child comes before a shallow path under the second.
    """
    out = []
    stack = [graph.root]
    while stack:
        n = stack.pop()
        kids = graph.children[n.id]
        if kids:
            stack.extend(reversed(kids))  # the first child is visited first
        elif outcome(n) == label:
            steps = graph.path(n)
            qs = [s.q_value for s in steps]
            out.append(_Trajectory(steps, _mean(qs), min(qs)))
    return out


# --- SFT -----------------------------------------------------------------------------------------


def sft_records(tree: Tree, fmt: StepFormat, options: ExtractOptions) -> list[dict[str, Any]]:
    """The best correct solutions of one tree (ALGORITHM.md 6.1), best first."""
    return _sft(tree, fmt, options)[0]


def _sft(tree: Tree, fmt: StepFormat, options: ExtractOptions) -> tuple[list[dict[str, Any]], int]:
    ranked = sorted(_trajectories(_Graph(tree), "correct"), key=lambda t: (-t.mean_q, -t.min_q))
    kept = ranked[: options.sft_top_k]
    if options.sft_drop_error:
        kept = [t for t in kept if "error" not in t.text.lower()]
    prompt = fmt.render_prompt(tree.question)
    records = [
        {
            "id": tree.id,
            "question": tree.question,
            "prompt": prompt,
            "response": t.text,
            "mean_q": t.mean_q,
            "min_q": t.min_q,
        }
        for t in kept
    ]
    return records, min(len(ranked), options.sft_top_k) - len(kept)


# --- preference pairs ----------------------------------------------------------------------------


@dataclass
class _PairCounts:
    continuation: int = 0
    margin: int = 0
    edit_distance: int = 0


def pair_records(tree: Tree, fmt: StepFormat, options: ExtractOptions) -> list[dict[str, Any]]:
    """Step pairs (ALGORITHM.md 6.2), then final pairs, of one tree; filtered as the options say."""
    return _pairs(tree, fmt, options, _PairCounts())


def _pairs(tree: Tree, fmt: StepFormat, options: ExtractOptions, dropped: _PairCounts) -> list[dict[str, Any]]:
    graph = _Graph(tree)
    records = _step_pairs(graph, fmt, options, dropped)
    if options.final_step_pairs:
        records += _final_pairs(graph, fmt, options, dropped)
    return records


def _step_pairs(graph: _Graph, fmt: StepFormat, options: ExtractOptions, dropped: _PairCounts) -> list[dict[str, Any]]:
    tree = graph.tree
    out: list[dict[str, Any]] = []
    queue = deque([graph.root])
    while queue:
        node = queue.popleft()
        kids = graph.children[node.id]
        pos = sorted((c for c in kids if graph.correct[c.id]), key=lambda c: -c.q_value)
        neg = sorted((c for c in kids if graph.wrong[c.id]), key=lambda c: c.q_value)
        if not pos or not neg:
            continue
        used_pos, used_neg = pos[: options.pair_top_k], neg[: options.pair_top_k]
        if len(pos) == 1:
            used_neg = neg[: options.pair_widen]
        if len(neg) == 1:
            used_pos = pos[: options.pair_widen]
        prompt = fmt.render_prompt(tree.question, _text(graph.path(node)))
        for p, n in product(used_pos, used_neg):
            if p is n:  # a child with both outcomes below it is in both lists: never its own negative
                continue
            margin = p.q_value - n.q_value
            if options.continuation_check and not (
                margin > 0 and _continuation_q(graph, p, correct=True) > _continuation_q(graph, n, correct=False)
            ):
                dropped.continuation += 1
                continue
            if _passes_filters(p.text, n.text, margin, options, dropped):
                out.append(_pair(tree, prompt, p.text, n.text, len(used_pos), len(used_neg), margin, "step"))
        mixed = [c for c in kids if graph.correct[c.id] and graph.wrong[c.id]]
        if options.queue == "vis_count" and mixed:
            mixed = [max(mixed, key=lambda c: c.visits)]
        queue.extend(mixed)
    return out


def _continuation_q(graph: _Graph, start: Node, *, correct: bool) -> float:
    """Mean Q along the greedy path down from ``start`` (included): through the child with a correct
    answer below it of highest Q (``correct``), or with a wrong answer below it of lowest Q."""
    counts = graph.correct if correct else graph.wrong
    qs = [start.q_value]
    node = start
    while True:
        nexts = [c for c in graph.children[node.id] if counts[c.id]]
        if not nexts:
            return _mean(qs)
        node = max(nexts, key=lambda c: c.q_value) if correct else min(nexts, key=lambda c: c.q_value)
        qs.append(node.q_value)


def _final_pairs(graph: _Graph, fmt: StepFormat, options: ExtractOptions, dropped: _PairCounts) -> list[dict[str, Any]]:
    k = options.final_step_pairs
    best = sorted(_trajectories(graph, "correct"), key=lambda t: (-t.mean_q, -t.min_q))[:k]
    worst = sorted(_trajectories(graph, "wrong"), key=lambda t: (t.mean_q, t.min_q))[:k]
    prompt = fmt.render_prompt(graph.tree.question)
    out = []
    for p, n in product(best, worst):
        margin = p.mean_q - n.mean_q
        if _passes_filters(p.text, n.text, margin, options, dropped):
            out.append(_pair(graph.tree, prompt, p.text, n.text, len(best), len(worst), margin, "final"))
    return out


def _passes_filters(pos: str, neg: str, margin: float, options: ExtractOptions, dropped: _PairCounts) -> bool:
    if margin < options.min_margin:
        dropped.margin += 1
        return False
    if edit_distance(pos, neg, options.min_edit_distance) < options.min_edit_distance:
        dropped.edit_distance += 1
        return False
    return True


def _pair(
    tree: Tree, prompt: str, pos: str, neg: str, n_pos: int, n_neg: int, margin: float, kind: str
) -> dict[str, Any]:
    return {
        "id": tree.id,
        "question": tree.question,
        "prompt": prompt,
        "pos": pos,
        "neg": neg,
        "pos_count": n_pos,
        "neg_count": n_neg,
        "step_margin": margin,
        "kind": kind,
    }


def edit_distance(a: str, b: str, limit: int) -> int:
    """Character Levenshtein distance of ``a`` and ``b``, or ``limit`` if it is ``limit`` or more.

    Only the band of cells within ``limit - 1`` of the diagonal can hold a smaller distance, so the
    cost is O(len * limit) instead of O(len(a) * len(b)).
    """
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    end = 0
    while end < min(len(a), len(b)) and a[-1 - end] == b[-1 - end]:
        end += 1
    a, b = a[: len(a) - end], b[: len(b) - end]
    n, m, k = len(a), len(b), limit - 1
    if abs(n - m) > k:
        return limit
    prev = [j if j <= k else limit for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [limit] * (m + 1)
        if i <= k:
            cur[0] = i
        ai = a[i - 1]
        for j in range(max(1, i - k), min(m, i + k) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ai != b[j - 1]), limit)
        if min(cur[max(0, i - k) : min(m, i + k) + 1]) >= limit:
            return limit
        prev = cur
    return min(prev[m], limit)


# --- many trees ----------------------------------------------------------------------------------


def extract(trees: Iterable[Tree], options: ExtractOptions, fmt: StepFormat | None = None) -> Extraction:
    """SFT records and pairs of every tree, in tree order, with counts; prompts rendered with ``fmt``
    (default: the default step format, `rstar.config.StepFormatOptions`).

    A problem searched in several trees (e.g. a later round re-searching unsolved problems) gives
    records from each of them.
    """
    fmt = fmt if fmt is not None else StepFormat.from_options()
    result = Extraction()
    dropped = _PairCounts()
    ids: set[str] = set()
    solved: set[str] = set()
    n_trees = sft_dropped = 0
    for tree in trees:
        n_trees += 1
        ids.add(tree.id)
        if any(outcome(n) == "correct" for n in tree.nodes):
            solved.add(tree.id)
        sft, dropped_error = _sft(tree, fmt, options)
        result.sft += sft
        sft_dropped += dropped_error
        result.pairs += _pairs(tree, fmt, options, dropped)
    result.stats = {
        "trees": n_trees,
        "problems": len(ids),
        "problems_with_correct": len(solved),
        "sft_records": len(result.sft),
        "sft_dropped_error": sft_dropped,
        "step_pairs": sum(1 for p in result.pairs if p["kind"] == "step"),
        "final_pairs": sum(1 for p in result.pairs if p["kind"] == "final"),
        "pairs_dropped_continuation": dropped.continuation,
        "pairs_dropped_margin": dropped.margin,
        "pairs_dropped_edit_distance": dropped.edit_distance,
    }
    return result


def tree_files(sources: Sequence[Path]) -> list[Path]:
    """``trees.jsonl`` files: each source is such a file, or a folder searched recursively (sorted; the copies
    `rstar rescore` writes in ``rescore-<name>/`` folders left out); each file once."""
    files: list[Path] = []
    for source in sources:
        if source.is_file():
            files.append(source.resolve())
        elif source.is_dir():
            # A rescore-<name>/ folder holds the same trees again, re-checked (`rstar rescore`): not new data.
            found = source.rglob(TREES_FILE)
            files += sorted(p.resolve() for p in found if not any(d.startswith("rescore-") for d in p.parts))
        else:
            raise RstarError(f"{source}: no such file or folder; give a trees.jsonl file or a run/round folder")
    files = list(dict.fromkeys(files))  # a file named directly and found under a folder is read once
    if not files:
        where = ", ".join(str(s) for s in sources)
        raise RstarError(f"no {TREES_FILE} under {where}; run a search stage first or point at its folder")
    return files


def extract_files(
    sources: Sequence[Path], out_dir: Path, options: ExtractOptions, fmt: StepFormat | None = None
) -> dict[str, Any]:
    """Extract from every tree file of ``sources`` into ``out_dir/sft.jsonl`` and ``out_dir/pairs.jsonl``,
    prompts rendered with ``fmt``.

    Returns the counts of `extract` and the tree files read (the caller writes them as a summary).
    """
    files = tree_files(sources)

    def trees() -> Iterator[Tree]:
        for path in files:
            yield from read_trees(path).values()

    result = extract(trees(), options, fmt)
    write_jsonl(out_dir / SFT_FILE, result.sft)
    write_jsonl(out_dir / PAIRS_FILE, result.pairs)
    return {**result.stats, "tree_files": [str(p) for p in files]}


# --- files ---------------------------------------------------------------------------------------


def _load_records(path: Path) -> list[Any]:
    """A JSON list, or JSON lines, as a list of values."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return read_jsonl(path)
    if isinstance(data, dict):  # a JSON-lines file with a single line
        return [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects or JSON lines, got {type(data).__name__}")
    return data


def _field(path: Path, index: int, record: Any, key: str, kind: type) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{path}: record {index}: missing key {key!r} (has {sorted(record)})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: record {index}: {key!r} must be of type {kind.__name__}, got {type(value).__name__}")
    return value


def _stable_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def import_rstar_sft(path: Path, fmt: StepFormat) -> list[dict[str, Any]]:
    """SFT records from the original's SFT file (a JSON list or JSON lines of ``{query, response}``).

    The prompt is rendered from ``query`` with ``fmt``; the id is a hash of the query (stable across
    files); ``mean_q`` and ``min_q`` are null (the file has no Q-values).
    """
    records = []
    for i, record in enumerate(_load_records(path)):
        query = _field(path, i, record, "query", str)
        response = _field(path, i, record, "response", str)
        records.append(
            {
                "id": _stable_id("sft", query),
                "question": query,
                "prompt": fmt.render_prompt(query),
                "response": response,
                "mean_q": None,
                "min_q": None,
            }
        )
    return records


_USER = "<|user|>:\n"
_ASSISTANT = "\n<|assistant|>"


def import_rstar_pairs(path: Path) -> list[dict[str, Any]]:
    """Pair records from the original's PPM file (a JSON list or JSON lines of
    ``{prompt, pos, neg, pos_count, neg_count}``); the prompt is kept verbatim.

    ``pos_count`` / ``neg_count`` default to 1 when absent; ``question`` is the prompt without its
    ``<|user|>:`` head and assistant tail (informational only); ``step_margin`` is null.
    """
    records = []
    for i, record in enumerate(_load_records(path)):
        prompt = _field(path, i, record, "prompt", str)
        pos = _field(path, i, record, "pos", str)
        neg = _field(path, i, record, "neg", str)
        counts = [_field(path, i, record, key, int) if key in record else 1 for key in ("pos_count", "neg_count")]
        if min(counts) < 1:
            raise DataError(f"{path}: record {i}: pos_count and neg_count must be at least 1 (got {counts})")
        question = prompt.removeprefix(_USER).split(_ASSISTANT, 1)[0].strip()
        records.append(
            {
                "id": _stable_id("pair", prompt),
                "question": question,
                "prompt": prompt,
                "pos": pos,
                "neg": neg,
                "pos_count": counts[0],
                "neg_count": counts[1],
                "step_margin": None,
                "kind": "imported",
            }
        )
    return records


__all__ = [
    "PAIRS_FILE",
    "SFT_FILE",
    "ExtractOptions",
    "Extraction",
    "edit_distance",
    "extract",
    "extract_files",
    "import_rstar_pairs",
    "import_rstar_sft",
    "outcome",
    "pair_records",
    "read_jsonl",
    "sft_records",
    "tree_files",
    "write_jsonl",
]
