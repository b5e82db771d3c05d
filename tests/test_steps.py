"""The step format of ALGORITHM.md section 2, including the fixed answer-extraction bugs."""

from __future__ import annotations

import pytest

from rstar.steps import StepFormat, extract_answer, extract_program
from rstar.types import Verdict


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<answer>The answer is \\boxed{16}.<end_of_answer>", "16"),
        ("\\boxed{\\frac{20}{3}}", "\\frac{20}{3}"),
        # the original cut at ".\n" before looking for the box and returned "<answer>We compute it"
        ("<answer>We compute it.\nThus \\boxed{5}<end_of_answer>", "5"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\text{Monday}}", "Monday"),
        ("\\boxed{\\text{and}}", None),
        ("unclosed \\boxed{3", None),
        ("no box here", None),
        ("\\boxed{}", None),
        ("\\boxed{(1, {2})}", "(1, {2})"),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_program_accumulates_the_current_code_block():
    fmt = StepFormat.from_options()
    path = ["<code>\n# Step 1\nx = 3\n<end_of_step>", "\n# Step 2\ny = x * 2\n<end_of_step>"]
    program = fmt.program(path, "\n# print\nprint(y)\n<end_of_code>")
    assert program.split("\n") == ["# Step 1", "x = 3", "", "# Step 2", "y = x * 2", "", "# print", "print(y)"]


def test_program_history_stops_at_a_closed_code_block():
    fmt = StepFormat.from_options()
    closed = "\nprint(1)\n<end_of_code>\n<output>1<end_of_output>"
    program = fmt.program(["<code>\nz = 1\n<end_of_step>", closed], "<code>\nw = 2\n<end_of_step>")
    assert "z = 1" not in program and "w = 2" in program


def test_code_on_the_code_line_is_dropped_as_in_the_original():
    assert extract_program("<code>x = 1\ny = 2\n<end_of_code>") == "y = 2"


def test_text_without_code_tag_runs_whole():
    assert extract_program("print(1)\n<end_of_step>") == "print(1)\n"


def test_parse_uses_the_boxed_rule():
    fmt = StepFormat.from_options()
    assert fmt.parse("\n<answer>so \\boxed{4}<end_of_answer>").final_answer == "4"
    assert fmt.parse("# boxed in a comment\nx=1").is_answer  # faithful quirk, ALGORITHM.md 2.4
    assert not fmt.parse("x = 1\n<end_of_step>").is_answer


@pytest.mark.parametrize(
    ("verdict", "observation", "is_error"),
    [
        (Verdict("ok", "6\n"), "6", False),
        (Verdict("ok", "0.333333333\n"), "0.3333", False),
        (Verdict("ok", "16.0"), "16.0", False),
        (Verdict("error", "", "NameError: name 'x' is not defined"), "NameError: name 'x' is not defined", True),
        (Verdict("timeout", "", "time limit of 10 s exceeded"), "TimeoutError: time limit of 10 s exceeded", True),
        (Verdict("memory", ""), "MemoryError: memory", True),
        (Verdict("ok", "x" * 2000), "x" * 512 + "..." + "x" * 512, False),
    ],
)
def test_observation(verdict, observation, is_error):
    fmt = StepFormat.from_options()
    assert fmt.observation(verdict) == observation
    assert fmt.is_error(observation) is is_error


def test_output_block_only_after_end_of_code():
    fmt = StepFormat.from_options()
    assert not fmt.shows_output("x = 1\n<end_of_step>")
    step = "print(6)\n<end_of_code>"
    assert fmt.shows_output(step)
    assert fmt.with_output(step, "6") == "print(6)\n<end_of_code>\n<output>6<end_of_output>"


def test_sft_prompt_matches_the_released_data_format():
    fmt = StepFormat.from_options(prompt="sft")
    prompt = fmt.render_prompt("What is 1+1?")
    assert (
        prompt == "<|user|>:\nWhat is 1+1?\n\n<|assistant|>: Let's think step by step and solve the problem with code."
    )


def test_bootstrap_prompt_has_examples_and_the_question_last():
    fmt = StepFormat.from_options(prompt="bootstrap", few_shot=1)
    prompt = fmt.render_prompt("What is 1+1?", "<code>\n")
    assert prompt.count("Question:") == 3  # the format description, the example, the problem
    assert "Here is 1 worked example." in prompt
    assert prompt.endswith("Question: What is 1+1?\n<code>\n")


def test_unknown_prompt_is_a_config_error():
    from rstar.errors import ConfigError

    with pytest.raises(ConfigError, match="bootstrap"):
        StepFormat.from_options(prompt="nope")
