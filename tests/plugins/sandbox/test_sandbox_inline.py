"""Inline jobs of the ``subprocess`` verifier: closed programs run in one process per batch, same verdicts."""

from __future__ import annotations

import ast
import asyncio

import pytest
from rstar_sandbox.subprocess_verifier import SubprocessOptions, SubprocessVerifier
from rstar_sandbox.worker import accept_closed, closed_program

from rstar.types import CodeJob

CLOSED = [
    "x = 6 * 7\ny = x ** 2 - 5\ny",
    "print('a', 'b', sep='-', end='!')\nprint()",
    "import math\nprint(math.sqrt(2))\nmath.pi",
    "from math import *\nprint(floor(2.5), gcd(12, 18))",
    "import cmath\ncmath.sqrt(-1)",
    "from fractions import Fraction\nFraction(1, 3) + Fraction(1, 6)",
    "values = [1, 2, 3]\nvalues[10]",
    "print('before')\nraise ValueError('bad value')",
    "def f(n):\n    return f(n + 1)\nf(0)",
    "x = (",
    "raise SystemExit(3)",
    "raise SystemExit",
    "print('é ∑ 😀')",
    "print(f'{2 / 3:.3f}')\nformat(7, '>5')",
    "total = sum(i * i for i in range(10))\ntotal",
    # hostile but closed: a huge format spec, a C-level recursion, an unprintable end, a key with side effects
    "format(1, 'x' * 10**6)",
    "x = [[]]\nfor i in range(10**5):\n    x = [x]\nprint(len(str(x)))",
    "print(1, end='\\ud800')",
    "sorted([3, 1, 2], key=print)",
    "str(10 ** 100000)",
    "assert 1 == 2, 'nope'",
    "1/0",
    "print(None)\nNone",
    "x = 1\ndel x\nx",
    "set('abcdef')",
    "print('\\ud800')",
    "x = [1, 2]\nx[0] = 5\nx",
    "total = 0\nfor i in range(10):\n    total += i\nprint(total)",
]
OPEN = [
    "import sympy\nsympy.sqrt(8)",
    "import os\nprint(1)",
    "print(__name__)",
    "import math\nmath.sqrt = None",
    "import fractions\nfractions.Fraction(1, 2)",
    "getattr(1, 'real')",
    "type('A', (), {})",
    "s = '_' * 2 + 'class' + '_' * 2\nprint('{0.__class__}'.format(1))",
    "def gen():\n    yield 1\nlist(gen())",
    "with open('x', 'w') as f:\n    pass",
    "exit()",
    "class A:\n    def value(self):\n        return 5\nA().value()",
    "'{:>5}|'.format(7)",
    # format's attribute walk reached without `.format` on a literal: unbound, or through a name
    "print(str.format('{0.__class__}', 1))",
    "s = '{0.__class__.__mro__}'\nf = s.format\nprint(f(1))",
    "import sys\nprint(sys._getframe().f_back)",
    "(x for x in [1]).gi_frame",
    "from fractions import Fraction\nFraction.mro()[1].register(float)",
    "object",
    "sorted.__self__",
    "try:\n    1 / 0\nexcept* ZeroDivisionError:\n    pass",
]


@pytest.mark.parametrize("program", CLOSED)
def test_closed_programs_are_accepted(program):
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return  # the worker answers a syntax error itself
    assert closed_program(tree) and accept_closed(program)(tree)


@pytest.mark.parametrize("program", [*OPEN, "ｅｖａｌ('1')", "ｘ = ｏｐｅｎ", "ｇｅｔａｔｔｒ(1, 'real')"])
def test_programs_that_can_reach_shared_state_are_refused(program):
    # full-width letters are NFKC-normalised into plain identifiers: the quick text test must not wave them through
    tree = ast.parse(program)
    assert not closed_program(tree) and not accept_closed(program)(tree)


def verdicts(inline: bool, jobs: list[CodeJob]):
    v = SubprocessVerifier(SubprocessOptions(inline=inline, timeout_s=5))
    try:
        result = asyncio.run(v.run(jobs))
        return [(x.status, x.output, x.error) for x in result], v.counts
    finally:
        v.close()


def test_inline_and_forked_verdicts_are_the_same():
    jobs = [CodeJob(p) for p in CLOSED + OPEN[:4]]
    jobs += [
        CodeJob("print('x' * 100)", max_output_bytes=50),
        CodeJob("print('é' * 40)", max_output_bytes=51),  # the cap falls inside a character
        CodeJob("x = [0] * 10**10"),
        CodeJob("while True:\n    pass", timeout_s=0.3),
        CodeJob("print('a')\nwhile True:\n    pass", timeout_s=0.3),
    ]
    inline, inline_counts = verdicts(True, jobs)
    forked, forked_counts = verdicts(False, jobs)
    assert inline == forked
    assert inline_counts["inline"] == len(jobs) - 4 and inline_counts["forked"] == 4
    assert forked_counts["inline"] == 0 and forked_counts["forked"] == len(jobs)
    statuses = [status for status, _, _ in inline[-5:]]
    assert statuses == ["output_limit", "output_limit", "memory", "timeout", "timeout"]
    assert inline[-1][1] == "a\n"


def test_results_keep_their_order_across_batches_and_forks():
    jobs = [CodeJob(f"import sympy\nprint({i})" if i % 50 == 0 else f"print({i})") for i in range(300)]
    result, counts = verdicts(True, jobs)
    assert [output for _, output, _ in result] == [f"{i}\n" for i in range(300)]
    assert counts["forked"] == 6 and counts["inline"] == 294


def test_nothing_leaks_between_inline_jobs():
    jobs = [
        CodeJob("x = 5\nresults = [1]"),
        CodeJob("print(x)"),
        CodeJob("import math\nmath.sqrt = None"),
        CodeJob("import math\nprint(math.sqrt(4))"),
    ]
    result, counts = verdicts(True, jobs)
    assert result[1] == ("error", "", "NameError: name 'x' is not defined")
    assert result[3] == ("ok", "2.0\n", "")
    assert counts["forked"] == 1


def test_an_alarm_stops_a_python_loop_without_losing_the_worker():
    v = SubprocessVerifier(SubprocessOptions(max_workers=1))
    try:
        first = asyncio.run(v.run([CodeJob("1")]))
        assert first[0].output == "1\n"
        result = asyncio.run(v.run([CodeJob("while True:\n    pass", timeout_s=0.2), CodeJob("2")]))
        assert [x.status for x in result] == ["timeout", "ok"]
        assert v.counts["workers_started"] == 1
    finally:
        v.close()


def test_a_program_stuck_in_c_code_is_stopped_by_replacing_its_worker_and_forked():
    v = SubprocessVerifier(SubprocessOptions(max_workers=1))
    try:
        result = asyncio.run(v.run([CodeJob("print(1)\nsum(range(10**12))", timeout_s=0.2), CodeJob("3")]))
        assert result[0].status == "timeout" and result[0].error == "TimeoutError: time limit of 0.2 s exceeded"
        assert result[0].output == "1\n"  # from its forked run: the batch's answers were lost with the worker
        assert result[1].output == "3\n"
        assert v.counts["workers_started"] == 2 and v.counts["forked"] == 2
    finally:
        v.close()
