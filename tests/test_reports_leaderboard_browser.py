"""The leaderboard as a person uses it: real headless Chromium sorts, filters, toggles and follows links.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and selenium; skipped
with the reason where they are missing. Fake records only (no sweep): a few seconds.

The screenshot is written to the test's tmp folder and copied to `$NBSWEEP_ARTIFACTS_DIR`
(default `<repo>/.artifacts/`) as `leaderboard.png`; the test prints both paths (`pytest -s`).
"""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from runner import PROJECT_ROOT
from runner.reports.leaderboard import write_leaderboard
from runner.records import COMPLETED, FAILED, RunRecord, SplitMetrics, write_record

from helpers import CHROMEDRIVER, CHROMIUM, start_chromium
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver; "
           ".ci/run installs them)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -r requirements.txt)")
from selenium.webdriver.common.by import By  # noqa: E402 (imported after the skip)
from selenium.webdriver.common.keys import Keys  # noqa: E402

# run id -> (validation weighted recall, base, head); ranked: ccc, eee, aaa, ddd, bbb
RUNS = {
    "20261121-120000-aaaaaaaa": (0.80, "vgg16", "flatten"),
    "20261121-120100-bbbbbbbb": (0.60, "vgg16", "gap"),
    "20261121-120200-cccccccc": (0.90, "mobilenet", "gap"),
    "20261121-120300-dddddddd": (0.70, "resnet50", "gap"),
    "20261121-120400-eeeeeeee": (0.85, "mobilenet", "gap"),  # warm-started from cccccccc
}
RANKED = ["20261121-120200-cccccccc", "20261121-120400-eeeeeeee", "20261121-120000-aaaaaaaa",
          "20261121-120300-dddddddd", "20261121-120100-bbbbbbbb"]


def make_record(run_id: str, recall: float | None, **params) -> RunRecord:
    """Completed with `recall` as validation weighted recall (test: 0.1 below, so that a test
    ranking would order them the same), or failed when `None`."""
    def split(value: float) -> SplitMetrics:
        return SplitMetrics(accuracy=value - 0.01, weighted_recall=value, weighted_precision=0.5, weighted_f1=0.5,
                            macro_precision=0.5, macro_recall=0.5, macro_f1=0.5, confusion_matrix=[[3, 1], [0, 4]])

    return RunRecord(
        run_id=run_id, config_hash="ab" * 32, status=COMPLETED if recall is not None else FAILED,
        started_at="2026-11-21T12:00:00+00:00", finished_at="2026-11-21T12:01:00+00:00",
        params={"head": "gap", "dropout": 0.5, "dense_units": [256], **params},
        metrics=split(recall - 0.1) if recall is not None else None,
        val_metrics=split(recall) if recall is not None else None, epochs_run=2,
        timings={"train_s": 12.5, "eval_s": 1.0, "total_s": 20.0},
        paths={"html": f"../experiments/{run_id}/{run_id}.html"},
        error=None if recall is not None else {"ename": "ValueError", "evalue": "bad <base>"},
    )


