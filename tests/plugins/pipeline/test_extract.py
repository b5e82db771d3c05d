"""Training-data extraction: hand-built trees whose SFT records and preference pairs are worked out by hand,
the filters one by one, a real MCTS tree, the file helpers and the importers of the original's formats."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
from fakes import FakeExactChecker, FakeInProcessVerifier
from hypothesis import given, settings
from hypothesis import strategies as st
from rstar_pipeline.extract import (
    ExtractOptions,
    edit_distance,
    extract,
    extract_files,
    import_rstar_pairs,
    import_rstar_sft,
    pair_records,
    read_jsonl,
    sft_records,
    write_jsonl,
)
from rstar_search.mcts import MCTS, MCTSOptions

from rstar.engine import Components, Engine
from rstar.errors import DataError, RstarError
from rstar.steps import TOO_MANY_ERRORS, TOO_MANY_STEPS, StepFormat, extract_program
from rstar.testing import ScriptedPolicy
from rstar.testing.worlds import adder
from rstar.types import Budget, Node, Problem, Tree, Usage

QUESTION = "What is 5 plus 3?"
SFT = StepFormat.from_options("sft")
DEFAULTS = ExtractOptions()


def text(name: str) -> str:
    """A step text far (in edit distance) from every other name's: the name, then 30 copies of its letter."""
    return f"[{name}]" + name[-1] * 30


def node(node_id: str, q: float, *, answer: str | None = None, correct: bool | None = None, visits: int = 1, txt=None):
    parent = node_id.rsplit(".", 1)[0] if "." in node_id else None
    return Node(
        id=node_id,
        parent=parent,
        depth=node_id.count("."),
        text=txt if txt is not None else ("" if parent is None else text(node_id)),
        visits=visits,
        q_value=q,
        terminal=answer is not None,
        final_answer=answer,
        correct=correct,
    )


def right(node_id: str, q: float = 1.0, **kw) -> Node:
    return node(node_id, q, answer="8", correct=True, **kw)


def wrong(node_id: str, q: float = -1.0, **kw) -> Node:
    return node(node_id, q, answer="2", correct=False, **kw)


def tree(*nodes: Node, tree_id: str = "p") -> Tree:
    return Tree(tree_id, QUESTION, "8", "mcts", None, None, Usage(), (node("0", 0.0), *nodes))


def path_text(*ids: str) -> str:
    return "".join(text(i) for i in ids)


def pairs_of(records) -> list[tuple[str, str, int, int]]:
    return [(r["pos"], r["neg"], r["pos_count"], r["neg_count"]) for r in records]


# --- SFT ------------------------------------------------------------------------------------------------------

SFT_TREE = tree(
    node("0.1", 0.5),
    right("0.1.1"),  # Q path [0.5, 1.0]: mean 0.75, min 0.5
    wrong("0.1.2"),
    node("0.2", 0.2),
    right("0.2.1"),  # [0.2, 1.0]: mean 0.6
    node("0.3", 0.75),
    right("0.3.1", 0.75),  # [0.75, 0.75]: mean 0.75 (ties 0.1.1), min 0.75 (wins the tie)
)


def test_sft_keeps_the_top_two_correct_solutions_by_mean_then_min_q():
    records = sft_records(SFT_TREE, SFT, DEFAULTS)
    assert [r["response"] for r in records] == [path_text("0.3", "0.3.1"), path_text("0.1", "0.1.1")]
    assert [(r["mean_q"], r["min_q"]) for r in records] == [(0.75, 0.75), (0.75, 0.5)]
    assert records[0]["id"] == "p" and records[0]["question"] == QUESTION
    assert (
        records[0]["prompt"]
        == f"<|user|>:\n{QUESTION}\n\n<|assistant|>: Let's think step by step and solve the problem with code."
    )
    three = sft_records(SFT_TREE, SFT, ExtractOptions(sft_top_k=3))
    assert [r["mean_q"] for r in three] == [0.75, 0.75, pytest.approx(0.6)]


