"""The compare view: `nbsweep compare` (`runner.reports.compare`) and the leaderboard's "compare selected".

Hand-made records with histories, per-class figures and predictions files (no sweep). The browser test
opens both pages in real headless Chromium (as tests/test_reports_leaderboard_browser.py does); it is skipped
with the reason where Chromium, chromedriver or selenium are missing.
"""

import html
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from runner import cli
from runner.records import DataSection, RunRecord, SplitMetrics, write_record
from runner.reports.compare import write_compare
from runner.reports.compare_data import CURVE_METRICS, compare_payload, curves
from runner.reports.leaderboard import write_leaderboard

EVIL = "</script><script>alert('x')</script>"
"""A run name and a parameter value that would run if the page did not escape them."""
CLASSES = ["cat", "d<o>g"]
N_IMAGES = 40
RUN_IDS = ["20261121-120000-aaaaaaaa", "20261121-120100-bbbbbbbb", "20261121-120200-cccccccc"]


def _split(value: float, matrix) -> SplitMetrics:
    return SplitMetrics(accuracy=value, weighted_precision=value, weighted_recall=value, weighted_f1=value,
                        macro_precision=value, macro_recall=value, macro_f1=value, confusion_matrix=matrix,
                        per_class={c: {"precision": value, "recall": value - 0.1 * i, "f1": value - 0.05 * i,
                                       "support": N_IMAGES / 2} for i, c in enumerate(CLASSES)})


@pytest.fixture
def logs(tmp_path):
    """3 completed runs (learning_rate and name differ; the last a rerun of the first) with saved test predictions."""
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, N_IMAGES)
    predicted = {}
    for i, (run_id, lr, accuracy) in enumerate(zip(RUN_IDS, (0.001, 0.01, 0.1), (0.85, 0.7, 0.6))):
        folder = tmp_path / "experiments" / run_id
        folder.mkdir(parents=True)
        guess = np.where(rng.random(N_IMAGES) < accuracy, truth, 1 - truth)
        predicted[run_id] = guess
        p = np.where(guess == 1, 0.8, 0.2)
        pd.DataFrame({"path": [f"/data/img_{k}.png" for k in range(N_IMAGES)][::1 if i != 1 else -1],
                      "true_label": [CLASSES[t] for t in truth][::1 if i != 1 else -1],
                      "predicted_label": [CLASSES[g] for g in guess][::1 if i != 1 else -1],
                      "confidence": np.maximum(p, 1 - p)[::1 if i != 1 else -1],
                      "prob_cat": (1 - p)[::1 if i != 1 else -1], "prob_d<o>g": p[::1 if i != 1 else -1],
                      }).to_csv(folder / "predictions.csv", index=False)
        (folder / f"{run_id}.html").write_text("<html><body>run</body></html>", encoding="utf-8")
        epochs = 4 + i  # runs of different lengths
        history = {"head": {m: list(np.linspace(1.0, 0.5 + 0.1 * i, epochs)) for m in CURVE_METRICS},
                   "fine_tune": {m: [0.45, 0.4] for m in CURVE_METRICS}}
        record = RunRecord(
            run_id=run_id, config_hash="ab" * 32, status="completed", started_at="s", finished_at="f",
            name=EVIL if i == 0 else f"run {i}",
            params={"base": "mobilenet", "head": "gap", "learning_rate": lr, "dense_units": [16],
                    "note": EVIL if i == 0 else "plain"},
            metrics=_split(accuracy, [[15, 5], [3, 17]]), val_metrics=_split(accuracy + 0.02, [[15, 5], [3, 17]]),
            data=DataSection(dir="/data", class_names=CLASSES, manifest_hash="1" * 64),
            history=history, best_epoch=epochs + 1, best_phase="fine_tune", epochs_run=epochs + 2,
            timings={"train_s": 12.5 + i, "eval_s": 1.0, "total_s": 20.0},
            paths={"html": f"../experiments/{run_id}/{run_id}.html",
                   "predictions": f"../experiments/{run_id}/predictions.csv"},
            activation_cache={"head": {"status": "hit"}, "evaluation": {"from_cache": True}},
            rerun_of=RUN_IDS[0] if i == 2 else None)
        write_record(record, tmp_path / "logs")
    return tmp_path / "logs", truth, predicted


def _mcnemar_p(truth, a, b) -> float:
    only_a = int(np.sum((a == truth) & (b != truth)))
    only_b = int(np.sum((a != truth) & (b == truth)))
    return scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue


def test_compare_page_shows_differing_params_charts_tests_and_escapes_every_user_string(logs, tmp_path):
    logs_dir, truth, predicted = logs
    page = write_compare(RUN_IDS, logs_dir, tmp_path / "compare.html")
    assert [rec.run_id for rec in page.runs] == RUN_IDS
    text = page.path.read_text(encoding="utf-8")

    # escaped everywhere: the page has no script at all, the evil strings appear only escaped
    assert "<script" not in text and "alert('x')" not in text
    assert html.escape(EVIL, quote=True) in text
    assert "d&lt;o&gt;g" in text and "d<o>g" not in text

    # the parameters that differ, in a table; the same ones are there, hidden by the CSS toggle
    rows = re.findall(r'<tr class="(differs|same)"><th>([^<]+)</th>', text)
    assert rows == [("differs", "learning_rate"), ("differs", "note"),
                    ("same", "base"), ("same", "head"), ("same", "dense_units")]
    assert 'id="show-all-params"' in text

    # one chart per metric, one line per run in each, and each run's best epoch marked
    charts = re.findall(r'<figure class="chart" data-metric="([a-z_]+)"><svg.*?</svg>', text, flags=re.S)
    assert charts == list(CURVE_METRICS)
    for metric in CURVE_METRICS:
        svg = re.search(rf'data-metric="{metric}"><svg.*?</svg>', text, flags=re.S).group(0)
        assert [int(i) for i in re.findall(rf'<g id="{metric}-run-(\d+)">', svg)] == [0, 1, 2]
        assert len(re.findall(rf'<g id="{metric}-best-\d+">', svg)) == 3
        for i in range(3):
            line = re.search(rf'<g id="{metric}-run-{i}">\s*<path d="([^"]+)"', svg).group(1)
            assert line.count("L") == 4 + i + 2 - 1  # one vertex per epoch of that run, both phases

    # McNemar against the first run: the p-values scipy gives on the same predictions
    for other in RUN_IDS[1:]:
        expected = _mcnemar_p(truth, predicted[RUN_IDS[0]], predicted[other])
        row = re.search(rf"<td>{RUN_IDS[0]} vs {other}</td>(.*?)</tr>", text).group(1)
        assert f'<td class="p">{expected:.4g}</td>' in row
    assert "The p-value is the probability" in text

    # per-class figures with the difference to the first run, confusion matrices, timings, the rerun
    assert text.count('<table class="confusion">') == 3
    assert '<span class="diff down">-0.1500</span>' in text  # test accuracy 0.7 vs 0.85
    assert "head: hit; evaluation: from cache" in text
    assert re.search(rf"<td>run 2</td><td>completed</td><td>run</td><td></td><td>{RUN_IDS[0]}</td>", text)


def test_compare_refuses_runs_of_other_test_splits_in_the_test_row_and_bad_input_exits_2(logs, tmp_path,
                                                                                         monkeypatch, capsys):
    logs_dir, _, _ = logs
    other = RunRecord.model_validate_json((logs_dir / f"{RUN_IDS[1]}.json").read_text())
    other.data.manifest_hash = "2" * 64
    write_record(other, logs_dir)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", RUN_IDS[0], RUN_IDS[1], "--out", "c.html"]) == 0
    text = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert "not tested: runs" in text and "were tested on different splits" in text
    assert cli.main(["compare", RUN_IDS[0]]) == 2
    assert "give at least 2 runs to compare" in capsys.readouterr().err
    assert cli.main(["compare", RUN_IDS[0], "nothing-like-it"]) == 2
    assert "error: run: no record for 'nothing-like-it'" in capsys.readouterr().err
    assert cli.main(["compare", RUN_IDS[0], RUN_IDS[0][:17]]) == 2
    assert "is given twice" in capsys.readouterr().err


def test_curves_concatenate_both_phases():
    record = RunRecord(run_id="r", config_hash="c", status="completed", started_at="s", finished_at="f", params={},
                       history={"fine_tune": {"loss": [0.3], "val_loss": [0.4]},
                                "head": {"loss": [1.0, 0.5], "val_loss": [1.1, float("nan")], "accuracy": [0.5, 0.6]}},
                       best_epoch=3)
    assert curves(record) == {"curves": {"loss": [1.0, 0.5, 0.3], "accuracy": [0.5, 0.6, None],
                                         "val_loss": [1.1, None, 0.4]},
                              "phase_ends": [2], "best_epoch": 3}


