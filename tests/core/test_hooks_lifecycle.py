"""The lifecycle hooks of a run, each with its own test, and the command line's progress display, which is
nothing but a plugin of those hooks. Searches use the scripted ``adder`` policy, the real subprocess verifier
and the math-verify checker."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import adder_problems, adder_recipe
from rich.console import Console

from rstar import hookimpl
from rstar.cli import ProgressDisplay, counters_line, showing_progress
from rstar.engine import Components, Engine, EngineSnapshot
from rstar.plugins import get_plugin_manager, make_plugin_manager
from rstar.registry import Registry, get_registry
from rstar.runner import Runner
from rstar.steps import StepFormat
from rstar.testing.scripted import ScriptedPolicy
from rstar.testing.worlds import adder
from rstar.types import Budget


@pytest.fixture
def recipe(tmp_path, adder_jsonl):
    return adder_recipe(tmp_path, adder_jsonl, max_in_flight=2)


class Recorder:
    """Records the lifecycle hooks this test file is about."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.snapshots: list[EngineSnapshot] = []

    @hookimpl
    def stage_start(self, round, stage, folder, skipped):
        self.events.append(("stage_start", round, stage, folder.name, skipped))

    @hookimpl
    def search_start(self, round, stage, folder, recipe, total, done):
        self.events.append(("search_start", round, stage, folder.name, recipe.require("search").name, total, done))

    @hookimpl
    def search_progress(self, snapshot):
        self.snapshots.append(snapshot)
        if not self.events or self.events[-1] != ("search_progress",):
            self.events.append(("search_progress",))

    @hookimpl
    def tree_done(self, tree):
        self.events.append(("tree_done",))

    @hookimpl
    def search_end(self, round, stage, folder, summary):
        self.events.append(("search_end", round, stage, folder.name, summary["problems"]))

    @hookimpl
    def stage_end(self, round, stage):
        self.events.append(("stage_end", round, stage))


def runner_with(recipe, *plugins):
    pm = make_plugin_manager([(f"extra{i}", p) for i, p in enumerate(plugins)])
    return Runner(recipe, Registry.from_plugin_manager(pm), pm)


def compact(events):
    """Runs of tree_done collapsed into one entry, counted."""
    out = []
    for e in events:
        if e == ("tree_done",) and out and out[-1][0] == "tree_done":
            out[-1] = ("tree_done", out[-1][1] + 1)
        else:
            out.append(("tree_done", 1) if e == ("tree_done",) else e)
    return out


def test_a_search_stage_calls_the_hooks_in_order(recipe):
    recorder = Recorder()
    runner_with(recipe, recorder).run()
    events = compact([e for e in recorder.events if e != ("search_progress",)])
    assert events == [
        ("stage_start", 1, "search", "search", False),
        ("search_start", 1, "search", "search", "best_of_n", 6, 0),
        ("tree_done", 6),
        ("search_end", 1, "search", "search", 6),
        ("stage_end", 1, "search"),
    ]
    # search_progress comes between search_start and search_end, the last time after the last tree.
    names = [e[0] for e in recorder.events]
    assert names.index("search_start") < names.index("search_progress")
    assert names[-3:] == ["search_progress", "search_end", "stage_end"]


def test_stage_start_says_when_a_done_stage_is_skipped(recipe):
    runner_with(recipe).run()
    recorder = Recorder()
    runner_with(recipe, recorder).run()
    assert recorder.events == [("stage_start", 1, "search", "search", True)]


def test_search_start_counts_the_problems_already_searched(recipe, tmp_path):
    runner_with(recipe).search()
    trees = tmp_path / "run" / "search" / "trees.jsonl"
    trees.write_text("".join(trees.read_text().splitlines(keepends=True)[:4]))
    (tmp_path / "run" / "search" / "DONE").unlink()
    recorder = Recorder()
    runner_with(recipe, recorder).search()
    assert recorder.events[1] == ("search_start", 0, "search", "search", "best_of_n", 6, 4)
    assert recorder.snapshots[-1].done == 2 and recorder.snapshots[-1].problems == 2