def test_sft_error_filter_applies_after_the_top_k_cut():
    erroring = node("0.3", 0.75, txt="x = 1/0\n<output>ZeroDivisionERROR: division by zero<end_of_output>")
    t = tree(*[erroring if n.id == "0.3" else n for n in SFT_TREE.nodes[1:]])
    # The best solution mentions "ERROR": it is dropped, and the third best does not move up.
    assert [r["response"] for r in sft_records(t, SFT, DEFAULTS)] == [path_text("0.1", "0.1.1")]
    kept = sft_records(t, SFT, ExtractOptions(sft_drop_error=False))
    assert [r["mean_q"] for r in kept] == [0.75, 0.75] and "ERROR" in kept[0]["response"]


def test_a_problem_without_a_correct_answer_gives_nothing():
    t = tree(node("0.1", 0.1), wrong("0.1.1"), node("0.2", -0.5), node("0.2.1", -1.0, answer=TOO_MANY_ERRORS))
    assert sft_records(t, SFT, DEFAULTS) == []
    assert pair_records(t, SFT, DEFAULTS) == []
    stats = extract([t], DEFAULTS).stats
    assert (stats["problems"], stats["problems_with_correct"], stats["sft_records"]) == (1, 0, 0)


# --- step pairs -----------------------------------------------------------------------------------------------

PAIR_TREE = tree(
    node("0.1", 0.6),  # mixed: a right and a wrong answer below
    right("0.1.1"),
    wrong("0.1.2"),
    node("0.2", 0.8),  # right only
    right("0.2.1"),
    node("0.3", -0.5),  # wrong only
    wrong("0.3.1"),
    node("0.4", -0.9),  # code errors only: never a negative
    node("0.4.1", -1.0, answer=TOO_MANY_ERRORS),
    node("0.5", 0.9),  # unexpanded: no outcome
    node("0.6", -0.95),  # too many steps: no outcome
    node("0.6.1", -1.0, answer=TOO_MANY_STEPS),
)


def test_step_pairs_by_hand():
    records = pair_records(PAIR_TREE, SFT, ExtractOptions(final_step_pairs=0))
    # Root: positives [0.2 (0.8), 0.1 (0.6)], negatives [0.3 (-0.5), 0.1 (0.6)]; 0.1 is never its own negative.
    # (0.2, 0.1) has margin 0.2 < 0.5: dropped. Then the walk descends into 0.1 (mixed): one pair.
    assert pairs_of(records) == [
        (text("0.2"), text("0.3"), 2, 2),
        (text("0.1"), text("0.3"), 2, 2),
        (text("0.1.1"), text("0.1.2"), 1, 1),
    ]
    assert [r["step_margin"] for r in records] == [pytest.approx(1.3), pytest.approx(1.1), 2.0]
    assert [r["kind"] for r in records] == ["step"] * 3
    root_prompt = SFT.render_prompt(QUESTION)
    assert [r["prompt"] for r in records] == [root_prompt, root_prompt, root_prompt + text("0.1")]
    stats = extract([PAIR_TREE], ExtractOptions(final_step_pairs=0)).stats
    assert (stats["step_pairs"], stats["pairs_dropped_margin"], stats["pairs_dropped_continuation"]) == (3, 1, 0)


def test_code_error_leaves_are_never_negatives():
    t = tree(node("0.1", 0.5), right("0.1.1"), node("0.2", -0.9), node("0.2.1", -1.0, answer=TOO_MANY_ERRORS))
    assert pair_records(t, SFT, DEFAULTS) == []
    assert len(sft_records(t, SFT, DEFAULTS)) == 1


