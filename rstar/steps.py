"""The step format: code-augmented chain of thought (ALGORITHM.md section 2), in one object.

A solution is one code block whose steps are Python with the reasoning in comments, then the
interpreter output (inserted by the system, never generated), then a natural-language answer::

    <code>
    # Step 1: ...
    x = 3
    <end_of_step>
    # Now print the final answer
    print(x)
    <end_of_code>
    <output>3<end_of_output>
    <answer>The answer is \\boxed{3}.<end_of_answer>

Prompt rendering, search, data extraction, training and reward scoring all use `StepFormat`,
so training and inference cannot disagree about it.

Deliberate differences from the original, each with an option that restores it:

* ``answer_extraction: last_box`` (default): the final answer is the content of the *last*
  ``\\boxed{...}`` found in the whole step, and an unclosed brace gives no answer. ``original``: the
  original's ``extract_math_answer`` (ALGORITHM.md 2.7, bug 5): the text is cut at the first
  ``".\\n"`` before the box is looked for, a step without ``\\boxed{`` is its own answer, and an
  unclosed brace gives an empty one.
* ``interpreter: repl`` (default): a program runs like a notebook cell, every print is seen.
  ``original``: the program is wrapped (`original_tool_program`) so that its output is what the
  original's Python tool returned (ALGORITHM.md 2.6): with one print or none, only the last
  statement's output or value; with two or more top-level prints, ``"<print's argument text>: <output>"``
  per print and nothing after the last one; an exception as ``"<Type>: <message>"``.

Few-shot examples keep a fixed order (the original re-shuffled them for every prompt).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from rstar.errors import ConfigError
from rstar.options import Options
from rstar.types import Verdict

CODE = "<code>"
STEP_END = "<end_of_step>"
CODE_END = "<end_of_code>"
OUTPUT = "<output>"
OUTPUT_END = "<end_of_output>"
ANSWER = "<answer>"
ANSWER_END = "<end_of_answer>"
REFINE = "<refine>"
REFINE_END = "<end_of_refine>"

TAGS = (CODE, STEP_END, CODE_END, OUTPUT, OUTPUT_END, ANSWER, ANSWER_END, REFINE, REFINE_END)
SPECIAL_TOKENS = (
    *TAGS,
    "<|user|>",
    "<|assistant|>",
    "\n<|assistant|>",
    "<error_info>",
    "<end_of_error_info>",
    "<BACK>",
)
"""The tokens added to the tokenizer when a policy is fine-tuned on this format."""

STOPS_BOOTSTRAP = (STEP_END, CODE_END, OUTPUT_END, ANSWER_END)
"""Stop strings for a few-shot (not fine-tuned) policy, one step per call."""
STOPS_STEP = (STEP_END, CODE_END, ANSWER_END)
"""Stop strings for a fine-tuned policy, one step per call."""
STOPS_BLOCK = (CODE_END, ANSWER_END)
"""Stop strings for whole-block generation: the code block is one call, the answer the next."""

TOO_MANY_ERRORS = "too many code errors"
TOO_MANY_STEPS = "too many steps"
SENTINELS = (TOO_MANY_ERRORS, TOO_MANY_STEPS)
"""Final answers of invalid leaves; never a real answer."""

_STATUS_AS_EXCEPTION = {
    "timeout": "TimeoutError",
    "memory": "MemoryError",
    "output_limit": "OutputLimitError",
    "killed": "ProcessKilledError",
}
SEGMENT = "# ========"
"""The comment that heads each code block of an accumulated program (the original's separator)."""
_BOXED = re.compile(r"\\boxed\s*\{")
_TEXT = re.compile(r"^\\text\{(.*)\}$", re.DOTALL)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt: instructions, a header sentence, few-shot examples and a suffix with ``{input}``."""

    instructions: str = ""
    header: str = ""
    suffix: str = "{input}"
    examples: tuple[str, ...] = ()

    @classmethod
    def load(cls, name_or_path: str) -> PromptTemplate:
        """A bundled template (``bootstrap``, ``sft``) or a JSON file with the same keys."""
        path = Path(name_or_path)
        try:
            if path.suffix == ".json":
                text = path.read_text(encoding="utf-8")
            else:
                text = resources.files("rstar.prompts").joinpath(f"{name_or_path}.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                [f"step_format.prompt: no prompt {name_or_path!r}; use 'bootstrap', 'sft' or a path to a .json file"]
            ) from None
        data = json.loads(text)
        unknown = set(data) - {"instructions", "header", "suffix", "examples"}
        if unknown:
            raise ConfigError([f"prompt {name_or_path}: unknown keys {sorted(unknown)}"])
        return cls(
            instructions=data.get("instructions", ""),
            header=data.get("header", ""),
            suffix=data.get("suffix", "{input}"),
            examples=tuple(data.get("examples", ())),
        )


@dataclass(frozen=True)
class ParsedStep:
    """A generated step: an answer step (it mentions ``boxed``) with its extracted answer, or a code step."""

    is_answer: bool
    final_answer: str | None = None


Interpreter = Literal["repl", "original"]
AnswerExtraction = Literal["last_box", "original"]


class StepFormatOptions(Options):
    """How prompts are rendered and step programs read: a recipe's ``step_format`` section, the one home of
    the prompt and the few-shot count that search, extraction and training all use."""

    prompt: str = Field("bootstrap", description="'bootstrap' (few-shot), 'sft', or a path to a prompt JSON file")
    few_shot: int = Field(2, ge=0, description="number of few-shot examples (bootstrap prompt)")
    interpreter: Interpreter = Field(
        "repl",
        description="'repl': a step's program runs like a notebook cell; 'original': its output is what the "
        "original's Python tool returned (labels with 2+ prints, lost non-final prints)",
    )
    answer_extraction: AnswerExtraction = Field(
        "last_box",
        description="'last_box': the last \\boxed{} of an answer step; 'original': the original's extraction, "
        "pitfalls included (cut at the first '.\\n')",
    )


@dataclass(frozen=True)
class StepFormat:
    """Everything about the code-augmented step format, in one place."""

    template: PromptTemplate = field(default_factory=PromptTemplate)
    few_shot: int = 2
    stops: tuple[str, ...] = STOPS_BOOTSTRAP
    interpreter: Interpreter = "repl"
    answer_extraction: AnswerExtraction = "last_box"

    @classmethod
    def from_options(
        cls,
        prompt: str | None = None,
        few_shot: int | None = None,
        interpreter: Interpreter | None = None,
        answer_extraction: AnswerExtraction | None = None,
    ) -> StepFormat:
        """The step format of these options; those left out take `StepFormatOptions`' defaults."""
        given = {"prompt": prompt, "few_shot": few_shot, "interpreter": interpreter}
        given["answer_extraction"] = answer_extraction
        return cls.from_config(StepFormatOptions(**{k: v for k, v in given.items() if v is not None}))

    @classmethod
    def from_config(cls, options: StepFormatOptions) -> StepFormat:
        """The step format of a recipe's validated ``step_format`` section."""
        template = PromptTemplate.load(options.prompt)
        stops = STOPS_BOOTSTRAP if template.examples else STOPS_STEP
        return cls(
            template=template,
            few_shot=min(options.few_shot, len(template.examples)),
            stops=stops,
            interpreter=options.interpreter,
            answer_extraction=options.answer_extraction,
        )

    # --- prompts -----------------------------------------------------------------------------

    def render_prompt(self, question: str, partial_solution: str = "") -> str:
        """The policy's (and the reward model's) input: rendered question + the steps so far."""
        t = self.template
        examples = t.examples[: self.few_shot]
        inputs = question + "\n"
        if examples:
            n = len(examples)
            header = t.header.format(n=n, are="are" if n > 1 else "is", s="s" if n > 1 else "")
            head = "\n".join([t.instructions, header, *examples, ""])
        else:
            head = "\n".join([t.instructions, ""])
        suffix = t.suffix.format(input=inputs)
        prompt = suffix if head.strip() == "" else head + "\n" + suffix
        return prompt + partial_solution

    # --- parsing -----------------------------------------------------------------------------

    def parse(self, text: str) -> ParsedStep:
        """An answer step iff ``boxed`` occurs in the text (the original's rule); else a code step."""
        if "boxed" in text:
            if self.answer_extraction == "original":
                return ParsedStep(True, extract_answer_original(text) or None)
            return ParsedStep(True, extract_answer(text))
        return ParsedStep(False)

    # --- code execution ----------------------------------------------------------------------

    def program(self, path_texts: Sequence[str], step_text: str) -> str:
        """The program to run for a new step: the current code block's earlier code steps + this one.

        ``path_texts`` are the texts of the steps from the root to the new step's parent. History
        stops at the most recent step that closed a code block (it contains ``<end_of_code>`` or
        ``<end_of_output>``); answer steps (they mention ``boxed``) on the way are not code and are
        skipped, as in the original (ALGORITHM.md 2.5).
        """
        history: list[str] = []
        for text in reversed(path_texts):
            if CODE_END in text or OUTPUT_END in text:
                break
            if not self.parse(text).is_answer:
                history.append(text)
        history.reverse()
        program = extract_program("".join([*history, step_text]))
        return original_tool_program(program) if self.interpreter == "original" else program

    def observation(self, verdict: Verdict) -> str:
        """What the interpreter "says" about a step: its output, or the error, post-processed."""
        if verdict.status == "ok":
            text = verdict.output
        elif verdict.status == "error":
            text = verdict.error
        else:
            exc = _STATUS_AS_EXCEPTION[verdict.status]
            text = verdict.error if verdict.error.startswith(exc) else f"{exc}: {verdict.error or verdict.status}"
        return _postprocess(text)

    @staticmethod
    def is_error(observation: str) -> bool:
        """The original's rule: a step failed iff its observation contains ``error`` (any case)."""
        return "error" in observation.lower()

    @staticmethod
    def shows_output(step_text: str) -> bool:
        """Only a step that closes the code block gets the output block shown to the model."""
        return CODE_END in step_text

    @staticmethod
    def with_output(step_text: str, observation: str) -> str:
        """The step's text as the model sees it afterwards: the output block appended."""
        return f"{step_text}\n{OUTPUT}{observation}{OUTPUT_END}"


def extract_program(text: str) -> str:
    """The Python inside ``<code>`` … ``<end_of_code>`` of ``text``, ``<end_of_step>`` tags removed.

    As in the original (ALGORITHM.md 2.5): each ``<code>`` line starts a segment headed by the comment
    ``# ========``; code on the ``<code>`` line itself is dropped; lines after an ``<end_of_code>``
    line are skipped until the next ``<code>`` line. Text without any ``<code>`` line is used whole.
    The result is stripped.
    """
    text = text.replace(STEP_END, "")
    program = ""
    inside = False
    for line in text.split("\n"):
        if CODE in line:
            program += f"\n{SEGMENT}\n"
            inside = True
        elif CODE_END in line:
            inside = False
        elif inside:
            program += line + "\n"
    return (program or text).strip()


def extract_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces matched), one ``\\text{}`` wrapper removed.

    None when there is no box, its braces never close, or it is empty.
    """
    found, content = _last_box(text)
    return (_without_text(content) or None) if found and content is not None else None


def extract_answer_original(text: str) -> str:
    """The original's answer extraction, pitfalls included (ALGORITHM.md 2.7; ``answer_extraction:
    original``): the text up to the first ``".\\n"``, stripped, without a trailing period; then the
    content of its last ``\\boxed{...}`` (the whole text when there is none, ``""`` when its braces
    never close); then one ``\\text{}`` wrapper removed."""
    text = text.split(".\n", 1)[0].strip()
    if text.endswith("."):
        text = text[:-1]
    found, content = _last_box(text)
    if found:
        text = content or ""
    return _without_text(text)


def _last_box(text: str) -> tuple[bool, str | None]:
    """Whether ``text`` has a ``\\boxed{``, and the last box's content (braces matched; None when they
    never close)."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return False, None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return True, text[start:i]
    return True, None


