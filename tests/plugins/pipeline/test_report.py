"""``rstar report``: report.md and report.png of a run, a search or a compare folder, from their summaries alone
(written here by hand, so no search runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rstar_pipeline.report as report_module
import yaml
from click.testing import CliRunner
from rstar_pipeline.report import read_report, write_report

from rstar.cli import cli
from rstar.errors import RstarError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_plot(monkeypatch):
    """Drawing costs a second; only the tests that look at the plot draw."""
    monkeypatch.setattr(report_module, "plot", lambda report, path: False)


DRAW = report_module.plot


def search(accuracy: float, tokens: int, seconds: float, problems: int = 10, strategy: str = "mcts") -> dict:
    return {
        "strategy": strategy,
        "problems": problems,
        "correct": round(accuracy * problems),
        "accuracy": accuracy,
        "solved": round(accuracy * problems) + 1,
        "generated_tokens": tokens,
        "reward_calls": 0,
        "seconds": seconds,
    }


def write(folder: Path, summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "DONE").write_text("")


@pytest.fixture
def run(tmp_path) -> Path:
    """A two-round run: search, extract, train_sft, evaluate (greedy), and round 0's evaluation."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({"stages": ["search", "extract", "train_sft", "evaluate"]}))
    write(root / "round_0" / "evaluate" / "greedy", search(0.1, 500, 5.0, strategy="greedy"))
    write(root / "round_0" / "evaluate", {"runs": {"greedy": search(0.1, 500, 5.0, strategy="greedy")}, "seconds": 5.0})
    for k, acc in ((1, 0.3), (2, 0.6)):
        write(root / f"round_{k}" / "search", search(acc, 4000 * k, 100.0 * k))
        extract = {"sft_records": 7 * k, "step_pairs": 3, "final_pairs": 2, "seconds": 1.0}
        write(root / f"round_{k}" / "extract", extract)
        write(root / f"round_{k}" / "train_sft", {"train_loss": 0.5 / k, "seconds": 30.0})
        greedy = search(acc + 0.1, 600, 6.0, strategy="greedy")
        write(root / f"round_{k}" / "evaluate" / "greedy", greedy)
        write(root / f"round_{k}" / "evaluate", {"runs": {"greedy": greedy}, "seconds": 6.0})
    return root


def test_a_run_gets_rounds_searches_and_time_per_stage(run):
    text = write_report(run).read_text()
    assert text.startswith(f"# rstar run: {run}\n")
    assert "| 1 | 4/10 | 30.0% | 7 | 5 | 0.5 |" in text and "| 2 | 7/10 | 60.0% | 14 | 5 | 0.25 |" in text
    assert "eval: greedy" in text and "40.0%" in text
    searches = text.split("## Searches")[1].split("##")[0]
    order = [line.split("`")[1] for line in searches.splitlines() if line.startswith("| `")]
    assert order == [
        "round_0/evaluate/greedy",
        "round_1/search",
        "round_1/evaluate/greedy",
        "round_2/search",
        "round_2/evaluate/greedy",
    ]
    assert "| `round_1/search` | mcts | 10 | 30.0% | 4 | 400 | 0 | 100.0 |" in searches
    times = text.split("## Time per stage (seconds)")[1]
    assert "| round | search | extract | train_sft | evaluate | total |" in times  # the recipe's order
    assert "| round 0 | – | – | – | 5.0 | 5.0 |" in times
    assert "| round 2 | 200.0 | 1.0 | 30.0 | 6.0 | 237.0 |" in times
    assert "(no plot: install matplotlib" in text


def test_rescored_searches_join_the_table_and_their_own_series(run):
    rescored = search(0.8, 8000, 200.0)
    rescored["rescore"] = {"seconds": 3.0}
    write(run / "round_2" / "search" / "rescore-hf", rescored)
    report = read_report(run)
    paths = [r.path for r in report.searches]
    assert paths.index("round_2/search/rescore-hf") == paths.index("round_2/search") + 1
    row = next(r for r in report.searches if r.path.endswith("rescore-hf"))
    assert (row.series, row.point) == ("search/rescore-hf", "r2")
    assert "rescore-hf" not in json.dumps(report.times)  # a re-scoring is not a stage


def test_a_search_folder_and_a_single_search(tmp_path):
    write(tmp_path / "s" / "search", search(0.5, 1000, 12.5, strategy="best_of_n"))
    text = write_report(tmp_path / "s").read_text()
    assert text.startswith("# rstar search: ")
    assert "| `search` | best_of_n | 10 | 50.0% |" in text and "| search | 12.5 | 12.5 |" in text
    assert "## Rounds" not in text
    write(tmp_path / "one", search(0.5, 1000, 2.0))
    assert read_report(tmp_path / "one").kind == "search"


def test_a_compare_folder_reports_time_per_cell(tmp_path):
    root = tmp_path / "cmp"
    for label, budget, acc in (("vote", 1, 0.4), ("vote", 4, 0.6), ("mcts", 4, 0.7)):
        write(root / "cells" / label / f"samples_{budget}" / "search", search(acc, 100 * budget, float(budget)))
    report = read_report(root)
    assert report.kind == "compare"
    assert [(r.series, r.point) for r in report.searches] == [
        ("mcts", "samples_4"),
        ("vote", "samples_1"),
        ("vote", "samples_4"),
    ]
    assert report.times == {
        "mcts samples_4": {"search": 4.0},
        "vote samples_1": {"search": 1.0},
        "vote samples_4": {"search": 4.0},
    }
    text = write_report(root, tmp_path / "elsewhere").read_text()
    assert "| cell | search | total |" in text and (tmp_path / "elsewhere" / "report.md").is_file()
    assert not (root / "report.md").exists()


def test_a_folder_without_results_is_an_error_saying_what_is_expected(tmp_path):
    with pytest.raises(RstarError, match="not a run, search or compare folder"):
        read_report(tmp_path)
    with pytest.raises(RstarError, match="no such folder"):
        read_report(tmp_path / "nope")


def test_the_plot_has_a_panel_per_view(run, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(report_module, "plot", DRAW)
    path = write_report(run)
    assert (run / "report.png").read_bytes()[:8] == PNG
    assert "![report](report.png)" in path.read_text()


def test_the_command_writes_and_prints_the_report(run, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "## Time per stage (seconds)" in result.output and f"wrote {tmp_path / 'out' / 'report.md'}" in result.output
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "out")])
    assert missing.exit_code != 0 and "not a run, search or compare folder" in str(missing.exception)
