"""The standard evaluation sets, shipped with rstar: one ``<set>.jsonl`` file of ``{id, question, answer}`` each.

Where each set comes from and under which terms it is redistributed: ``NOTICE.md`` beside the files.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SETS: dict[str, str] = {
    "gsm8k": "GSM8K test: 1,319 grade-school word problems, whole-number answers",
    "math500": "MATH-500: 500 competition problems from the MATH test set (PRM800K's split), LaTeX answers",
    "aime2024": "AIME 2024: the 30 problems of both papers (I and II), integer answers 0-999",
    "amc23": "AMC 2023: 40 problems from the 2023 AMC 12 (papers A and B), numeric answers",
}
"""The bundled sets by name, with what each holds."""


def file(name: str) -> Traversable:
    """The JSONL file of the bundled set ``name`` (a key of `SETS`)."""
    if name not in SETS:
        raise KeyError(f"no bundled set {name!r}; the sets are {', '.join(SETS)}")
    return resources.files(__name__) / f"{name}.jsonl"