def test_pair_widen_with_a_single_positive_or_negative():
    many_negs = [wrong(f"0.{k}", -1.0 + k / 100) for k in range(2, 8)]  # six negatives, lowest Q first
    t = tree(right("0.1", 0.9), *many_negs)
    records = pair_records(t, SFT, ExtractOptions(final_step_pairs=0))
    assert pairs_of(records) == [(text("0.1"), text(f"0.{k}"), 1, 4) for k in range(2, 6)]
    many_pos = [right(f"0.{k}", 1.0 - k / 100) for k in range(1, 7)]  # six positives, highest Q first
    t = tree(*many_pos, wrong("0.7"))
    records = pair_records(t, SFT, ExtractOptions(final_step_pairs=0, pair_widen=3))
    assert pairs_of(records) == [(text(f"0.{k}"), text("0.7"), 3, 1) for k in range(1, 4)]
    # Two of each: top-2 both ways, no widening.
    t = tree(right("0.1", 0.9), right("0.2", 0.8), right("0.3", 0.7), wrong("0.4", -0.9), wrong("0.5", -0.8))
    records = pair_records(t, SFT, ExtractOptions(final_step_pairs=0))
    assert [(r["pos"], r["neg"]) for r in records] == [
        (text(p), text(n)) for p in ("0.1", "0.2") for n in ("0.4", "0.5")
    ]


def test_margin_filter_keeps_a_margin_of_exactly_min_margin():
    t = tree(right("0.1", 0.5), wrong("0.2", 0.0), wrong("0.3", 0.1))
    records = pair_records(t, SFT, ExtractOptions(final_step_pairs=0))
    assert [(r["neg"], r["step_margin"]) for r in records] == [(text("0.2"), 0.5)]
    assert len(pair_records(t, SFT, ExtractOptions(final_step_pairs=0, min_margin=0.0))) == 2


def test_edit_distance_filter_drops_near_identical_steps():
    t = tree(
        node("0.1", 1.0, answer="8", correct=True, txt="print(5 + 3) # the sum" + "." * 40),
        node("0.2", -1.0, answer="2", correct=False, txt="print(5 - 3) # the sum" + "." * 40),
    )
    options = ExtractOptions(final_step_pairs=0)
    assert pair_records(t, SFT, options) == []
    assert extract([t], options).stats["pairs_dropped_edit_distance"] == 1
    assert len(pair_records(t, SFT, ExtractOptions(final_step_pairs=0, min_edit_distance=1))) == 1


def test_continuation_check_compares_the_greedy_continuations():
    # Step margin 0.7 > 0, but the positive's continuation averages (0.5 - 0.8) / 2 = -0.15 and the
    # negative's (-0.2 + 0.9) / 2 = 0.35 (reward-model Q-values can disagree with the labels).
    t = tree(node("0.1", 0.5), right("0.1.1", -0.8), node("0.2", -0.2), wrong("0.2.1", 0.9))
    options = ExtractOptions(final_step_pairs=0)
    assert pair_records(t, SFT, options) == []
    assert extract([t], options).stats["pairs_dropped_continuation"] == 1
    kept = pair_records(t, SFT, ExtractOptions(final_step_pairs=0, continuation_check=False))
    assert pairs_of(kept) == [(text("0.1"), text("0.2"), 1, 1)]


def test_continuation_follows_highest_q_for_positives_and_lowest_for_negatives():
    # p = 0.1 (Q 0.3): its greedy continuation takes 0.1.2 (Q 0.9, right), not 0.1.1 (Q -0.9, right):
    # mean (0.3 + 0.9 + 1) / 3. n = 0.2 (Q -0.4): takes 0.2.1 (Q -0.95), not 0.2.2 (Q 0.95):
    # mean (-0.4 - 0.95 - 1) / 3. Had the walk taken the other children the check would fail.
    t = tree(
        node("0.1", 0.3),
        node("0.1.1", -0.9),
        right("0.1.1.1", 1.0),
        node("0.1.2", 0.9),
        right("0.1.2.1", 1.0),
        node("0.2", -0.4),
        node("0.2.1", -0.95),
        wrong("0.2.1.1", -1.0),
        node("0.2.2", 0.95),
        wrong("0.2.2.1", 10.0),
    )
    records = pair_records(t, SFT, ExtractOptions(final_step_pairs=0))
    assert pairs_of(records) == [(text("0.1"), text("0.2"), 1, 1)]


