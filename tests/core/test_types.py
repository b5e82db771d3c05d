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
    Usage(policy_calls=2, generated_tokens=10),
    Budget(samples=8),
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


def test_types_are_frozen():
    with pytest.raises(AttributeError):
        Problem("1", "q").question = "other"  # type: ignore[misc]