def test_leaderboard_embeds_the_shown_rows_as_json_that_cannot_close_its_script(logs, tmp_path):
    logs_dir, _, _ = logs
    write_leaderboard(logs_dir, tmp_path / "leaderboard.html", top_n=2)
    text = (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    embedded = re.search(r'<script type="application/json" id="compare-data">(.*?)</script>', text, flags=re.S)
    payload = json.loads(embedded.group(1))
    assert [run["run_id"] for run in payload["runs"]] == RUN_IDS[:2]  # the rows shown (top 2), ranked
    records = [RunRecord.model_validate_json((logs_dir / f"{run_id}.json").read_text()) for run_id in RUN_IDS[:2]]
    assert payload == json.loads(json.dumps(compare_payload(records)))
    assert "<" not in embedded.group(1) and EVIL not in text
    assert text.count('class="pick"') == 2 and 'id="compare-selected"' in text
    # the two first rows, tested on their test predictions
    _, truth, predicted = logs
    expected = _mcnemar_p(truth, predicted[RUN_IDS[0]], predicted[RUN_IDS[1]])
    assert (f"McNemar&#x27;s exact test on the test split, {RUN_IDS[0]} vs {RUN_IDS[1]}: "
            f"<b>p = {expected:.4g}</b>") in text


from helpers import CHROMEDRIVER, CHROMIUM, start_chromium  # noqa: E402


@pytest.mark.slow  # starts Chromium
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Chromium and chromedriver are not installed "
                    "(Debian: apt-get install chromium chromium-driver; tests/install_chromium.sh)")
def test_compare_selected_in_a_real_browser(logs, tmp_path):
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By

    logs_dir, _, _ = logs
    write_leaderboard(logs_dir, tmp_path / "leaderboard.html")
    write_compare(RUN_IDS, logs_dir, tmp_path / "compare.html")
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        driver.get((tmp_path / "leaderboard.html").as_uri())
        button = driver.find_element(By.ID, "compare-selected")
        assert not button.is_enabled() and not driver.find_element(By.ID, "compare").is_displayed()
        ticks = {box.get_attribute("value"): box for box in driver.find_elements(By.CSS_SELECTOR, "#board input.pick")}
        assert set(ticks) == set(RUN_IDS)
        ticks[RUN_IDS[0]].click()
        ticks[RUN_IDS[2]].click()
        assert button.is_enabled()
        button.click()
        section = driver.find_element(By.ID, "compare")
        assert section.is_displayed()
        table = section.find_element(By.ID, "compare-params")
        shown = [row.find_element(By.TAG_NAME, "th").text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
                 if row.is_displayed()]
        assert shown == ["learning_rate", "note"]  # the ones that differ, and only those
        assert EVIL in table.text  # shown as text, not run
        charts = section.find_elements(By.CSS_SELECTOR, "figure.chart")
        assert [chart.get_attribute("data-metric") for chart in charts] == list(CURVE_METRICS)
        for chart in charts:
            lines = chart.find_elements(By.CSS_SELECTOR, "svg polyline.curve")
            assert [line.get_attribute("data-run") for line in lines] == [RUN_IDS[0], RUN_IDS[2]]
            assert len(chart.find_elements(By.CSS_SELECTOR, "svg circle.best")) == 2
        section.find_element(By.ID, "compare-show-all").click()
        assert len([row for row in table.find_elements(By.CSS_SELECTOR, "tbody tr") if row.is_displayed()]) == 5

        driver.get((tmp_path / "compare.html").as_uri())
        assert driver.title == "Compare 3 runs"
        for chart in driver.find_elements(By.CSS_SELECTOR, "figure.chart"):
            metric = chart.get_attribute("data-metric")
            assert len(chart.find_elements(By.CSS_SELECTOR, f"g[id^='{metric}-run-'] path")) == 3
        params = driver.find_element(By.ID, "params")
        assert len([r for r in params.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]) == 2
        driver.find_element(By.CSS_SELECTOR, "label[for=show-all-params]").click()
        assert len([r for r in params.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]) == 5
        driver.save_screenshot(str(tmp_path / "compare.png"))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


@pytest.mark.slow  # starts a Python process
def test_the_compare_command_imports_no_tensorflow(logs, tmp_path):
    import subprocess
    import sys

    from runner import PROJECT_ROOT

    logs_dir, _, _ = logs
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "compare", *RUN_IDS[:2],
                           "--logs-dir", str(logs_dir), "--out", str(tmp_path / "c.html")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"wrote {tmp_path / 'c.html'} (2 runs; first: {RUN_IDS[0]})")
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"tensorflow", "keras"}