def test_the_queue_descends_into_mixed_children_all_or_most_visited():
    t = tree(
        node("0.1", 0.5, visits=3),
        right("0.1.1"),
        wrong("0.1.2"),
        node("0.2", 0.1, visits=5),
        right("0.2.1"),
        wrong("0.2.2"),
    )
    options = ExtractOptions(final_step_pairs=0)
    # Root: pos [0.1, 0.2], neg [0.2, 0.1]: (0.1, 0.2) has margin 0.4 < 0.5, (0.2, 0.1) a negative margin.
    assert pairs_of(pair_records(t, SFT, options)) == [
        (text("0.1.1"), text("0.1.2"), 1, 1),
        (text("0.2.1"), text("0.2.2"), 1, 1),
    ]
    visited = pair_records(t, SFT, ExtractOptions(final_step_pairs=0, queue="vis_count"))
    assert pairs_of(visited) == [(text("0.2.1"), text("0.2.2"), 1, 1)]
    assert visited[0]["prompt"] == SFT.render_prompt(QUESTION, text("0.2"))


# --- final pairs ----------------------------------------------------------------------------------------------


def test_final_pairs_take_best_correct_against_worst_wrong_full_solutions():
    records = [r for r in pair_records(PAIR_TREE, SFT, DEFAULTS) if r["kind"] == "final"]
    # Correct solutions: 0.2>0.2.1 (mean 0.9), 0.1>0.1.1 (0.8). Wrong: 0.3>0.3.1 (-0.75), 0.1>0.1.2 (-0.2).
    # The code-error solution 0.4>0.4.1 (mean -0.95) is not a negative.
    best, second = path_text("0.2", "0.2.1"), path_text("0.1", "0.1.1")
    worst, next_worst = path_text("0.3", "0.3.1"), path_text("0.1", "0.1.2")
    assert pairs_of(records) == [(p, n, 2, 2) for p in (best, second) for n in (worst, next_worst)]
    assert [r["step_margin"] for r in records] == pytest.approx([1.65, 1.1, 1.55, 1.0])
    assert {r["prompt"] for r in records} == {SFT.render_prompt(QUESTION)}
    one = [r for r in pair_records(PAIR_TREE, SFT, ExtractOptions(final_step_pairs=1)) if r["kind"] == "final"]
    assert pairs_of(one) == [(best, worst, 1, 1)]
    stats = extract([PAIR_TREE], DEFAULTS).stats
    assert (stats["step_pairs"], stats["final_pairs"]) == (3, 4)


# --- edit distance --------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_edit_distance_by_hand():
    assert edit_distance("kitten", "sitting", 20) == 3
    assert edit_distance("kitten", "sitting", 3) == 3
    assert edit_distance("kitten", "sitting", 2) == 2
    assert edit_distance("", "abc", 20) == 3
    assert edit_distance("same", "same", 20) == 0
    assert edit_distance("a" * 1000, "b" * 1000, 20) == 20


@settings(max_examples=300, deadline=None)
@given(st.text("abc", max_size=14), st.text("abc", max_size=14), st.integers(1, 12))
def test_edit_distance_is_levenshtein_capped_at_the_limit(a, b, limit):
    assert edit_distance(a, b, limit) == min(levenshtein(a, b), limit)


def test_edit_distance_is_fast_for_long_steps():
    rng = random.Random(0)
    a = "".join(rng.choice("abcdefgh \n") for _ in range(2000))
    # Each "Z" (absent from a) costs one edit, so five substitutions make a distance of exactly 5.
    b = "".join("Z" if i in (100, 500, 900, 1300, 1700) else ch for i, ch in enumerate(a))
    far = "".join(rng.choice("abcdefgh \n") for _ in range(2000))
    start = time.perf_counter()
    assert edit_distance(a, b, 20) == 5
    assert edit_distance(a, a[:1000] + "Z" * 25 + a[1000:], 20) == 20
    assert edit_distance(a, far, 20) == 20
    assert time.perf_counter() - start < 5  # the full table would be 4 million cells per call


# --- a real search --------------------------------------------------------------------------------------------


