"""Importing rstar, ``rstar --help`` and ``rstar plugins`` must not import heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

HEAVY = ("torch", "transformers", "docker", "vllm", "sglang", "math_verify", "sympy", "numpy")

PROBE = """
import sys
{body}
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def heavy_modules_after(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("HEAVY:"))
    return [m for m in line[len("HEAVY:") :].split(",") if m]


@pytest.mark.parametrize(
    "body",
    [
        "import rstar",
        "import rstar.engine, rstar.runner, rstar.config, rstar.steps, rstar.testing",
        "from rstar.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from rstar.cli import main\ntry:\n    main(['plugins'])\nexcept SystemExit:\n    pass",
        "from rstar.cli import main\ntry:\n    main(['plugins', '--json'])\nexcept SystemExit:\n    pass",
        "from rstar.cli import main\nfor name in ('hf', 'vllm', 'sglang', 'subprocess', 'docker', 'sft', 'ppm'):\n"
        "    for kind in ('policy', 'reward_model', 'verifier', 'trainer'):\n"
        "        try:\n            main(['options', kind, name])\n        except SystemExit:\n            pass",
    ],
    ids=["import", "core-modules", "help", "plugins", "plugins-json", "options"],
)
def test_no_heavy_imports(body):
    assert heavy_modules_after(body) == []


def test_architecture_contracts_hold():
    """The import contracts of pyproject.toml ([tool.importlinter]): the kernel imports no plugin, the kernel's
    modules import each other without a circle, and no plugin imports another plugin's private module."""
    import shutil
    from pathlib import Path

    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "lint-imports is missing: install the dev extra (scripts/setup.sh dev)"
    result = subprocess.run([lint], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout
