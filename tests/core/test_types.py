from __future__ import annotations

import json

import pytest

from rstar.types import (
    Budget,
    CodeJob,
    GenerationRequest,
    GenerationResult,
    Node,
    Problem,
    RewardRequest,
    Sample,
    Tree,
    Usage,
    Verdict,
)

EXAMPLES = [
    Problem("1", "What is 2+2?", "4", {"level": 1}),
    Problem("2", "Roots?", ["3", "-3"]),
    GenerationRequest("prompt", n=3, stop=("<end_of_step>",), seed=5),
    GenerationResult((Sample("x<end_of_step>", "stop", "<end_of_step>", 3), Sample("y", "eos")), prompt_tokens=7),
    CodeJob("print(1)", timeout_s=2),
    Verdict("error", "", "ZeroDivisionError: division by zero", 0.01),
    RewardRequest("p", "s"),
    Usage(policy_calls=2, generated_tokens=10, reward_calls=3, reward_tokens=41),
    Budget(samples=8),
    Budget(samples=8, max_tokens=2000),
    Tree(
        "1",
        "q",
        "4",
        "best_of_n",
        "4",
        True,
        Usage(1, 2, 3, 4, 5, 0.5),
        (Node("0", None, 0, ""), Node("0.1", "0", 1, "<code>x", "4", 1, 0.5, 0.5, True, "4", True)),
    ),
]


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: type(o).__name__)
def test_json_round_trip(obj):
    data = json.loads(json.dumps(obj.to_dict()))
    assert type(obj).from_dict(data) == obj


def test_unknown_fields_are_rejected():
    with pytest.raises(ValueError, match="bogus"):
        Problem.from_dict({"id": "1", "question": "q", "bogus": 1})


def test_usage_adds_up():
    assert Usage(1, 2) + Usage(3, 4, verifier_jobs=1) == Usage(4, 6, verifier_jobs=1)
    assert Usage(reward_tokens=5) + Usage(reward_tokens=7) == Usage(reward_tokens=12)


def test_a_tree_line_written_before_reward_tokens_were_counted_still_loads():
    line = (
        '{"id": "a1", "question": "What is 12 plus 30?", "answer": "42", "strategy": "best_of_n", '
        '"prediction": "42", "correct": true, "usage": {"policy_calls": 7, "generated_tokens": 78, '
        '"prompt_tokens": 2267, "verifier_jobs": 6, "reward_calls": 2, "wall_time_s": 1.4665}, '
        '"nodes": [{"id": "0", "parent": null, "depth": 0, "text": "", "output": null, "visits": 3, '
        '"q_value": 0.0, "value": null, "terminal": false, "final_answer": null, "correct": null}]}'
    )
    tree = Tree.from_dict(json.loads(line))
    assert tree.usage.reward_calls == 2 and tree.usage.reward_tokens == 0
    assert tree.usage.generated_tokens == 78 and tree.usage.wall_time_s == 1.4665


def test_the_token_cap_is_off_by_default_and_positive():
    assert Budget().max_tokens is None
    assert Budget.from_dict({"max_tokens": 300}).max_tokens == 300
    with pytest.raises(ValueError, match="max_tokens"):
        Budget.from_dict({"max_tokens": 0})


def test_types_are_frozen():
    with pytest.raises(AttributeError):
        Problem("1", "q").question = "other"  # type: ignore[misc]