def adder_trees(n: int) -> list[Tree]:
    problems = [Problem(f"p{i}", f"What is {10 + i} plus {20 + 3 * i}?", str(30 + 4 * i)) for i in range(n)]
    components = Components(ScriptedPolicy(adder), FakeInProcessVerifier(), FakeExactChecker(), None)
    engine = Engine(components, max_in_flight=8)
    strategy = MCTS(MCTSOptions(expand_samples=4))
    return asyncio.run(engine.run(problems, strategy, StepFormat.from_options(), Budget(samples=6)))


def test_records_from_a_real_mcts_tree_reparse_with_the_step_format():
    # The adder world slips (writes a - b) in some first steps; everything after the first step is forced.
    trees = adder_trees(4)
    result = extract(trees, ExtractOptions(min_edit_distance=0), SFT)
    assert result.stats["problems_with_correct"] == 4 and result.sft and result.pairs
    for record in result.sft:
        t = next(t for t in trees if t.id == record["id"])
        a, b = (x for x in t.question.removeprefix("What is ").removesuffix("?").split(" plus "))
        assert record["prompt"] == SFT.render_prompt(t.question)
        assert SFT.parse(record["response"]).final_answer == t.answer
        program = extract_program(record["response"]).split("\n")
        assert [line for line in program if line and not line.startswith("#")] == [
            f"result = {a} + {b}",
            "print(result)",
        ]
    for record in result.pairs:
        t = next(t for t in trees if t.id == record["id"])
        assert record["prompt"] == SFT.render_prompt(t.question)  # the slip is in the first step
        assert " + " in record["pos"] and " - " in record["neg"]
        if record["kind"] == "final":
            assert SFT.parse(record["pos"]).final_answer == t.answer != SFT.parse(record["neg"]).final_answer
    # An operator slip is a one- or two-character edit: the default edit-distance filter drops every pair.
    strict = extract(trees, DEFAULTS)
    assert strict.pairs == [] and strict.stats["pairs_dropped_edit_distance"] == len(result.pairs)


# --- files ----------------------------------------------------------------------------------------------------


def write_trees(path: Path, trees: list[Tree]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trees), encoding="utf-8")


def test_extract_files_reads_every_trees_file_under_a_folder(tmp_path):
    # Round 2 searched problem p again (another tree): both trees give records.
    write_trees(tmp_path / "run" / "round_1" / "search" / "trees.jsonl", [PAIR_TREE, tree(wrong("0.1"), tree_id="q")])
    write_trees(tmp_path / "run" / "round_2" / "search" / "trees.jsonl", [SFT_TREE])
    out = tmp_path / "out"
    summary = extract_files([tmp_path / "run"], out, DEFAULTS)
    sft, pairs = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "pairs.jsonl")
    assert summary["trees"] == 3 and summary["problems"] == 2 and summary["problems_with_correct"] == 1
    assert summary["sft_records"] == len(sft) == 4
    assert [r["mean_q"] for r in sft] == [0.9, 0.8, 0.75, 0.75]
    assert summary["step_pairs"] + summary["final_pairs"] == len(pairs)
    assert [Path(p).parts[-3] for p in summary["tree_files"]] == ["round_1", "round_2"]
    assert not list(out.glob("*.tmp"))
    round_2 = tmp_path / "run" / "round_2"
    assert extract_files([round_2 / "search" / "trees.jsonl"], out, DEFAULTS)["trees"] == 1
    # `rstar rescore` copies of the same trees are not read again when a folder is searched.
    write_trees(round_2 / "search" / "rescore-checker" / "trees.jsonl", [SFT_TREE])
    assert extract_files([tmp_path / "run"], out, DEFAULTS)["trees"] == 3
    assert extract_files([round_2, round_2 / "search" / "trees.jsonl"], out, DEFAULTS)["trees"] == 1


def test_extract_files_without_trees_is_an_error(tmp_path):
    with pytest.raises(RstarError, match=r"no trees\.jsonl under"):
        extract_files([tmp_path], tmp_path / "out", DEFAULTS)
    with pytest.raises(RstarError, match="no such file or folder"):
        extract_files([tmp_path / "missing"], tmp_path / "out", DEFAULTS)


