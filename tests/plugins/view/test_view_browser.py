"""``rstar view`` in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium, on the page the real command serves for a real compare folder.

Skipped when Chromium, its driver or Selenium is missing (CI installs them and fails on a skip). Set
``RSTAR_SCREENSHOTS=docs/images`` to write the screenshots the docs show; otherwise they go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, RSTAR
from rstar_view.trees import tree_view
from view_helpers import CELLS, big_tree, read_trees

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs chromium and chromedriver: apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: install the dev extra")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TIMEOUT = 20

RENDERED = """
const done = arguments[arguments.length - 1];
const started = performance.now();
window.addEventListener("rstar-view-rendered", (e) => {
  // The frame after the drawing has been painted.
  requestAnimationFrame(() => setTimeout(() => done({ms: performance.now() - started, detail: e.detail}), 0));
}, {once: true});
"""


def rendered(driver: Any, action: str) -> dict[str, Any]:
    """Run ``action`` (JavaScript) and wait until the page has drawn a tree and painted it: the time that took
    (``ms``) and what was drawn (``detail``)."""
    return driver.execute_async_script(RENDERED + action)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    browser.set_script_timeout(60)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("RSTAR_SCREENSHOTS")
    folder = (
        (REPO / where if not Path(where).is_absolute() else Path(where)) if where else tmp_path_factory.mktemp("shots")
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``rstar view FOLDER --port 0``, the real command: the page's address."""
    proc = subprocess.Popen(
        [RSTAR, "view", str(folder), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield line.split(" at ", 1)[1].split()[0]
    finally:
        proc.terminate()  # SIGTERM ends it as Ctrl-C does, also where it started with SIGINT ignored (CI)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # the test fails, but leaves no server behind
            proc.wait()
            raise


@pytest.fixture(scope="module")
def compare_url(compare_folder: Path) -> Iterator[str]:
    with serve(compare_folder) as url:
        yield url


def wait(driver: Any, condition: Any, message: str) -> Any:
    return WebDriverWait(driver, TIMEOUT).until(lambda d: condition(d), message)


def listed(driver: Any) -> list[tuple[str, str, str]]:
    """The problem list: (source, id, status) of each entry, read in one go (a poll may redraw the list)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#problems li[data-id]')]"
        ".map(li => [li.dataset.source, li.dataset.id, li.dataset.status])"
    )
    return [tuple(row) for row in rows]


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: listed(d) and d.find_elements(By.CSS_SELECTOR, '[data-pane="0"] svg.tree'), "no tree drawn")


def text_of(driver: Any, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).get_property("textContent")


def test_filter_pick_a_problem_click_a_node_and_read_its_step(driver, compare_folder, compare_url, screenshots):
    open_page(driver, compare_url)
    source = CELLS["mcts@8"]
    trees = read_trees(compare_folder / source / "trees.jsonl")
    everything = sum(len(read_trees(compare_folder / key / "trees.jsonl")) for key in CELLS.values())
    assert len(listed(driver)) == everything

    Select(driver.find_element(By.ID, "source")).select_by_value(source)
    assert sorted(i for _, i, _ in listed(driver)) == sorted(trees)
    Select(driver.find_element(By.ID, "status")).select_by_value("correct")
    correct = sorted(p for p, t in trees.items() if t["correct"])
    assert correct and sorted(i for _, i, _ in listed(driver)) == correct
    Select(driver.find_element(By.ID, "status")).select_by_value("all")
    problem = max(trees.values(), key=lambda t: len(t["nodes"]))
    words = problem["question"].split()[2:4]  # "What is 14 plus 5?": "14 plus"
    driver.find_element(By.ID, "search").send_keys(" ".join(words))
    assert [i for _, i, _ in listed(driver)] == [p for p, t in trees.items() if " ".join(words) in t["question"]]

    drawn = rendered(driver, f'document.querySelector(`#problems li[data-id="{problem["id"]}"]`).click()')
    assert drawn["detail"] == {**drawn["detail"], "id": problem["id"], "source": source}
    assert text_of(driver, '[data-pane="0"] .info .title b') == problem["id"]
    assert text_of(driver, '[data-pane="0"] .info .question') == problem["question"]

    view = tree_view(problem)
    on_path = driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] circle.on-path')
    assert sorted(view["nodes"][int(c.get_attribute("data-i"))]["id"] for c in on_path) == sorted(view["path"])
    if view["chosen"] is not None:  # the chosen answer is selected when the tree opens
        assert text_of(driver, '[data-pane="0"] .detail .nid') == view["chosen"]

    index, node = next((i, n) for i, n in enumerate(problem["nodes"]) if n.get("final_answer") and not n["output"])
    driver.find_element(By.CSS_SELECTOR, f'[data-pane="0"] circle[data-i="{index}"]').click()
    assert text_of(driver, '[data-pane="0"] .detail pre.step') == node["text"]
    assert driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] .detail .no-output')
    index, node = next((i, n) for i, n in enumerate(problem["nodes"]) if n.get("output"))
    driver.find_element(By.CSS_SELECTOR, f'[data-pane="0"] circle[data-i="{index}"]').click()
    assert text_of(driver, '[data-pane="0"] .detail .nid') == node["id"]
    assert text_of(driver, '[data-pane="0"] .detail pre.step') == node["text"]
    assert text_of(driver, '[data-pane="0"] .detail pre.output') == node["output"]
    assert text_of(driver, '[data-pane="0"] .detail .fact-visits b') == str(node["visits"])
    q = node["q_value"]
    assert text_of(driver, '[data-pane="0"] .detail .fact-Q b') == (
        str(int(q)) if float(q).is_integer() else f"{q:.3f}"
    )
    assert driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] .detail pre.step .tok-bi')  # print(...) highlighted

    # Collapse the first child of the root with a double-click, then open it again.
    parent = next(
        i
        for i, n in enumerate(problem["nodes"])
        if n["parent"] == "0" and any(m["parent"] == n["id"] for m in problem["nodes"])
    )
    shown = len(driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] circle[data-i]'))
    circle = f'[data-pane="0"] circle[data-i="{parent}"]'
    ActionChains(driver).double_click(driver.find_element(By.CSS_SELECTOR, circle)).perform()
    assert "collapsed" in driver.find_element(By.CSS_SELECTOR, circle).get_attribute("class")
    assert len(driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] circle[data-i]')) < shown
    ActionChains(driver).double_click(driver.find_element(By.CSS_SELECTOR, circle)).perform()
    assert len(driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] circle[data-i]')) == shown

    # The picture for the docs: the whole cell listed, nodes labelled with their steps, a code step selected.
    driver.execute_script(
        "const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'))"
    )
    Select(driver.find_element(By.CSS_SELECTOR, '[data-pane="0"] select[title="node labels"]')).select_by_value("steps")
    driver.find_element(By.CSS_SELECTOR, f'[data-pane="0"] circle[data-i="{index}"]').click()
    driver.save_screenshot(str(screenshots / "view.png"))

    # Offline: the page asked its own server for everything, and nothing else.
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(compare_url) for name in loaded), loaded


def test_two_cells_side_by_side(driver, compare_folder, compare_url, screenshots):
    open_page(driver, compare_url)
    mcts, vote = CELLS["mcts@8"], CELLS["vote@4"]
    problem = next(iter(read_trees(compare_folder / mcts / "trees.jsonl")))
    other = read_trees(compare_folder / vote / "trees.jsonl")[problem]
    rendered(driver, f'window.rstarView.open("{mcts}", "{problem}")')
    rendered(
        driver,
        f'const s = document.getElementById("compare"); s.value = "{vote}"; s.dispatchEvent(new Event("change"))',
    )
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-pane="1"] svg.tree'), "no second tree")
    assert text_of(driver, '[data-pane="1"] .info .title b') == problem
    assert "vote@4" in text_of(driver, '[data-pane="1"] .info .title')
    assert "mcts@8" in text_of(driver, '[data-pane="0"] .info .title')
    circles = driver.find_elements(By.CSS_SELECTOR, '[data-pane="1"] circle[data-i]')
    assert len(circles) == len(other["nodes"])
    view = tree_view(other)
    if view["chosen"] is not None:
        chosen = next(n for n in other["nodes"] if n["id"] == view["chosen"])
        assert text_of(driver, '[data-pane="1"] .detail pre.step') == chosen["text"]
    driver.save_screenshot(str(screenshots / "view-compare.png"))


def test_the_written_page_works_from_disk(driver, compare_folder, tmp_path):
    page = tmp_path / "page.html"
    subprocess.run([RSTAR, "view", str(compare_folder), "-o", str(page)], check=True, capture_output=True)
    open_page(driver, page.as_uri())
    assert len(listed(driver)) == 24
    assert text_of(driver, "#live") == "static page"
    source, problem, _ = listed(driver)[0]
    nodes = read_trees(compare_folder / source / "trees.jsonl")[problem]["nodes"]
    driver.find_element(By.CSS_SELECTOR, f'[data-pane="0"] circle[data-i="{len(nodes) - 1}"]').click()
    assert text_of(driver, '[data-pane="0"] .detail pre.step') == nodes[-1]["text"]


def tree_line(problem: str, **fields: Any) -> str:
    tree = {
        "id": problem,
        "question": f"Live question {problem}",
        "answer": "2",
        "strategy": "greedy",
        "prediction": "2",
        "correct": True,
        "usage": {},
        "nodes": [
            {"id": "0", "parent": None, "depth": 0, "text": ""},
            {
                "id": "0.1",
                "parent": "0",
                "depth": 1,
                "text": "<answer>\\boxed{2}<end_of_answer>",
                "terminal": True,
                "final_answer": "2",
                "correct": True,
            },
        ],
        **fields,
    }
    return json.dumps(tree) + "\n"


def test_new_trees_show_up_without_a_restart(driver, tmp_path):
    trees = tmp_path / "run" / "round_1" / "search" / "trees.jsonl"
    trees.parent.mkdir(parents=True)
    trees.write_text(tree_line("a1"))
    with serve(tmp_path / "run") as url:
        open_page(driver, url)
        assert listed(driver) == [("round_1/search", "a1", "correct")]
        line = tree_line("a2", prediction="3", correct=False)
        with trees.open("a") as fh:  # a search appending one line, in two writes
            fh.write(line[:40])
            fh.flush()
            time.sleep(2.5)
            fh.write(line[40:])
        wait(driver, lambda d: len(listed(d)) == 2, "the appended tree did not show up")
        assert listed(driver)[1] == ("round_1/search", "a2", "wrong")
        evaluate = tmp_path / "run" / "round_1" / "evaluate" / "greedy" / "trees.jsonl"
        evaluate.parent.mkdir(parents=True)
        evaluate.write_text(tree_line("a1"))
        wait(driver, lambda d: len(listed(d)) == 3, "the new trees file did not show up")
        sources = driver.execute_script("return [...document.getElementById('source').options].map(o => o.value)")
        assert sources == ["all", "round_1/evaluate/greedy", "round_1/search"]
        assert "live" in text_of(driver, "#live")


def test_a_5000_node_tree_renders_and_responds_in_under_a_second(driver, tmp_path, screenshots):
    folder = tmp_path / "large"
    folder.mkdir()
    big = big_tree(5000)
    (folder / "trees.jsonl").write_text(tree_line("small") + json.dumps(big) + "\n")
    with serve(folder) as url:
        open_page(driver, url)
        opened = rendered(driver, 'document.querySelector(`#problems li[data-id="big"]`).click()')
        assert opened["detail"]["nodes"] == 5000
        expanded = rendered(driver, 'document.querySelector(`[data-pane="0"] button.expand-all`).click()')
        assert expanded["detail"]["shown"] == 5000
        assert len(driver.find_elements(By.CSS_SELECTOR, '[data-pane="0"] circle[data-i]')) == 5000
        index = 4321
        clicked = driver.execute_async_script(
            """
            const [i, done] = [arguments[0], arguments[arguments.length - 1]];
            const started = performance.now();
            const circle = document.querySelector(`[data-pane="0"] circle[data-i="${i}"]`);
            circle.dispatchEvent(new MouseEvent("click", {bubbles: true}));
            requestAnimationFrame(() => setTimeout(() => done(performance.now() - started), 0));
            """,
            index,
        )
        assert text_of(driver, '[data-pane="0"] .detail pre.step') == big["nodes"][index]["text"]
        collapsed = rendered(driver, "window.rstarView.panes[0].collapseBelow(3)")
        print(
            f"\n5,000-node tree in headless Chromium: opened (fetch, layout, draw, paint) in {opened['ms']:.0f} ms "
            f"with {opened['detail']['shown']} nodes shown; expanded to all 5,000 in {expanded['ms']:.0f} ms; "
            f"a node click answered in {clicked:.0f} ms; collapsed below depth 3 in {collapsed['ms']:.0f} ms"
        )
        for what, ms in (
            ("open", opened["ms"]),
            ("expand all", expanded["ms"]),
            ("click", clicked),
            ("collapse", collapsed["ms"]),
        ):
            assert ms < 1000, f"{what} took {ms:.0f} ms"
        rendered(driver, "window.rstarView.panes[0].pathOnly()")
        driver.save_screenshot(str(screenshots / "view-large.png"))