def test_the_last_search_progress_agrees_with_the_summary(recipe, tmp_path):
    recorder = Recorder()
    summary = runner_with(recipe, recorder).search().summary
    last = recorder.snapshots[-1]
    assert (last.done, last.in_flight, last.problems) == (6, 0, 6)
    assert last.correct == summary["correct"] and last.answered == summary["answered"]
    assert last.accuracy == summary["accuracy"]
    for key in ("generated_tokens", "policy_calls", "verifier_jobs", "reward_calls", "reward_tokens"):
        assert getattr(last, key) == summary[key], key
    trees = [json.loads(line) for line in (tmp_path / "run" / "search" / "trees.jsonl").read_text().splitlines()]
    assert last.nodes == sum(len(t["nodes"]) - 1 for t in trees)
    assert last.samples >= last.nodes and 0 < last.batch_fill <= 1 and last.policy_batches > 0
    assert json.loads(json.dumps(last.to_dict()))["accuracy"] == summary["accuracy"]


def test_no_timer_runs_when_no_plugin_watches_progress(recipe, monkeypatch):
    def snapshot(self):
        raise AssertionError("nobody asked for a snapshot")

    monkeypatch.setattr(Engine, "snapshot", snapshot)
    assert runner_with(recipe).search().summary["problems"] == 6


def test_search_progress_is_called_while_the_search_runs(recipe, monkeypatch):
    """A slow policy: the timer reports counters in flight, at most every PROGRESS_INTERVAL_S."""
    import rstar.runner

    monkeypatch.setattr(rstar.runner, "PROGRESS_INTERVAL_S", 0.05)
    original = ScriptedPolicy.generate

    async def slow(self, requests):
        await asyncio.sleep(0.03)
        return await original(self, requests)

    monkeypatch.setattr(ScriptedPolicy, "generate", slow)
    recorder = Recorder()
    runner_with(recipe, recorder).search()
    assert len(recorder.snapshots) >= 3
    assert any(s.in_flight > 0 and s.done < 6 for s in recorder.snapshots)
    dones = [s.done for s in recorder.snapshots]
    assert dones == sorted(dones)


def test_an_evaluate_stage_makes_one_search_per_run(recipe):
    recipe = {
        **recipe,
        "stages": ["evaluate"],
        "base_model": "adder",  # round 0 evaluates the base model: the scripted policy has no model key
        "evaluate": {"runs": {"greedy": {"search": {"name": "greedy"}}, "vote": {"budget": {"samples": 2}}}},
    }
    recorder = Recorder()
    runner_with(recipe, recorder).run()
    starts = [e for e in recorder.events if e[0] == "search_start"]
    # Round 1 evaluates round 0 (the base policy) first: round_0/evaluate/<label>, then its own runs.
    assert [(e[1], e[2], e[3], e[4]) for e in starts] == [
        (1, "evaluate", "greedy", "greedy"),
        (1, "evaluate", "vote", "best_of_n"),
        (1, "evaluate", "greedy", "greedy"),
        (1, "evaluate", "vote", "best_of_n"),
    ]
    assert [e[0] for e in recorder.events if e[0] in ("stage_start", "stage_end")] == ["stage_start", "stage_end"]


# --- the engine's counters -------------------------------------------------------------------------


class InstantVerifier:
    async def run(self, jobs):
        from rstar.types import Verdict

        return [Verdict("ok", "") for _ in jobs]


class ExactChecker:
    async def check(self, pairs):
        return [str(ref).strip() == pred.strip() for pred, ref in pairs]


def test_a_snapshot_sums_finished_and_running_searches():
    engine = Engine(Components(ScriptedPolicy(adder), InstantVerifier(), ExactChecker()), max_in_flight=3)
    assert engine.snapshot() == EngineSnapshot(**{**engine.snapshot().__dict__})
    seen: list[EngineSnapshot] = []
    strategy = get_registry().build("search", {"name": "best_of_n"})

    async def run():
        async def watch():
            while True:
                seen.append(engine.snapshot())
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        trees = await engine.run(adder_problems(7), strategy, StepFormat.from_options(), Budget(samples=2))
        watcher.cancel()
        return trees

    trees = asyncio.run(run())
    final = engine.snapshot()
    assert (final.problems, final.done, final.in_flight) == (7, 7, 0)
    assert final.generated_tokens == sum(t.usage.generated_tokens for t in trees)
    assert final.policy_calls == sum(t.usage.policy_calls for t in trees)
    assert final.verifier_jobs == sum(t.usage.verifier_jobs for t in trees)
    assert final.correct == sum(bool(t.correct) for t in trees) and final.labelled == 7
    assert final.batch_fill == engine.policy.stats.mean_fill
    assert max(s.in_flight for s in seen) == 3
    # Spend grows while searches run, before any of them has finished.
    assert any(s.done == 0 and s.generated_tokens > 0 for s in seen)
    tokens = [s.generated_tokens for s in seen]
    assert tokens == sorted(tokens)