def _without_text(answer: str) -> str:
    """``answer`` stripped, with one ``\\text{...}`` wrapper around all of it removed (``and`` alone: empty)."""
    answer = answer.strip()
    m = _TEXT.match(answer)
    if m:
        answer = "" if m.group(1).strip() == "and" else m.group(1).strip()
    return answer


_ORIGINAL_TOOL = r"""
def _rstar_original_tool(code):
    import ast, contextlib, io, sys
    code = code.strip().strip("`").strip()
    if code.startswith("python"):
        code = code[len("python"):].strip()
    namespace = {"__name__": "__main__"}

    def is_print(node):
        return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "print")

    def print_call(node):
        if is_print(node):
            return node.value
        if isinstance(node, (ast.If, ast.While, ast.For, ast.FunctionDef)):
            return next((child.value for child in node.body if is_print(child)), None)
        return None

    def run(nodes, buffer=None):
        module = ast.Module(body=list(nodes), type_ignores=[])
        with contextlib.redirect_stdout(buffer if buffer is not None else io.StringIO()):
            exec(compile(module, "<program>", "exec"), namespace)

    try:
        body = ast.parse(code).body
        calls = [print_call(node) for node in body]
        marks = [i for i, call in enumerate(calls) if call is not None]
        if len(marks) <= 1:
            result = ""
            if body:
                run(body[:-1])
                last, buffer = body[-1], io.StringIO()
                value = None
                with contextlib.redirect_stdout(buffer):
                    if isinstance(last, ast.Expr):
                        value = eval(compile(ast.Expression(last.value), "<program>", "eval"), namespace)
                    else:
                        run([last], buffer)
                result = buffer.getvalue() if value is None else str(value)
        else:
            result, start = "", 0
            for i in marks:
                buffer = io.StringIO()
                run(body[start:i + 1], buffer)
                source = ast.get_source_segment(code, calls[i]) or ""
                label = source[source.find("(") + 1:source.rfind(")")]
                result += label + ": " + buffer.getvalue()
                start = i + 1
    except BaseException as exc:
        result = type(exc).__name__ + ": " + str(exc)
    sys.stdout.write(result)
"""


def original_tool_program(program: str) -> str:
    """``program`` wrapped so that what it prints is what the original's Python tool returned for it
    (ALGORITHM.md 2.6; ``interpreter: original``), in a fresh namespace (the original's leaked
    between programs, bug 6)."""
    return f"{_ORIGINAL_TOOL.strip()}\n\n_rstar_original_tool({program!r})\n"


def _postprocess(text: str) -> str:
    """The original tool's clean-up of a raw result, then the strip of its caller (ALGORITHM.md 2.6):
    a result that is one number becomes that number rounded to 4 decimals plus a newline when this
    is shorter; a result over 1024 characters keeps its first and last 512 around ``...``."""
    text = str(text)
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        rounded = f"{round(value, 4)}\n"
        if len(rounded) < len(text):
            text = rounded
    if len(text) > 1024:
        text = text[:512] + "..." + text[-512:]
    return text.strip()