def test_write_and_read_jsonl(tmp_path):
    records = [{"a": 1, "text": "ünï\ncode"}, {"b": None}]
    write_jsonl(tmp_path / "x" / "r.jsonl", records)
    assert read_jsonl(tmp_path / "x" / "r.jsonl") == records
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        read_jsonl(tmp_path / "bad.jsonl")


# --- importers ------------------------------------------------------------------------------------------------


def _steps(*steps: str, output: str, answer: str) -> str:
    """A solution in the original's code format: steps ending in ``<end_of_step>``, then output and answer."""
    body = "\n<end_of_step>\n\n".join(steps)
    return f"<code>\n{body}\n<end_of_code>\n<output>{output}<end_of_output>\n<answer>{answer}<end_of_answer>"


# Records written here in the formats of the original's released files (its SFT data: a JSON list of
# {query, response}; its PPM pairs: a JSON list of {prompt, pos, neg, pos_count, neg_count}, the prompt
# "<|user|>:\n" + question, each side "\n<|assistant|>: " + the text the model wrote).
RSTAR_SFT = [
    {
        "query": "What is $3 \\times 4 - 5$?",
        "response": _steps(
            "# Step 1: Multiply 3 by 4\nproduct = 3 * 4",
            "# Step 2: Subtract 5 from the product\nresult = product - 5",
            "# Now print the final answer\nprint(result)",
            output="7",
            answer="The value is \\boxed{7}.",
        ),
    },
    {
        "query": "A train travels at 60 miles per hour for 2.5 hours. How many miles does it travel?",
        "response": _steps(
            "# Step 1: Distance is speed times time\ndistance = 60 * 2.5",
            "# Now print the final answer\nprint(int(distance))",
            output="150",
            answer="The train travels \\boxed{150} miles.",
        ),
    },
    {
        "query": "Solve $2x + 6 = 14$ for $x$.",
        "response": _steps(
            "# Step 1: Subtract 6 from both sides, then divide by 2\nx = (14 - 6) // 2",
            "# Now print the final answer\nprint(x)",
            output="4",
            answer="So $x = \\boxed{4}$.",
        ),
    },
]
_HEAD = "\n<|assistant|>: Let's think step by step and solve the problem with code."
RSTAR_PAIRS = [
    {  # whole solutions, the wrong one off by one
        "prompt": "<|user|>:\nA shop sells 3 pens for $2. How many dollars do 12 pens cost?",
        "pos": _HEAD + _steps("# Step 1: 4 groups of 3 pens\nprint(12 // 3 * 2)", output="8", answer="\\boxed{8}"),
        "neg": _HEAD + _steps("# Step 1: Round the price up\nprint(12 * 2 // 3 + 1)", output="9", answer="\\boxed{9}"),
        "pos_count": 3,
        "neg_count": 1,
    },
    {  # one step: the same question, continued well and badly
        "prompt": "<|user|>:\nHow many days are there from March 3 to March 17, counting both days?",
        "pos": _HEAD + "<code>\n# Step 1: Count both ends\ndays = 17 - 3 + 1\n<end_of_step>",
        "neg": _HEAD + "<code>\n# Step 1: Subtract the dates\ndays = 17 - 3\n<end_of_step>",
        "pos_count": 2,
        "neg_count": 2,
    },
    {
        "prompt": "<|user|>:\nWhat is the remainder when 100 is divided by 7?",
        "pos": _HEAD + _steps("# Step 1: The remainder\nprint(100 % 7)", output="2", answer="\\boxed{2}"),
        "neg": _HEAD + _steps("# Step 1: The quotient\nprint(100 // 7)", output="14", answer="\\boxed{14}"),
        "pos_count": 1,
        "neg_count": 4,
    },
]


