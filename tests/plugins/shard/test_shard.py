"""Shards without Ray: ``shard: i/N`` searches a deterministic slice, and ``rstar merge`` makes the N shard
folders one run folder equal to the unsharded run (scripted ``adder`` world, real verifier and checker)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import adder_problems, rstar
from rstar_shard.merge import merge_shards

from rstar.config import check_recipe
from rstar.errors import RstarError
from rstar.executors import Shard, shard_index
from rstar.plugins import make_plugin_manager
from rstar.registry import Registry
from rstar.rundir import DONE, read_summary
from rstar.runner import Runner

PROBLEMS = 12
SHARDS = 3


def test_a_shard_is_i_of_n():
    assert Shard.parse("2/4") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
    for bad in ("0/4", "5/4", "a/b", "2", 3, None, "1/0"):
        with pytest.raises(ValueError, match="i"):
            Shard.parse(bad)


def test_slices_partition_the_problems_by_id_whatever_their_order():
    problems = adder_problems(300)
    slices = [Shard(i, 4).select(problems) for i in range(1, 5)]
    assert sorted(p.id for s in slices for p in s) == sorted(p.id for p in problems)  # each problem in one slice
    assert all(40 < len(s) < 110 for s in slices), [len(s) for s in slices]
    assert Shard(3, 4).select(list(reversed(problems))) == list(reversed(slices[2]))
    assert Shard(3, 4).select(problems[::7]) == [p for p in slices[2] if p in problems[::7]]  # filtering keeps them
    assert shard_index("p17", 4) == shard_index("p17", 4)


def base(output_dir: Path, problems_file: Path, **keys) -> dict:
    return {
        "output_dir": str(output_dir),
        "seed": 5,
        "dataset": {"name": "jsonl", "path": str(problems_file)},
        "policy": {"name": "scripted", "fn": "rstar.testing.worlds:adder"},
        "verifier": {"name": "subprocess", "timeout_s": 10},
        "answer_checker": {"name": "math_verify"},
        "search": {"name": "best_of_n"},
        "budget": {"samples": 2},
        **keys,
    }


def test_a_bad_shard_key_is_reported(tmp_path, rstar_registry):
    problems = check_recipe(base(tmp_path, tmp_path / "x.jsonl", shard="3/2"), rstar_registry)
    assert problems == ["shard: '3/2': i must be between 1 and N (slices are numbered from 1)"]


def search(data: dict) -> dict:
    pm = make_plugin_manager()
    return Runner(data, Registry.from_plugin_manager(pm), pm).search().summary


def tree_lines(path: Path) -> dict[str, str]:
    lines = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["usage"].pop("wall_time_s")
        lines[record["id"]] = json.dumps(record)
    return dict(sorted(lines.items()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The unsharded search and its 3 shards (run folders), searched in process."""
    root = tmp_path_factory.mktemp("shards")
    problems_file = root / "adds.jsonl"
    problems_file.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in adder_problems(PROBLEMS)))
    search(base(root / "whole", problems_file))
    shards = []
    for i in range(1, SHARDS + 1):
        search(base(root / f"shard{i}", problems_file, shard=f"{i}/{SHARDS}"))
        shards.append(root / f"shard{i}")
    return root, problems_file, shards


def test_merged_shards_equal_the_unsharded_run(runs, tmp_path):
    root, problems_file, shards = runs
    sizes = [len(tree_lines(s / "search" / "trees.jsonl")) for s in shards]
    assert sum(sizes) == PROBLEMS and all(sizes)
    merged = merge_shards(shards, tmp_path / "merged")
    assert [(m.folder, m.problems, m.duplicates) for m in merged] == [("search", PROBLEMS, 0)]

    whole, out = root / "whole" / "search", tmp_path / "merged" / "search"
    assert tree_lines(out / "trees.jsonl") == tree_lines(whole / "trees.jsonl")
    assert (out / DONE).exists()
    expected = {k: v for k, v in read_summary(whole).items() if k not in ("seconds", "components")}
    got = read_summary(out)
    assert {k: v for k, v in got.items() if k not in ("seconds", "shards")} == expected
    assert got["shards"] == SHARDS
    assert got["seconds"] == max(read_summary(s / "search")["seconds"] for s in shards)
    config = yaml.safe_load((tmp_path / "merged" / "config.yaml").read_text())
    assert "shard" not in config and config["output_dir"] == str(tmp_path / "merged")
    assert (tmp_path / "merged" / "plugins.json").is_file()

    # The merged folder reads as a finished run of the unsharded recipe: searching it again searches nothing.
    again = search(base(tmp_path / "merged", problems_file))
    assert again == read_summary(out)


def test_a_duplicate_tree_is_kept_once(runs, tmp_path):
    _, _, shards = runs
    copies = []
    for shard in shards:
        copy = tmp_path / shard.name
        copy.mkdir()
        for item in shard.rglob("*"):
            if item.is_file():
                target = copy / item.relative_to(shard)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(item.read_bytes())
        copies.append(copy)
    first_tree = (copies[0] / "search" / "trees.jsonl").read_text().splitlines()[0]
    with (copies[1] / "search" / "trees.jsonl").open("a") as fh:
        fh.write(first_tree + "\n")
    (merged,) = merge_shards(copies, tmp_path / "merged")
    assert (merged.problems, merged.duplicates) == (PROBLEMS, 1)
    ids = Counter(json.loads(line)["id"] for line in (tmp_path / "merged" / "search" / "trees.jsonl").open())
    assert set(ids.values()) == {1} and len(ids) == PROBLEMS


def test_merge_refuses_what_is_not_one_search_in_shards(runs, tmp_path):
    root, _, shards = runs
    with pytest.raises(RstarError, match=r"shard 2/3 missing; give all 3 shards' folders"):
        merge_shards([shards[0], shards[2]], tmp_path / "m1")
    with pytest.raises(RstarError, match=r"are both shard 1/3"):
        merge_shards([shards[0], shards[0], shards[2]], tmp_path / "m2")
    with pytest.raises(RstarError, match=r"is a run without shard=i/N"):
        merge_shards([root / "whole", *shards], tmp_path / "m3")
    with pytest.raises(RstarError, match=r"is one of the shards"):
        merge_shards(shards, shards[0])

    # another recipe, and an unfinished shard
    changed = tmp_path / "changed"
    changed.mkdir()
    config = yaml.safe_load((shards[1] / "config.yaml").read_text())
    (changed / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 6}))
    with pytest.raises(RstarError, match=r"ran a different recipe .* \(changed: seed\)"):
        merge_shards([shards[0], changed, shards[2]], tmp_path / "m4")
    unfinished = tmp_path / "unfinished"
    (unfinished / "search").mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump(config))
    (unfinished / "search" / "trees.jsonl").write_text("")
    with pytest.raises(RstarError, match=r"unfinished/search is not finished \(no DONE marker\)"):
        merge_shards([shards[0], unfinished, shards[2]], tmp_path / "m5")


def test_the_merge_command(runs, tmp_path):
    _, _, shards = runs
    done = rstar("merge", *map(str, shards), "-o", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    assert f"search: {PROBLEMS} problems" in done.stdout and f"merged {SHARDS} shards" in done.stdout
    failed = rstar("merge", str(shards[0]), "-o", str(tmp_path / "other"))
    assert failed.returncode == 2 and "shard 2/3, 3/3 missing" in failed.stderr
