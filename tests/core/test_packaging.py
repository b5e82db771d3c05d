"""Packaging: the distribution builds without warnings about its own metadata and carries its data files."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.slow
def test_the_wheel_builds_without_metadata_warnings(tmp_path):
    # setuptools warned on every install that a license table is deprecated (an SPDX string is the form now).
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "project.license" not in output and "License classifiers are deprecated" not in output, output[-3000:]
    (wheel,) = tmp_path.glob("rstar-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert any(n.endswith("licenses/LICENSE") for n in names)
    # The evaluation sets ship as package data of rstar_data, each file whole, with their sources and licences.
    benchmarks = REPO / "plugins" / "rstar_data" / "benchmarks"
    for name in ("gsm8k", "math500", "aime2024", "amc23", "NOTICE"):
        file = f"{name}.md" if name == "NOTICE" else f"{name}.jsonl"
        member = f"rstar_data/benchmarks/{file}"
        assert member in names, f"{member} is not in the wheel"
        assert zipfile.ZipFile(wheel).read(member) == (benchmarks / file).read_bytes(), member
    assert "rstar_data/benchmarks/__init__.py" in names
    assert "absent from the `packages` configuration" not in output, output[-3000:]
