"""The step format of ALGORITHM.md section 2, including the fixed answer-extraction bugs."""

from __future__ import annotations

import asyncio

import pytest

from rstar.steps import StepFormat, extract_answer, extract_program
from rstar.types import CodeJob, Verdict


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
    lines = ["# ========", "# Step 1", "x = 3", "", "# Step 2", "y = x * 2", "", "# print", "print(y)"]
    assert program.split("\n") == lines


def test_program_history_stops_at_a_closed_code_block():
    fmt = StepFormat.from_options()
    closed = "\nprint(1)\n<end_of_code>\n<output>1<end_of_output>"
    program = fmt.program(["<code>\nz = 1\n<end_of_step>", closed], "<code>\nw = 2\n<end_of_step>")
    assert "z = 1" not in program and "w = 2" in program


def test_code_on_the_code_line_is_dropped_as_in_the_original():
    assert extract_program("<code>x = 1\ny = 2\n<end_of_code>") == "# ========\ny = 2"


def test_each_code_block_is_a_segment_and_text_after_end_of_code_is_skipped():
    text = "intro\n<code>\na = 1\n<end_of_code>\n<output>1<end_of_output>\n<code>\nb = 2\n<end_of_step>\n"
    assert extract_program(text) == "# ========\na = 1\n\n# ========\nb = 2"
    assert extract_program("<code>\n<end_of_code>") == "# ========"  # not empty: the whole text is not used


def test_text_without_code_tag_runs_whole():
    assert extract_program("  print(1)\n<end_of_step>") == "print(1)"  # stripped, as the original


def test_program_history_skips_answer_steps():
    # An answer step without an answer (boxed, nothing extracted) is not code: the original's history
    # collects interpreter steps only (ALGORITHM.md 2.5).
    fmt = StepFormat.from_options()
    path = ["<code>\nx = 3\n<end_of_step>", "\nx = 0  # \\boxed{}\n<end_of_step>"]
    assert fmt.program(path, "\nprint(x)\n<end_of_code>") == "# ========\nx = 3\n\nprint(x)"


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
        # truncated before it is stripped: the trailing newline is one of the last 512 characters
        (Verdict("ok", "x" * 2000 + "\n"), "x" * 512 + "..." + "x" * 511, False),
        # rounded with a newline when that is shorter than the raw output
        (Verdict("ok", "1.23456"), "1.23456", False),
        (Verdict("ok", "1.23456\n"), "1.2346", False),
        (Verdict("ok", "an error: none\n"), "an error: none", True),  # a printed "error" is an error
        (Verdict("error", "", "Exception: boom"), "Exception: boom", False),  # no "error" in it
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


# --- the original's interpreter and answer extraction, as options ------------------------------------

ORIGINAL_TOOL_CASES = [
    ("x = 3", ""),
    ("x = 3\nx * 2", "6"),
    ("x = 2\nprint(x)", "2\n"),
    ("print(1)\nx = 2", ""),  # one print that is not the last statement: its output is lost
    ("a = 1\nprint(a)\nb = 2\nprint(b)", "a: 1\nb: 2\n"),  # two prints: labelled
    ("a = 1\nprint(a)\nprint(a + 1)\nc = 1 / 0", "a: 1\na + 1: 2\n"),  # nothing after the last print runs
    ("for i in range(2):\n    print(i)\nprint('done')", "i: 0\n1\n'done': done\n"),
    ("1 / 0", "ZeroDivisionError: division by zero"),
    ("print(1)\nprint(y)", "NameError: name 'y' is not defined"),
    ("import math\nmath.sqrt(16)", "4.0"),
]


@pytest.mark.parametrize(("program", "expected"), ORIGINAL_TOOL_CASES)
def test_original_tool_program_prints_what_the_original_tool_returned(program, expected):
    import contextlib
    import io

    from rstar.steps import original_tool_program

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(original_tool_program(program), {"__name__": "__main__"})
    assert out.getvalue() == expected


def test_interpreter_original_wraps_the_program_and_the_sandbox_runs_it():
    from rstar_sandbox.subprocess_verifier import SubprocessOptions, SubprocessVerifier

    from rstar.steps import original_tool_program

    fmt = StepFormat.from_options(interpreter="original")
    path = ["<code>\n# Step 1\na = 1\nprint(a)\n<end_of_step>"]
    program = fmt.program(path, "\nb = 2\nprint(b)\n<end_of_code>")
    assert program == original_tool_program("# ========\n# Step 1\na = 1\nprint(a)\n\nb = 2\nprint(b)")
    assert StepFormat.from_options().program(path, "\nb = 2\nprint(b)\n<end_of_code>").startswith("# ========")
    verifier = SubprocessVerifier(SubprocessOptions())
    try:
        (verdict,) = asyncio.run(verifier.run([CodeJob(program)]))
    finally:
        verifier.close()
    assert verdict.status == "ok" and fmt.observation(verdict) == "a: 1\nb: 2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>We compute it.\nThus \\boxed{5}.<end_of_answer>", "<answer>We compute it"),  # the pitfall
        ("<answer>The answer is \\boxed{\\frac{1}{2}}.<end_of_answer>", "\\frac{1}{2}"),
        ("The answer is boxed 5.", "The answer is boxed 5"),  # no \boxed{: the whole text
        ("\\boxed{5", ""),  # braces never close
        ("so \\boxed{\\text{yes}}", "yes"),
        ("\\boxed{1} or \\boxed{2}", "2"),
    ],
)
def test_original_answer_extraction(text, expected):
    from rstar.steps import extract_answer_original

    assert extract_answer_original(text) == expected


def test_answer_extraction_option_switches_the_parser():
    text = "<answer>We compute it.\nThus \\boxed{5}.<end_of_answer>"
    assert StepFormat.from_options().parse(text).final_answer == "5"
    assert StepFormat.from_options(answer_extraction="original").parse(text).final_answer == "<answer>We compute it"
    # an empty extraction is no answer (the original's empty action: an ordinary step)
    assert StepFormat.from_options(answer_extraction="original").parse("\\boxed{5").final_answer is None
