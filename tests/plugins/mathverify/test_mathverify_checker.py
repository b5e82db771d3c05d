"""The ``math_verify`` answer checker."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
from rstar_mathverify.checker import MathVerifyChecker, MathVerifyOptions, as_latex, verify_in_worker

from rstar.registry import get_registry


@pytest.fixture(scope="module")
def checker():
    c = MathVerifyChecker(MathVerifyOptions(timeout_s=1))
    yield c
    c.close()


def check(checker: MathVerifyChecker, pairs) -> list[bool]:
    return asyncio.run(checker.check(pairs))


def hang(*_args: object) -> bool:
    """Stands in for a check stuck where math-verify's alarm cannot interrupt it."""
    time.sleep(120)
    return True


def hang_on_stuck(prediction: str, *rest: object) -> bool:
    """Hangs on the prediction ``stuck``; checks the others as usual."""
    if prediction == "stuck":
        hang()
    return verify_in_worker(prediction, *rest)  # type: ignore[arg-type]


def crash_on_boom(prediction: str, *rest: object) -> bool:
    """Kills its worker process on the prediction ``boom`` (as a segfault in a C extension would)."""
    if prediction == "boom":
        os._exit(3)
    return verify_in_worker(prediction, *rest)  # type: ignore[arg-type]


def check_and_new_children(checker: MathVerifyChecker, pairs) -> tuple[list[bool], list[multiprocessing.Process]]:
    """The verdicts, and the child processes that appeared meanwhile (the checker's workers)."""
    before = {p.pid for p in multiprocessing.active_children()}
    verdicts = check(checker, pairs)
    return verdicts, [p for p in multiprocessing.active_children() if p.pid not in before]


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("16", "16"),
        ("16.0", "16"),
        (r"\frac{20}{3}", "20/3"),
        ("0.5", r"\frac12"),
        ("18 dollars", "18"),
        ("18", r"18 \text{ dollars}"),
        ("1,000", "1000"),
        (r"3\sqrt{2}", r"\sqrt{18}"),
        ("(1,2)", "(1, 2)"),
        (r"\text{(A)}", "A"),
        ("The answer is $5$.", "5"),
    ],
)
def test_equivalent(checker, prediction, reference):
    assert check(checker, [(prediction, reference)]) == [True]


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [("3", "4"), ("0.33", r"\frac13"), ("2, 3", "3"), ("-3", "3"), ("", ""), ("x", "y")],
)
def test_not_equivalent(checker, prediction, reference):
    assert check(checker, [(prediction, reference)]) == [False]


def test_list_and_missing_references(checker):
    pairs = [("3", ["4", "3"]), (r"\frac{6}{2}", ["4", "3.0"]), ("5", ["4", "3"]), ("3", None), ("3", [])]
    assert check(checker, pairs) == [True, True, False, False, False]


def test_results_keep_the_order_of_the_pairs(checker):
    pairs = [(str(i), str(i if i % 3 else i + 1)) for i in range(12)] + [(f"{i}.0", str(i)) for i in range(4)]
    assert check(checker, pairs) == [i % 3 != 0 for i in range(12)] + [True] * 4


def test_identical_strings_need_no_worker():
    c = MathVerifyChecker(MathVerifyOptions())
    assert check(c, [(" 16 ", "16"), ("7", ["x", "7"])]) == [True, True]
    assert c._pool is None
    c.close()


def test_pathological_input_is_bounded(checker):
    start = time.monotonic()
    assert check(checker, [(r"2^{2^{2^{2^{2^{2}}}}}", "5"), (r"100000000!", "7")]) == [False, False]
    assert time.monotonic() - start < 10


def test_works_from_a_non_main_thread(checker):
    results: list[list[bool]] = []
    thread = threading.Thread(
        target=lambda: results.append(check(checker, [("16.0", "16"), ("0.5", "1/2"), ("3", "4")]))
    )
    thread.start()
    thread.join(timeout=60)
    assert results == [[True, True, False]]


def test_a_stuck_worker_is_killed_and_replaced():
    c = MathVerifyChecker(MathVerifyOptions(timeout_s=1))
    c._work = hang  # type: ignore[method-assign]
    c._HARD_DEADLINE_SLACK_S = 0.5
    start = time.monotonic()
    assert check(c, [("1", "2")]) == [False]
    assert time.monotonic() - start < 20  # pool start-up + 3.5 s deadline
    del c._work
    assert check(c, [("16.0", "16")]) == [True]
    c.close()


def test_a_stuck_check_does_not_hold_up_the_others():
    c = MathVerifyChecker(MathVerifyOptions(timeout_s=1, workers=2))
    c._work = hang_on_stuck  # type: ignore[method-assign]
    c._HARD_DEADLINE_SLACK_S = 0.5
    pairs = [("stuck", "2"), ("16.0", "16"), ("0.5", r"\frac12"), ("3", "4"), (r"\frac{6}{2}", "3")]
    start = time.monotonic()
    assert check(c, pairs) == [False, True, True, False, True]
    assert time.monotonic() - start < 20
    c.close()


def test_a_crashing_worker_is_replaced_and_the_other_checks_go_on():
    c = MathVerifyChecker(MathVerifyOptions(timeout_s=1, workers=2))
    c._work = crash_on_boom  # type: ignore[method-assign]
    assert check(c, [("boom", "1"), ("16.0", "16"), ("0.5", r"\frac12")]) == [False, True, True]
    assert check(c, [(r"\frac{6}{2}", "3")]) == [True]
    c.close()


def test_close_during_a_check_ends_it_false():
    c = MathVerifyChecker(MathVerifyOptions(timeout_s=1))
    c._work = hang  # type: ignore[method-assign]

    async def close_while_checking() -> list[bool]:
        task = asyncio.ensure_future(c.check([("1", "2")]))
        await asyncio.sleep(2)  # the worker has started and taken the check
        await asyncio.to_thread(c.close)
        return await asyncio.wait_for(task, 10)

    start = time.monotonic()
    assert asyncio.run(close_while_checking()) == [False]
    assert time.monotonic() - start < 15
    assert c._pool is None


def test_close_stops_the_workers_and_a_later_check_restarts_them():
    c = MathVerifyChecker(MathVerifyOptions(workers=2))
    verdicts, processes = check_and_new_children(c, [("0.5", r"\frac12"), ("2", "3")])
    assert verdicts == [True, False] and len(processes) == 2
    c.close()
    assert c._pool is None
    assert not any(p.is_alive() for p in processes)
    assert check(c, [("0.5", r"\frac12")]) == [True]
    c.close()


def test_registered_with_options():
    c = get_registry().build("answer_checker", {"name": "math_verify", "workers": 2, "strict": False})
    assert isinstance(c, MathVerifyChecker)
    assert (c.options.workers, c.options.strict) == (2, False)


def test_as_latex_wraps_bare_answers():
    assert as_latex("16") == r"\boxed{16}"
    assert as_latex("18 dollars") == r"\boxed{18 \text{ dollars}}"
    assert as_latex(r"so \boxed{4}") == r"so \boxed{4}"
    assert as_latex("is $4$") == "is $4$"


def test_importing_the_module_is_light():
    code = "import sys, rstar_mathverify.checker; print('sympy' in sys.modules or 'math_verify' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
