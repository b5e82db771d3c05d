"""The ``ray`` executor on a local Ray instance (4 CPUs, started here): trees do not depend on the number of
workers; a worker killed mid-search, repeated deaths and a killed driver lose no tree and write none twice.

Every search uses the scripted ``adder`` world with the real subprocess verifier and math-verify checker; the
trees are compared with those of the same recipe searched in process, line by line (wall time aside, the one
field that measures rather than computes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import RSTAR, adder_problems

from rstar import hookimpl
from rstar.errors import RstarError
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.rundir import DONE
from rstar.runner import Runner

ray = pytest.importorskip("ray")

from rstar_ray.executor import connect  # noqa: E402
from rstar_ray.options import RayOptions  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HERE = Path(__file__).parent
PROBLEMS = 12


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 4 CPUs for the module's searches."""
    connect(ray, RayOptions(num_cpus=4))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "adds.jsonl"
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in adder_problems(PROBLEMS)), encoding="utf-8")
    return path


def recipe(output_dir: Path, problems_file: Path, fn: str = "rstar.testing.worlds:adder", **keys: Any) -> dict:
    return {
        "output_dir": str(output_dir),
        "seed": 3,
        "dataset": {"name": "jsonl", "path": str(problems_file)},
        "policy": {"name": "scripted", "fn": fn},
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "answer_checker": {"name": "math_verify"},
        "search": {"name": "mcts"},
        "budget": {"samples": 4},
        **keys,
    }


class Recorder:
    """Counts the trees the hooks see and keeps the last progress snapshot."""

    def __init__(self) -> None:
        self.trees: list[str] = []
        self.snapshot: Any = None

    @hookimpl
    def tree_done(self, run, tree):
        self.trees.append(tree.id)

    @hookimpl
    def search_progress(self, snapshot):
        self.snapshot = snapshot


class ExecutorEvents:
    """Hands the executor's events (the ``executor_event`` hook) to ``see(event, payload)``."""

    def __init__(self, see) -> None:
        self.see = see

    @hookimpl
    def executor_event(self, event, payload):
        self.see(event, payload)


def make_runner(data: dict, recorder: Recorder | None = None, progress=None) -> Runner:
    plugins = [("recorder", recorder)] if recorder is not None else []
    if progress is not None:
        plugins.append(("executor-events", ExecutorEvents(progress)))
    pm = make_plugin_manager(plugins)
    return Runner(data, Registry.from_plugin_manager(pm), pm)