# --- the display -------------------------------------------------------------------------------------


def snapshot(**counts) -> EngineSnapshot:
    base = dict.fromkeys(EngineSnapshot.__dataclass_fields__, 0)
    return EngineSnapshot(**{**base, "batch_fill": 0.0, "seconds": 0.0, **counts})


def test_the_counters_line_shows_rates_accuracy_and_fill():
    line = counters_line(
        snapshot(
            in_flight=4,
            done=10,
            correct=6,
            labelled=8,
            answered=9,
            samples=200,
            generated_tokens=50_000,
            verifier_jobs=30,
            reward_calls=12,
            policy_batches=5,
            batch_fill=0.875,
            seconds=2.0,
        )
    )
    assert line == (
        "4 in flight · acc 75% (6/8) · 9 answered · 100.0 nodes/s · 25.0k tok/s · 15.0 jobs/s · "
        "12 reward calls · fill 88%"
    )
    assert "acc" not in counters_line(snapshot()) and "reward" not in counters_line(snapshot())


def display_output(recipe, live: bool) -> str:
    console = Console(record=True, width=200, force_terminal=live)
    display = ProgressDisplay(console, live=live)
    runner_with(recipe, display).run()
    display.close()
    return console.export_text()


def test_off_a_terminal_the_display_prints_one_line_per_finished_search_or_stage(recipe):
    recipe = {
        **recipe,
        "stages": ["search", "evaluate"],
        "base_model": "adder",
        "evaluate": {"runs": {"greedy": {"search": {"name": "greedy"}}}},
    }
    lines = display_output(recipe, live=False).splitlines()
    assert lines[0].startswith("round_1/search done: 6 problems, accuracy ")
    assert lines[1].startswith("round_0/evaluate/greedy done: 6 problems")
    assert lines[2].startswith("round_1/evaluate/greedy done: 6 problems")
    assert lines[3].startswith("evaluate done: seconds=")
    assert lines[4].startswith("round 1 done; report: ") and len(lines) == 5
    assert display_output(recipe, live=False).splitlines()[:2] == [
        "round_1/search: already done, skipped",
        "round_1/evaluate: already done, skipped",
    ]


def test_on_a_terminal_each_search_gets_a_header_and_a_live_bar(recipe):
    text = display_output(recipe, live=True)
    assert "round 1: search" in text
    assert "search round_1/search: best_of_n, policy scripted; 6 problems" in text
    assert "6/6" in text and "in flight" in text and "nodes/s" in text
    assert "round_1/search done: 6 problems" in text


def test_a_stages_notes_reach_the_display_on_a_terminal_only():
    """`StageContext.progress` (a stage loading its trainer, say) goes to the command line's display."""
    for live in (True, False):
        console = Console(record=True, width=200, force_terminal=live)
        display = ProgressDisplay(console, live=live)
        display.note("loading", {"what": "trainer sft from base"})
        display.note("evaluate_run", {"round": 1, "label": "greedy"})
        text = console.export_text()
        assert text == ("loading: what=trainer sft from base\n" if live else "")


def test_the_command_line_registers_its_display_as_a_plugin_for_the_command_only():
    pm = get_plugin_manager()
    with showing_progress() as display:
        assert pm.get_plugin(ProgressDisplay.plugin_name) is display
        assert pm.hook.search_progress.get_hookimpls()[-1].plugin is display
    assert pm.get_plugin(ProgressDisplay.plugin_name) is None


def test_the_display_tells_an_executors_workers():
    """executor_event (rstar_ray): a line per worker started or lost; the workers' rates join the search's bar."""
    console = Console(record=True, width=200, force_terminal=False)
    display = ProgressDisplay(console, live=False)
    display.executor_event(event="worker_ready", payload={"worker": 1, "node": "n1", "seconds": 2.5})
    display.executor_event(event="worker_lost", payload={"worker": 2, "put_back": 3})
    workers = [
        {"worker": 1, "state": "ready", "in_flight": 2, "done": 5, "problems_per_s": 1.25},
        {"worker": 2, "state": "lost", "in_flight": 0, "done": 1, "problems_per_s": 0.0},
    ]
    display.executor_event(event="executor_progress", payload={"workers": workers, "queued": 4, "done": 6})
    text = console.export_text()
    assert "worker ready: worker=1" in text and "worker lost: worker=2, put_back=3" in text
    assert display.workers == "1/2 workers (1.25 problems/s)"
