"""``rstar view`` without a browser: the self-contained page of ``-o``, the command's errors, and the local server's
endpoints."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import rstar
from rstar_view.server import ViewServer
from rstar_view.trees import TreeStore, tree_view
from view_helpers import CELLS, read_trees

DATA = re.compile(r'<script type="application/json" id="rstar-data">(.*?)</script>', re.S)


def embedded(page: str) -> dict:
    (data,) = DATA.findall(page)
    return json.loads(data)


def test_the_written_page_is_self_contained_and_carries_every_tree(compare_folder, tmp_path):
    out = tmp_path / "page.html"
    proc = rstar("view", str(compare_folder), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out} (24 trees from 4 trees files)" in proc.stdout
    page = out.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert not re.search(r"<(link|script|img|iframe)[^>]*\s(src|href)=\"(?!data:)", page), "the page loads a file"
    assert "@import" not in page and "url(" not in page
    data = embedded(page)
    assert data["live"] is False
    assert {s["label"]: s["key"] for s in data["index"]["sources"]} == CELLS
    for key in CELLS.values():
        for problem, tree in read_trees(compare_folder / key / "trees.jsonl").items():
            assert data["trees"][key][problem] == tree_view(tree)


def test_text_in_the_trees_cannot_end_the_pages_script(tmp_path):
    hostile = "</script><script>alert(1)</script><!--"
    tree = {
        "id": "p<1>",
        "question": hostile,
        "answer": hostile,
        "strategy": "greedy",
        "prediction": None,
        "correct": None,
        "usage": {},
        "nodes": [{"id": "0", "parent": None, "depth": 0, "text": hostile}],
    }
    (tmp_path / "trees.jsonl").write_text(json.dumps(tree) + "\n")
    proc = rstar("view", str(tmp_path / "trees.jsonl"), "-o", str(tmp_path / "page.html"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data's and the script's own
    assert embedded(page)["trees"]["trees.jsonl"]["p<1>"]["question"] == hostile


def test_command_errors(tmp_path):
    proc = rstar("view", str(tmp_path), "--port", "0", "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2 and "give --port (serve the page) or -o (write it), not both" in proc.stderr
    proc = rstar("view", str(tmp_path), "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2 and "no trees found" in proc.stderr and "Traceback" not in proc.stderr
    proc = rstar("view", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_bad_lines_are_reported_and_skipped(tmp_path):
    good = {
        "id": "p0",
        "question": "q",
        "answer": None,
        "strategy": "greedy",
        "prediction": None,
        "correct": None,
        "usage": {},
        "nodes": [{"id": "0", "parent": None, "depth": 0, "text": ""}],
    }
    (tmp_path / "trees.jsonl").write_text("{oops\n" + json.dumps(good) + "\n")
    proc = rstar("view", str(tmp_path), "-o", str(tmp_path / "page.html"))
    assert proc.returncode == 0, proc.stderr
    assert "trees.jsonl:1: not a JSON line" in proc.stderr
    assert "wrote" in proc.stdout and "(1 trees from 1 trees files)" in proc.stdout


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[ViewServer, Path]]:
    folder = tmp_path / "run"
    server = ViewServer(TreeStore(folder, min_interval_s=0), 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, folder
    server.shutdown()
    server.server_close()


def get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_server_serves_the_page_the_index_and_trees_and_follows_a_running_search(served):
    server, folder = served
    assert server.server_address[0] == "127.0.0.1"
    status, page = get(server.url)
    assert status == 200 and b"rstar-data" in page and b"http://" not in page
    index = json.loads(get(server.url + "api/index")[1])
    assert index["sources"] == [] and index["problems"] == []  # the search has not finished a problem yet
    trees = folder / "search" / "trees.jsonl"
    trees.parent.mkdir(parents=True)
    tree = {
        "id": "p0",
        "question": "q",
        "answer": "1",
        "strategy": "greedy",
        "prediction": "1",
        "correct": True,
        "usage": {},
        "nodes": [
            {"id": "0", "parent": None, "depth": 0, "text": ""},
            {
                "id": "0.1",
                "parent": "0",
                "depth": 1,
                "text": "x",
                "final_answer": "1",
                "terminal": True,
                "correct": True,
            },
        ],
    }
    trees.write_text(json.dumps(tree) + "\n")
    index = json.loads(get(server.url + f"api/index?version={index['version']}")[1])
    assert [(p["source"], p["id"], p["status"]) for p in index["problems"]] == [("search", "p0", "correct")]
    unchanged = json.loads(get(server.url + f"api/index?version={index['version']}")[1])
    assert unchanged == {"version": index["version"], "unchanged": True}
    status, body = get(server.url + "api/tree?source=search&id=p0")
    assert status == 200 and json.loads(body) == tree_view(tree)
    assert json.loads(body)["path"] == ["0", "0.1"]
    assert get(server.url + "api/tree?source=search&id=nope")[0] == 404
    assert get(server.url + "nope")[0] == 404


def test_the_server_refuses_other_host_names(served):
    server, _ = served
    status, body = get(server.url + "api/index", host=f"attacker.example:{server.server_port}")
    assert status == 403 and body == b"unknown host"
    assert get(server.url, host=f"localhost:{server.server_port}")[0] == 200


def test_the_served_page_links_the_folders_report(served):
    """`rstar report` (and `rstar run`) write report.md and report.png; the served viewer links them."""
    server, folder = served
    folder.mkdir(parents=True, exist_ok=True)
    assert json.loads(get(server.url + "api/index")[1])["report"] is False
    assert get(server.url + "report")[0] == 404
    (folder / "report.md").write_text("# rstar run\n\n| round | a<b |\n")
    (folder / "report.png").write_bytes(b"\x89PNG fake")
    assert json.loads(get(server.url + "api/index")[1])["report"] is True
    status, page = get(server.url + "report")
    assert status == 200 and b'<img src="report.png"' in page and b"a&lt;b" in page  # the Markdown, escaped
    assert get(server.url + "report.png") == (200, b"\x89PNG fake")
