"""``arithmetic``: easy, generated word problems with exact answers, for quick CPU runs and smoke tests.

A 135M-parameter model solves almost no GSM8K problem, so a CPU run of the whole self-evolution
loop needs problems that a small model can solve *sometimes*: one or two operations on small
numbers, phrased as short word problems. Problems are generated from a seed, so two datasets with
different seeds give disjoint-looking training and held-out sets without shipping any data.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from rstar.options import Options
from rstar.types import Problem

Op = Literal["+", "-", "*"]

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (
        "{name} has {a} {things}. {pronoun} gets {b} more. How many {things} does {name} have now?",
        "A box holds {a} {things} and another box holds {b} {things}. How many {things} are there in total?",
        "What is {a} plus {b}?",
    ),
    "-": (
        "{name} has {a} {things} and gives away {b}. How many {things} are left?",
        "There are {a} {things} on a table. {b} of them are taken. How many remain?",
        "What is {a} minus {b}?",
    ),
    "*": (
        "{name} buys {a} bags with {b} {things} in each bag. How many {things} does {name} buy?",
        "A shelf has {a} rows of {b} {things}. How many {things} are on the shelf?",
        "What is {a} times {b}?",
    ),
}
_NAMES = (("Ana", "She"), ("Ben", "He"), ("Chen", "He"), ("Dana", "She"), ("Eli", "He"), ("Fatima", "She"))
_THINGS = ("apples", "marbles", "books", "coins", "stickers", "pencils")


class ArithmeticOptions(Options):
    """Options of the ``arithmetic`` dataset."""

    count: int = Field(32, ge=1, description="number of problems")
    seed: int = Field(0, description="generator seed; use different seeds for training and held-out sets")
    ops: list[Op] = Field(["+", "-", "*"], min_length=1, description="operations to draw from")
    max_operand: int = Field(20, ge=2, description="operands are drawn from 2..max_operand")
    # The same two keys, with the same meaning, as every other dataset (jsonl, hf).
    limit: int | None = Field(None, ge=1, description="use only the first `limit` problems (after `offset`)")
    offset: int = Field(0, ge=0, description="skip this many problems first")


class ArithmeticDataset:
    """Generated one-operation word problems; answers are integers (never negative)."""

    Options = ArithmeticOptions

    def __init__(self, options: ArithmeticOptions) -> None:
        self.options = options

    def load(self) -> list[Problem]:
        o = self.options
        rng = random.Random(f"arithmetic:{o.seed}")
        problems = []
        for i in range(o.count):
            op = rng.choice(o.ops)
            a, b = rng.randint(2, o.max_operand), rng.randint(2, o.max_operand)
            if op == "-" and b > a:
                a, b = b, a
            answer = a + b if op == "+" else a - b if op == "-" else a * b
            name, pronoun = rng.choice(_NAMES)
            text = rng.choice(_TEMPLATES[op]).format(name=name, pronoun=pronoun, things=rng.choice(_THINGS), a=a, b=b)
            problems.append(Problem(id=f"arith-{o.seed}-{i}", question=text, answer=str(answer)))
        end = None if o.limit is None else o.offset + o.limit
        return problems[o.offset : end]


__all__ = ["ArithmeticDataset", "ArithmeticOptions"]
