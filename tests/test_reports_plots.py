"""runner.reports.plots: the leaderboard's plot drawn by a child process is the plot drawn in this one."""

from runner.reports import plots as metric_plot
from runner.reports.leaderboard import metric_plot_data
from runner.records.query import parse_metric, rank

DATA = {"groups": ["vgg16 + gap", "mobilenet + gap"], "values": [[0.61, 0.7, 0.66], [0.8, 0.83]],
        "best": {"value": 0.83, "position": 2, "label": "best: r2 (0.8300)"},
        "xlabel": "val_weighted_recall (validation split)"}


def test_the_child_draws_the_same_png_as_this_process():
    with metric_plot.PlotProcess() as plotter:
        plotter.submit(DATA)
        png = plotter.result()
    assert png.startswith(b"\x89PNG") and png == metric_plot.draw(DATA)


def test_a_failing_child_falls_back_to_drawing_here(monkeypatch):
    monkeypatch.setattr(metric_plot, "SAFE_PATH", ["-c", "import sys; sys.exit(3)"])  # the child exits at once
    with metric_plot.PlotProcess() as plotter:
        plotter.submit(DATA)
        assert plotter.result() == metric_plot.draw(DATA)


def test_nothing_submitted_ends_the_child_and_gives_none():
    with metric_plot.PlotProcess() as plotter:
        proc = plotter._proc
        assert plotter.result() is None
    assert proc.returncode == 0


def test_plot_data_groups_runs_by_base_and_head_worst_median_first(make_record):
    ranking = parse_metric("weighted_recall")
    records = [make_record("a", 0.7, base="vgg16"), make_record("b", 0.9, base="mobilenet"),
               make_record("c", 0.8, base="mobilenet"), make_record("d", 0.6, base="vgg16")]
    data = metric_plot_data(rank(records, ranking), ranking)
    assert data["groups"] == ["vgg16 + gap", "mobilenet + gap"]
    assert data["values"] == [[0.7, 0.6], [0.9, 0.8]]
    assert data["best"] == {"value": 0.9, "position": 2, "label": "best: b (0.9000)"}
    assert data["xlabel"] == "val_weighted_recall (validation split)"