@pytest.fixture
def rstar_format(tmp_path: Path) -> Path:
    """A folder holding ``sft_example.json`` and ``ppm_pairs_example.json`` in the original's formats."""
    (tmp_path / "sft_example.json").write_text(json.dumps(RSTAR_SFT, indent=1), encoding="utf-8")
    (tmp_path / "ppm_pairs_example.json").write_text(json.dumps(RSTAR_PAIRS, indent=1), encoding="utf-8")
    return tmp_path


def test_import_rstar_sft_example(rstar_format):
    records = import_rstar_sft(rstar_format / "sft_example.json", SFT)
    raw = json.loads((rstar_format / "sft_example.json").read_text())
    assert len(records) == len(raw) == 3
    first = records[0]
    assert first["question"] == raw[0]["query"] and first["response"] == raw[0]["response"]
    assert first["prompt"] == SFT.render_prompt(raw[0]["query"])
    assert (
        first["id"].startswith("sft-")
        and first["id"] == import_rstar_sft(rstar_format / "sft_example.json", SFT)[0]["id"]
    )
    assert [SFT.parse(r["response"]).final_answer for r in records] == ["7", "150", "4"]


def test_import_rstar_pairs_example(rstar_format):
    records = import_rstar_pairs(rstar_format / "ppm_pairs_example.json")
    raw = json.loads((rstar_format / "ppm_pairs_example.json").read_text())
    assert len(records) == 3
    assert [(r["prompt"], r["pos"], r["neg"], r["pos_count"], r["neg_count"]) for r in records] == [
        (x["prompt"], x["pos"], x["neg"], x["pos_count"], x["neg_count"]) for x in raw
    ]
    assert {r["kind"] for r in records} == {"imported"}
    assert records[1]["question"] == "How many days are there from March 3 to March 17, counting both days?"


def test_importers_accept_json_lines_and_name_the_bad_record(tmp_path):
    good = tmp_path / "sft.jsonl"
    good.write_text(
        json.dumps({"query": "Q1", "response": "R1"}) + "\n" + json.dumps({"query": "Q2", "response": "R2"}) + "\n"
    )
    assert [r["response"] for r in import_rstar_sft(good, SFT)] == ["R1", "R2"]
    bad = tmp_path / "sft.json"
    bad.write_text(json.dumps([{"query": "Q1", "response": "R1"}, {"query": "Q2"}]))
    with pytest.raises(DataError, match=r"sft.json: record 1: missing key 'response'"):
        import_rstar_sft(bad, SFT)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(
        json.dumps([{"prompt": "P", "pos": "a", "neg": "b"}, {"prompt": "P", "pos": "a", "neg": "b", "pos_count": "2"}])
    )
    with pytest.raises(DataError, match=r"pairs.json: record 1: 'pos_count' must be of type int"):
        import_rstar_pairs(pairs)
    pairs.write_text(json.dumps([{"prompt": "P", "pos": "a", "neg": "b"}]))
    assert import_rstar_pairs(pairs)[0]["pos_count"] == 1
    notalist = tmp_path / "x.json"
    notalist.write_text("3")
    with pytest.raises(DataError, match="expected a JSON list"):
        import_rstar_sft(notalist, SFT)


def test_the_prompt_has_one_home_the_step_format():
    """extract.prompt / extract.few_shot are gone: a recipe that still sets them is told where they went."""
    from rstar.options import options_problems

    problems = options_problems(ExtractOptions, {"prompt": "sft", "sft_top_k": 1}, "extract")
    assert len(problems) == 1 and "records are rendered with the recipe's top-level step_format" in problems[0]
    assert ExtractOptions(sft_top_k=1).sft_top_k == 1


def test_records_are_rendered_with_the_given_step_format():
    few_shot = StepFormat.from_options("bootstrap", 2)
    records = extract([PAIR_TREE], DEFAULTS, few_shot).pairs
    assert records and all(r["prompt"].startswith(few_shot.render_prompt(QUESTION)) for r in records)
    assert all(r["prompt"].startswith(SFT.render_prompt(QUESTION)) for r in extract([PAIR_TREE], DEFAULTS, SFT).pairs)