@pytest.fixture
def board(tmp_path) -> Path:
    """A leaderboard of 5 completed runs and 1 failed one, each with a tiny saved html page."""
    records = [make_record(run_id, recall, base=base, head=head) for run_id, (recall, base, head) in RUNS.items()]
    records[4] = records[4].model_copy(update={"parent_run_id": "20261121-120200-cccccccc"})
    records.append(make_record("20261121-120500-ffffffff", None, base="vgg16"))
    best = records[2]  # cccccccc: its saved confusion matrix picture is embedded, as a sweep's run has one
    best.paths["confusion_matrix"] = f"../experiments/{best.run_id}/confusion_matrix.png"
    for rec in records:
        write_record(rec, tmp_path / "logs")
        page = tmp_path / "experiments" / rec.run_id / f"{rec.run_id}.html"
        page.parent.mkdir(parents=True)
        if rec is best:
            Image.new("RGB", (300, 240), "steelblue").save(page.parent / "confusion_matrix.png")
        page.write_text(f"<!DOCTYPE html><html><head><title>run {rec.run_id}</title></head>"
                        f"<body><h1>{rec.run_id}</h1></body></html>", encoding="utf-8")
    write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html")
    return tmp_path / "leaderboard.html"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through chromedriver (`helpers.start_chromium`)."""
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def visible_run_ids(driver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")
    return [row.get_attribute("id").removeprefix("run-") for row in rows if row.is_displayed()]


def header(driver, name: str):
    return next(th for th in driver.find_elements(By.CSS_SELECTOR, "#board thead th")
                if th.get_attribute("textContent") == name)


def save_screenshot(driver, tmp_path: Path) -> list[Path]:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 200, 600), 4000))  # the whole page, from its top
    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "leaderboard.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    artifacts = Path(os.environ.get("NBSWEEP_ARTIFACTS_DIR") or PROJECT_ROOT / ".artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    copy = Path(shutil.copy2(shot, artifacts / "leaderboard.png"))
    print(f"\nleaderboard screenshot: {shot}\n                  copy: {copy}")
    return [shot, copy]


@pytest.mark.slow  # starts Chromium
def test_sort_filter_toggle_and_links_in_a_real_browser(board, browser, tmp_path):
    browser.get(board.as_uri())
    assert browser.title == "Leaderboard: weighted_recall"
    assert visible_run_ids(browser) == RANKED
    assert browser.find_element(By.ID, "row-count").text == "5 of 5 runs shown"

    # click the metric header: ascending (worst first), again: descending, numbers sorted as numbers
    header(browser, "val_weighted_recall").click()
    assert visible_run_ids(browser) == RANKED[::-1]
    assert header(browser, "val_weighted_recall").get_attribute("aria-sort") == "ascending"
    header(browser, "val_weighted_recall").click()
    assert visible_run_ids(browser) == RANKED
    header(browser, "test_weighted_recall").click()  # the test figures beside it sort too
    assert visible_run_ids(browser) == RANKED[::-1]
    header(browser, "run").click()
    assert visible_run_ids(browser) == sorted(RUNS)

    # the filter: case-insensitive substring over each row's text, with the count shown
    search = browser.find_element(By.ID, "filter")

    def type_filter(text: str) -> None:  # select all, then type over it (input events, as a person)
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(text or Keys.BACKSPACE)

    type_filter("MobileNet")
    assert visible_run_ids(browser) == ["20261121-120200-cccccccc", "20261121-120400-eeeeeeee"]
    assert browser.find_element(By.ID, "row-count").text == "2 of 5 runs shown"
    type_filter("nothing matches this")
    assert visible_run_ids(browser) == [] and browser.find_element(By.ID, "row-count").text == "0 of 5 runs shown"
    type_filter("")
    assert visible_run_ids(browser) == sorted(RUNS)
    assert browser.find_element(By.ID, "row-count").text == "5 of 5 runs shown"

    # parameters identical across runs are hidden until "show all parameters" is ticked
    assert header(browser, "base").is_displayed()
    assert not header(browser, "dropout").is_displayed()
    browser.find_element(By.ID, "show-all").click()
    assert header(browser, "dropout").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "#run-20261121-120000-aaaaaaaa td.same").text == "0.5"
    browser.find_element(By.ID, "show-all").click()
    assert not header(browser, "dropout").is_displayed()

    header(browser, "rank").click()
    assert visible_run_ids(browser) == RANKED
    images = browser.find_elements(By.CSS_SELECTOR, ".figures img")
    assert len(images) == 2 and all(browser.execute_script("return arguments[0].naturalWidth", img) > 100
                                    for img in images)  # both decoded: real pictures, not broken icons
    for path in save_screenshot(browser, tmp_path):
        assert path.read_bytes().startswith(b"\x89PNG")

    # a child's parent links to the parent's row; each run to its lineage node and its saved html
    child = browser.find_element(By.ID, "run-20261121-120400-eeeeeeee")
    child.find_element(By.LINK_TEXT, "20261121-120200-cccccccc").click()
    assert browser.current_url == board.as_uri() + "#run-20261121-120200-cccccccc"
    browser.find_element(By.ID, "run-20261121-120400-eeeeeeee").find_element(By.LINK_TEXT, "tree").click()
    assert browser.current_url == (board.parent / "lineage.html").as_uri() + "#run-20261121-120400-eeeeeeee"
    assert browser.find_element(By.ID, "run-20261121-120400-eeeeeeee").text == "20261121-120400-eeeeeeee"
    browser.back()
    browser.find_element(By.LINK_TEXT, "20261121-120300-dddddddd").click()
    run_page = board.parent / "experiments" / "20261121-120300-dddddddd" / "20261121-120300-dddddddd.html"
    assert browser.current_url == run_page.as_uri()
    assert browser.title == "run 20261121-120300-dddddddd"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []  # no script error, nothing failed to load


@pytest.mark.slow  # starts Chromium
def test_a_bounded_board_of_many_records_sorts_filters_and_compares_what_it_shows(tmp_path, browser):
    """600 records, two configurations of 150 seeds among them: the page shows 10 rows, each large one with
    `MAX_REPEATS_LISTED` runs; filter, sort and "compare selected" work on them, and the full table is linked."""
    from runner.reports.leaderboard import MAX_REPEATS_LISTED

    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(600):
        config = ("big-a", "big-b")[i % 2] if i < 300 else f"small-{i // 3}"
        level = {"big-a": 0.95, "big-b": 0.94}.get(config, 0.5 + (i % 89) / 1000)
        rec = make_record(f"20261121-{i:06d}-aaaaaaaa", level - (i % 5) / 1000, base="vgg16" if i % 2 else "mobilenet",
                          config=config, seed=i).model_copy(
            update={"group_hash": f"{config:>64}", "history": {"head": {"loss": [1.0, 0.6 - i / 10_000]}},
                    "best_epoch": 2})
        (logs / f"{rec.run_id}.json").write_text(rec.model_dump_json(), encoding="utf-8")
    write_leaderboard(logs, tmp_path / "leaderboard.html")
    browser.get((tmp_path / "leaderboard.html").as_uri())
    assert browser.find_element(By.ID, "row-count").text == "10 of 10 runs shown"
    top = visible_run_ids(browser)
    assert len(top) == 10
    # filter and sort the rows shown
    browser.find_element(By.ID, "filter").send_keys("big-b")
    assert len(visible_run_ids(browser)) == 1
    assert browser.find_element(By.ID, "row-count").text == "1 of 10 runs shown"
    browser.find_element(By.ID, "filter").send_keys(Keys.CONTROL, "a")
    browser.find_element(By.ID, "filter").send_keys(Keys.BACKSPACE)
    header(browser, "n").click()  # ascending: the groups of 3 first, the two of 150 last
    ns = [row.find_elements(By.TAG_NAME, "td")[5].text
          for row in browser.find_elements(By.CSS_SELECTOR, "#board tbody tr")]
    assert ns == sorted(ns, key=int) and ns[-2:] == ["150", "150"]
    # open the best configuration's seeds: the listed runs, the rest counted and linked to the csv
    first = browser.find_element(By.ID, f"run-{top[0]}")
    first.find_element(By.TAG_NAME, "summary").click()
    picks = first.find_elements(By.CSS_SELECTOR, "input.pick")
    assert len(picks) == MAX_REPEATS_LISTED
    more = first.find_element(By.CSS_SELECTOR, "li.more")
    assert more.text == f"+{150 - MAX_REPEATS_LISTED} more seeds in leaderboard.csv"
    picks[1].click()
    picks[2].click()
    browser.find_element(By.ID, "compare-selected").click()
    section = browser.find_element(By.ID, "compare")
    assert section.is_displayed()
    lines = section.find_elements(By.CSS_SELECTOR, "figure.chart[data-metric='loss'] svg polyline.curve")
    assert [line.get_attribute("data-run") for line in lines] == [picks[1].get_attribute("value"),
                                                                   picks[2].get_attribute("value")]
    full = browser.find_element(By.ID, "full-table")
    assert full.get_attribute("href") == (tmp_path / "leaderboard.csv").as_uri()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
