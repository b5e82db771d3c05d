"""Fixtures of the viewer's tests: one real compare folder for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
from view_helpers import make_compare_folder


@pytest.fixture(scope="session")
def compare_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compare folder written by ``rstar compare`` (greedy, vote, beam and MCTS cells): do not modify it."""
    return make_compare_folder(tmp_path_factory.mktemp("view-compare"))