def tree_lines(path: Path) -> dict[str, str]:
    """Each problem's line of a trees.jsonl, wall time left out; fails when a problem is there twice."""
    lines: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["usage"].pop("wall_time_s")
        assert record["id"] not in lines, f"{record['id']} written twice"
        lines[record["id"]] = json.dumps(record, ensure_ascii=False)
    return dict(sorted(lines.items()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, problems_file) -> dict[str, str]:
    """The trees of the in-process search."""
    out = tmp_path_factory.mktemp("in_process")
    make_runner(recipe(out, problems_file)).search()
    trees = tree_lines(out / "search" / "trees.jsonl")
    assert len(trees) == PROBLEMS
    return trees


def test_trees_do_not_depend_on_the_number_of_workers(local_ray, reference, problems_file, tmp_path):
    # one worker, through `rstar run`'s path (a round's search stage)
    one = recipe(tmp_path / "one", problems_file, executor={"name": "ray", "workers": 1}, stages=["search"])
    recorder = Recorder()
    make_runner(one, recorder).run()
    assert tree_lines(tmp_path / "one" / "round_1" / "search" / "trees.jsonl") == reference
    assert sorted(recorder.trees) == sorted(reference)

    # three workers, through `rstar search`'s path
    events: list[tuple[str, dict]] = []
    three = recipe(tmp_path / "three", problems_file, executor={"name": "ray", "workers": 3})
    recorder = Recorder()
    summary = make_runner(three, recorder, progress=lambda e, p: events.append((e, p))).search().summary
    assert tree_lines(tmp_path / "three" / "search" / "trees.jsonl") == reference
    assert sorted(recorder.trees) == sorted(reference)
    assert summary["problems"] == PROBLEMS and summary["components"]["executor"]["workers"] == 3
    assert summary["components"]["executor"]["worker_deaths"] == 0
    assert recorder.snapshot.done == PROBLEMS and recorder.snapshot.problems == PROBLEMS
    assert recorder.snapshot.policy_calls == summary["policy_calls"]  # the workers' spend, summed
    ready = [p for e, p in events if e == "worker_ready"]
    assert len(ready) == 3 and len({p["pid"] for p in ready}) == 3
    end = next(p for e, p in events if e == "executor_end")
    assert sum(w["done"] for w in end["workers"]) == PROBLEMS
    start = next(p for e, p in events if e == "executor_start")
    assert start["per_worker"] == 4  # 12 problems for 3 workers: the first one ready does not take them all


def test_a_worker_killed_mid_search_loses_nothing(local_ray, reference, problems_file, tmp_path):
    events: list[tuple[str, dict]] = []
    killed: list[int] = []

    def progress(event: str, payload: dict) -> None:
        events.append((event, payload))
        if event == "executor_progress" and payload["done"] >= 1 and not killed:
            busiest = max(payload["workers"], key=lambda w: w["in_flight"])
            if busiest["in_flight"]:
                killed.append(busiest["pid"])
                os.kill(busiest["pid"], signal.SIGKILL)

    data = recipe(tmp_path / "run", problems_file, "ray_worlds:slow_adder", executor={"name": "ray", "workers": 3})
    summary = make_runner(data, progress=progress).search().summary
    assert killed, "no worker held a problem to kill it with"
    (lost,) = [p for e, p in events if e == "worker_lost"]
    assert lost["pid"] == killed[0] and lost["requeued"] and lost["deaths"] == 1
    assert tree_lines(tmp_path / "run" / "search" / "trees.jsonl") == reference
    assert summary["problems"] == PROBLEMS and summary["components"]["executor"]["worker_deaths"] == 1
    assert len([e for e, _ in events if e == "worker_ready"]) == 4  # three, and one in the dead one's place


def test_repeated_deaths_end_the_search_and_the_same_run_resumes(local_ray, reference, problems_file, tmp_path):
    flag = tmp_path / "fatal"
    flag.touch()
    executor = {
        "name": "ray",
        "workers": 2,
        "max_worker_deaths": 1,
        "runtime_env": {"env_vars": {"RSTAR_TEST_FATAL": str(flag)}},
    }
    data = recipe(tmp_path / "run", problems_file, "ray_worlds:fragile_adder", executor=executor)
    with pytest.raises(RstarError, match=r"2 workers died in this search, more than max_worker_deaths=1") as err:
        make_runner(data).search()
    assert "run the same command again" in str(err.value)
    trees = tmp_path / "run" / "search" / "trees.jsonl"
    written = tree_lines(trees) if trees.exists() else {}
    assert "p5" not in written and not (tmp_path / "run" / "search" / DONE).exists()
    assert all(written[k] == reference[k] for k in written)

    flag.unlink()  # whatever killed the workers is fixed: the same recipe resumes
    summary = make_runner(data).search().summary
    assert tree_lines(trees) == reference and summary["problems"] == PROBLEMS


def test_a_killed_driver_resumes_with_nothing_lost_or_doubled(reference, problems_file, tmp_path):
    """``rstar search`` with its own local Ray instance, killed (SIGKILL) mid-search, then run again."""
    data = recipe(
        tmp_path / "run",
        problems_file,
        "ray_worlds:slow_adder",
        executor={"name": "ray", "workers": 2, "num_cpus": 2},
    )
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    trees = tmp_path / "run" / "search" / "trees.jsonl"
    # Its own session: after the driver, the Ray processes it started (same process group) are ended too.
    args = [RSTAR, "search", str(path)]
    driver = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (trees.exists() and len(trees.read_text().splitlines()) >= 2):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no tree within 180 s"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    first = tree_lines(trees)
    assert 2 <= len(first) < PROBLEMS, len(first)

    args = [RSTAR, "search", str(path)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert tree_lines(trees) == reference


def test_compare_cells_run_on_the_workers(local_ray, reference, problems_file, tmp_path):
    """`rstar compare` searches each cell on the compare recipe's executor: the same trees as in process."""
    from rstar_pipeline.compare import Comparison

    data = recipe(tmp_path / "cmp", problems_file, executor={"name": "ray", "workers": 2})
    data["compare"] = {"budgets": [4], "strategies": {"mcts": {}}, "bootstrap": 0}
    pm = make_plugin_manager([])
    Comparison(data, Registry.from_plugin_manager(pm), pm).run()
    cell = tmp_path / "cmp" / "cells" / "mcts" / "samples_4" / "search"
    assert tree_lines(cell / "trees.jsonl") == reference
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["components"]["executor"]["workers"] == 2
