"""Tests of the lint verifier, with the fixtures of rstar.testing."""

import asyncio

import rstar_lint_verifier

from rstar.types import CodeJob


def test_forbidden_imports_are_refused_and_the_rest_runs(make_registry):
    registry = make_registry(rstar_lint_verifier)
    verifier = registry.build("verifier", {"name": "lint", "inner": {"name": "subprocess", "timeout_s": 5}})
    try:
        jobs = [CodeJob("import os\nos.listdir('/')"), CodeJob("x = 6 * 7\nx"), CodeJob("from socket import socket")]
        verdicts = asyncio.run(verifier.run(jobs))
    finally:
        verifier.close()
    assert [v.status for v in verdicts] == ["error", "ok", "error"]
    assert verdicts[0].error == "LintError: import of 'os' is not allowed"
    assert verdicts[1].output == "42\n"


def test_the_forbidden_list_is_an_option(make_registry):
    registry = make_registry(rstar_lint_verifier)
    verifier = registry.build("verifier", {"name": "lint", "forbidden": ["math"]})
    try:
        verdicts = asyncio.run(verifier.run([CodeJob("import math"), CodeJob("import os\nos.sep")]))
    finally:
        verifier.close()
    assert [v.status for v in verdicts] == ["error", "ok"]
