"""The viewer's data, without a browser: where trees are found, problem statuses, node outcomes, the chosen path
and the incremental reading of a file a search is still appending to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rstar_view.trees import (
    TreeFile,
    TreeStore,
    chosen_node,
    find_sources,
    node_outcomes,
    path_to,
    problem_status,
    source_label,
    tree_view,
)
from view_helpers import CELLS, big_tree, read_trees

from rstar.errors import DataError
from rstar.steps import TOO_MANY_ERRORS, TOO_MANY_STEPS


def node(node_id: str, **fields):
    parent = node_id.rsplit(".", 1)[0] if "." in node_id else None
    base = {"id": node_id, "parent": parent, "depth": node_id.count("."), "text": f"step {node_id}", "output": None}
    base.update({"visits": 1, "q_value": 0.0, "value": None, "terminal": False, "final_answer": None, "correct": None})
    return {**base, **fields}


def tree(problem: str = "p0", nodes=None, **fields):
    base = {"id": problem, "question": f"What is {problem}?", "answer": "3", "strategy": "mcts", "prediction": None}
    return {**base, "correct": None, "usage": {}, "nodes": nodes or [node("0")], **fields}


def write_trees(path: Path, *trees) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(t) + "\n" for t in trees))
    return path


# --- finding trees -------------------------------------------------------------------------------------------


def test_a_run_folder_gives_every_stage_and_evaluation_in_natural_order(tmp_path):
    for folder in ("round_10/search", "round_2/search", "round_2/evaluate/greedy", "round_2/evaluate/mcts_ppm"):
        write_trees(tmp_path / folder / "trees.jsonl", tree())
    (tmp_path / "round_2" / "extract").mkdir()
    write_trees(tmp_path / ".cache" / "trees.jsonl", tree())  # hidden folders are not the run's
    sources = find_sources(tmp_path)
    assert [s.key for s in sources] == [
        "round_2/evaluate/greedy",
        "round_2/evaluate/mcts_ppm",
        "round_2/search",
        "round_10/search",
    ]
    assert [s.label for s in sources] == [s.key for s in sources]


def test_a_compare_folder_names_its_cells_label_at_budget(tmp_path):
    write_trees(tmp_path / "cells" / "mcts" / "samples_16" / "search" / "trees.jsonl", tree())
    write_trees(tmp_path / "cells" / "mcts" / "samples_4" / "search" / "trees.jsonl", tree())
    write_trees(tmp_path / "cells" / "beam" / "tokens_2000" / "search" / "trees.jsonl", tree())
    assert [s.label for s in find_sources(tmp_path)] == ["beam@2000 tokens", "mcts@4", "mcts@16"]
    assert source_label("cells/mcts/samples_4/extra/search") == "cells/mcts/samples_4/extra/search"


def test_a_search_folder_a_stage_folder_and_a_file(tmp_path):
    file = write_trees(tmp_path / "run" / "search" / "trees.jsonl", tree())
    assert [(s.key, s.label) for s in find_sources(tmp_path / "run")] == [("search", "search")]
    assert [(s.key, s.label) for s in find_sources(tmp_path / "run" / "search")] == [(".", "search")]
    (source,) = find_sources(file)
    assert (source.key, source.label, source.path) == ("trees.jsonl", str(file), file)


def test_an_empty_folder_has_no_trees_yet_and_a_missing_path_is_an_error(tmp_path):
    assert find_sources(tmp_path) == []
    with pytest.raises(DataError, match="no such file or folder"):
        find_sources(tmp_path / "nope")


def test_the_real_compare_folder(compare_folder):
    sources = find_sources(compare_folder)
    assert sorted((s.label, s.key) for s in sources) == sorted(CELLS.items())


# --- statuses, outcomes, the chosen path ---------------------------------------------------------------------


def test_problem_status():
    assert problem_status(tree(prediction="3", correct=True)) == "correct"
    assert problem_status(tree(prediction="4", correct=False)) == "wrong"
    assert problem_status(tree(prediction=None, correct=False)) == "unanswered"
    assert problem_status(tree(prediction="4", correct=None, answer=None)) == "unchecked"


def test_node_outcomes_follow_the_search_rules():
    nodes = [
        node("0", terminal=True),  # a closed root is still the root
        node("0.1"),  # a step with children
        node("0.1.1", terminal=True, final_answer="3", correct=True),
        node("0.1.2", terminal=True, final_answer="4", correct=False),
        node("0.1.3", terminal=True, final_answer="5"),  # no reference: not checked
        node("0.1.4", terminal=True, final_answer=TOO_MANY_ERRORS, output="NameError: x"),
        node("0.1.5", terminal=True, final_answer=TOO_MANY_STEPS),
        node("0.1.6", output="ZeroDivisionError: division by zero"),  # failed, below the error threshold
        node("0.1.7", terminal=True),  # stopped without an answer
        node("0.1.8", output="12"),  # not expanded yet
        node("0.2", terminal=True),  # closed by MCTS, but it has a child: a step
        node("0.2.1", output="Error: the output limit"),
    ]
    assert node_outcomes(nodes) == [
        "root",
        "step",
        "correct",
        "wrong",
        "answer",
        "error",
        "cut",
        "error",
        "cut",
        "open",
        "step",
        "error",
    ]


def test_the_chosen_node_has_the_prediction_and_the_highest_q_then_visits_then_depth():
    nodes = [
        node("0"),
        node("0.1"),
        node("0.1.1", final_answer="7", q_value=0.2, visits=5),
        node("0.2", final_answer="7", q_value=0.9, visits=1),
        node("0.3", final_answer="8", q_value=1.0, visits=9),  # a better Q, another answer
        node("0.1.2", final_answer="7", q_value=0.9, visits=3),
    ]
    assert chosen_node(tree(nodes=nodes, prediction="7")) == "0.1.2"
    nodes[5]["visits"] = 1
    assert chosen_node(tree(nodes=nodes, prediction="7")) == "0.2"  # equal Q and visits: the shallower
    assert chosen_node(tree(nodes=nodes, prediction=None)) is None
    assert chosen_node(tree(nodes=nodes, prediction="9")) is None
    assert path_to(nodes, "0.1.2") == ["0", "0.1", "0.1.2"]
    assert path_to(nodes, None) == []


def test_tree_view_adds_status_chosen_path_and_outcomes_without_changing_the_tree():
    t = big_tree(300, seed=3)
    original = json.dumps(t)
    view = tree_view(t)
    assert json.dumps(t) == original
    assert view["status"] == problem_status(t)
    chosen = next(n for n in view["nodes"] if n["id"] == view["chosen"])
    assert chosen["final_answer"] == t["prediction"] and chosen["q_value"] == 1.0
    assert view["path"][0] == "0" and view["path"][-1] == view["chosen"]
    assert [{k: v for k, v in n.items() if k != "outcome"} for n in view["nodes"]] == t["nodes"]


def test_every_real_tree_has_a_chosen_path_to_its_prediction(compare_folder):
    strategies = set()
    for key in CELLS.values():
        for t in read_trees(compare_folder / key / "trees.jsonl").values():
            strategies.add(t["strategy"])
            view = tree_view(t)
            if t["prediction"] is None:
                assert view["path"] == []
                continue
            by_id = {n["id"]: n for n in view["nodes"]}
            assert by_id[view["chosen"]]["final_answer"] == t["prediction"]
            assert [by_id[i]["parent"] for i in view["path"][1:]] == view["path"][:-1]
            assert by_id[view["chosen"]]["outcome"] == ("correct" if t["correct"] else "wrong")
    assert strategies == {"greedy", "best_of_n", "beam", "mcts"}


# --- reading a file a search is appending to -----------------------------------------------------------------


def test_a_tree_file_is_read_a_whole_line_at_a_time(tmp_path):
    path = tmp_path / "trees.jsonl"
    line = json.dumps(tree("p0")) + "\n"
    path.write_text(line[:20])
    file = TreeFile(path)
    assert file.refresh() is False and file.entries == {}
    with path.open("a") as fh:
        fh.write(line[20:])
    assert file.refresh() is True and list(file.entries) == ["p0"]
    assert file.refresh() is False
    with path.open("a") as fh:
        fh.write(json.dumps(tree("p1")) + "\n" + json.dumps(tree("p0", prediction="3")) + "\n")
    assert file.refresh() is True
    assert list(file.entries) == ["p0", "p1"]
    assert file.read("p0") == tree("p0", prediction="3")  # a later line replaces an earlier one
    assert file.entries["p0"].summary == {
        "id": "p0",
        "question": "What is p0?",
        "answer": "3",
        "strategy": "mcts",
        "prediction": "3",
        "status": "unchecked",
        "nodes": 1,
        "tokens": 0,
    }
    assert file.read("p1") == tree("p1") and file.read("p2") is None


def test_a_rewritten_file_is_read_again_and_bad_lines_are_warnings(tmp_path):
    path = write_trees(tmp_path / "trees.jsonl", tree("p0"), tree("p1"))
    file = TreeFile(path)
    file.refresh()
    path.write_text("not json\n" + json.dumps({"id": "x"}) + "\n" + json.dumps(tree("p2")) + "\n")
    file.refresh()
    assert list(file.entries) == ["p2"] and file.read("p2") == tree("p2")
    assert file.warnings == [
        f"{path}:1: not a JSON line (Expecting value: line 1 column 1 (char 0))",
        f"{path}:2: not a tree (a JSON object with 'id' and 'nodes')",
    ]


def test_a_last_line_without_a_newline_is_read_once_it_is_a_whole_tree(tmp_path):
    path = tmp_path / "trees.jsonl"
    line = json.dumps(tree("p1"))
    path.write_text(json.dumps(tree("p0")) + "\n" + line[:-1])
    file = TreeFile(path)
    file.refresh()
    assert list(file.entries) == ["p0"] and file.warnings == []  # still being written
    with path.open("a") as fh:
        fh.write(line[-1])
    file.refresh()
    assert list(file.entries) == ["p0", "p1"] and file.read("p1") == tree("p1")  # a file written by hand
    with path.open("a") as fh:
        fh.write('\n{"id": "p2", "nod')
    file.refresh(final=True)  # the file is complete: what is left is a broken line
    assert list(file.entries) == ["p0", "p1"] and file.warnings[0].startswith(f"{path}:3: not a JSON line")


def test_the_store_follows_new_trees_and_new_files(tmp_path):
    write_trees(tmp_path / "round_1" / "search" / "trees.jsonl", tree("p0", prediction="3", correct=True))
    store = TreeStore(tmp_path, min_interval_s=0)
    first = store.refresh()
    index = store.index()
    assert [s["key"] for s in index["sources"]] == ["round_1/search"]
    assert [(p["id"], p["status"], p["nodes"]) for p in index["problems"]] == [("p0", "correct", 1)]
    assert store.refresh() == first
    with (tmp_path / "round_1" / "search" / "trees.jsonl").open("a") as fh:
        fh.write(json.dumps(tree("p1")) + "\n")
    second = store.refresh()
    assert second != first and len(store.index()["problems"]) == 2
    write_trees(tmp_path / "round_1" / "evaluate" / "greedy" / "trees.jsonl", tree("p0"))
    assert store.refresh() != second
    assert [s["key"] for s in store.index()["sources"]] == ["round_1/evaluate/greedy", "round_1/search"]
    assert store.tree("round_1/search", "p1")["status"] == "unanswered"
    assert store.tree("round_1/search", "nope") is None and store.tree("nope", "p1") is None
