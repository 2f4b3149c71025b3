"""Export of run records to a real MLflow file store (`runner.records.export_mlflow`), read back with
`MlflowClient`."""

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -r requirements.txt)")

from mlflow import MlflowClient  # noqa: E402

from runner import PROJECT_ROOT  # noqa: E402
from runner.errors import ConfigError  # noqa: E402
from runner.records.export_mlflow import (  # noqa: E402
    ALLOW_FILE_STORE_ENV, MAX_PARAM_VALUE, export_order, export_records, flatten_params,
)
from helpers import export_mlflow_main as main  # noqa: E402
from runner.records import (  # noqa: E402
    ENSEMBLE, INTERRUPTED, ModelSection, Timings, WarmStartSection, write_record,
)

PARENT = "20261121-120000-aaaaaaaa"
CHILD = "20261121-110000-bbbbbbbb"  # sorts before its parent: the export must still do the parent first
FAILED_RUN = "20261121-130000-cccccccc"
STOPPED = "20261121-140000-dddddddd"
ENSEMBLE_RUN = "20261121-150000-eeeeeeee"
LONG = "x" * 7000


@pytest.fixture(autouse=True)
def file_store_env():
    """Leave `MLFLOW_ALLOW_FILE_STORE` as it was before each test (the export sets it)."""
    before = os.environ.get(ALLOW_FILE_STORE_ENV)
    os.environ.pop(ALLOW_FILE_STORE_ENV, None)
    yield
    os.environ.pop(ALLOW_FILE_STORE_ENV, None)
    if before is not None:
        os.environ[ALLOW_FILE_STORE_ENV] = before


def _files(root: Path, run_id: str, names) -> None:
    folder = root / "experiments" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"{run_id} {name}\n", encoding="utf-8")


@pytest.fixture
def project(tmp_path, make_record):
    """`logs/` with a parent, a warm-started child, a failed, an interrupted and an ensemble record,
    plus one unreadable record; `experiments/` with the files they list (not the failed run's html)."""
    logs = tmp_path / "logs"
    exp = "../experiments/{0}/{1}"
    parent = make_record(PARENT, 0.8, val_recall=0.7, base="mobilenet", note=LONG)
    parent.paths.update({k: exp.format(PARENT, f) for k, f in [
        ("notebook", f"{PARENT}.ipynb"), ("training_curves", "training_curves.png"),
        ("confusion_matrix", "confusion_matrix.png"), ("predictions", "predictions.csv"),
        ("model", "model.keras")]})
    parent.metrics.per_class = {"glass bottle": {"precision": 0.75, "recall": 1.0, "f1": 0.857, "support": 3}}
    parent.model = ModelSection(base="mobilenet", trainable_params=1234, total_params=5678)
    parent.environment["git_commit"] = "f" * 40
    _files(tmp_path, PARENT, [f"{PARENT}.html", f"{PARENT}.ipynb", "training_curves.png",
                              "confusion_matrix.png", "predictions.csv", "model.keras"])
    child = make_record(CHILD, 0.86, base="mobilenet", warm_start=PARENT,
                        augmentation={"flip": "horizontal", "rotation": 0.1}, base_kwargs={})
    child = child.model_copy(update={
        "parent_run_id": PARENT,
        "warm_start": WarmStartSection(parent_run_id=PARENT, checkpoint=2, weights_sha256="0" * 64,
                                       weights_path=f"../experiments/{PARENT}/checkpoints/epoch_2.weights.h5"),
        "history": {"head": {"loss": [0.9], "val_loss": [1.0]},
                    "fine_tune": {"loss": [0.6, 0.4], "val_loss": [0.8, 0.5]}},
        "best_epoch": 3})
    _files(tmp_path, CHILD, [f"{CHILD}.html"])
    failed = make_record(FAILED_RUN, None, base="vgg16")  # its html is missing on disk
    stopped = make_record(STOPPED, 0.5, base="vgg16").model_copy(update={
        "status": INTERRUPTED, "metrics": None, "val_metrics": None, "history": {}, "best_epoch": None,
        "epochs_run": None, "timings": Timings(total_s=5.0)})
    _files(tmp_path, STOPPED, [f"{STOPPED}.html"])
    ensemble = make_record(ENSEMBLE_RUN, 0.9).model_copy(update={
        "kind": ENSEMBLE, "members": [CHILD, PARENT], "params": {"members": [CHILD, PARENT], "combine": "mean softmax"},
        "history": {}, "best_epoch": None})
    _files(tmp_path, ENSEMBLE_RUN, [f"{ENSEMBLE_RUN}.html"])
    for record in (parent, child, failed, stopped, ensemble):
        write_record(record, logs)
    (logs / "broken.json").write_text("{not json", encoding="utf-8")
    return tmp_path


def _runs(store: Path) -> dict:
    os.environ.setdefault(ALLOW_FILE_STORE_ENV, "true")
    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("nbsweep")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], max_results=100)}


def test_export_reads_back_from_a_file_store(project):
    store = project / "mlruns"
    summary = export_records(project / "logs", str(store))
    assert os.environ[ALLOW_FILE_STORE_ENV] == "true"  # set because the URI is a file store
    assert sorted(summary.exported) == sorted([PARENT, CHILD, FAILED_RUN, STOPPED, ENSEMBLE_RUN])
    assert summary.exported.index(PARENT) < summary.exported.index(CHILD) < summary.exported.index(ENSEMBLE_RUN)
    assert summary.present == [] and summary.failed == {}
    assert list(summary.unreadable) == ["broken.json"]
    assert summary.counts_line() == "exported 5, already present 0, unreadable 1"
    assert any(FAILED_RUN in w and "html" in w for w in summary.warnings)

    client = MlflowClient(store.as_uri())
    runs = _runs(store)
    assert set(runs) == {PARENT, CHILD, FAILED_RUN, STOPPED, ENSEMBLE_RUN}
    parent, child, ensemble = runs[PARENT], runs[CHILD], runs[ENSEMBLE_RUN]

    # params: flattened, as text, cut to MLflow's limit
    assert child.data.params["augmentation.flip"] == "horizontal"
    assert child.data.params["augmentation.rotation"] == "0.1"
    assert child.data.params["base_kwargs"] == "{}"
    assert child.data.params["dense_units"] == "[256]"
    assert child.data.params["warm_start"] == PARENT
    assert parent.data.params["dropout"] == "0.5"
    assert len(parent.data.params["note"]) == MAX_PARAM_VALUE and parent.data.params["note"].endswith("[truncated]")

    # final metrics: the test split under the plain names, the validation split as val_
    m = parent.data.metrics
    assert m["weighted_recall"] == pytest.approx(0.8) and m["accuracy"] == pytest.approx(0.79)
    assert m["val_weighted_recall"] == pytest.approx(0.7) and m["val_accuracy"] == pytest.approx(0.69)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["train_s"] == 12.5 and m["eval_s"] == 1.0 and m["total_s"] == 20.0
    assert m["best_epoch"] == 2 and m["epochs_run"] == 2
    assert m["per_class.glass bottle.recall"] == 1.0 and m["trainable_params"] == 1234
    assert "confusion_matrix" not in m
    assert runs[STOPPED].data.metrics == {"total_s": 5.0}

    # per-epoch history: steps are epochs counted across phases
    loss = client.get_metric_history(child.info.run_id, "history.loss")
    assert [(h.step, h.value) for h in sorted(loss, key=lambda h: h.step)] == [(1, 0.9), (2, 0.6), (3, 0.4)]
    val = client.get_metric_history(parent.info.run_id, "history.val_loss")
    assert sorted((h.step, h.value) for h in val) == [(1, 1.1), (2, 0.7)]
    assert child.data.tags["nbsweep.history_phases"] == "head:1-1,fine_tune:2-3"

    # tags and links
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["nbsweep.parent_run_id"] == PARENT
    assert child.data.tags["nbsweep.warm_start_checkpoint"] == "2"
    assert "mlflow.parentRunId" not in parent.data.tags
    for run, record_id in ((parent, PARENT), (child, CHILD)):
        assert run.data.tags["nbsweep.run_id"] == record_id
        assert run.data.tags["nbsweep.config_hash"] == "ab" * 32
        assert run.data.tags["nbsweep.kind"] == "run"
    assert parent.data.tags["mlflow.source.git.commit"] == "f" * 40
    assert ensemble.data.tags["nbsweep.kind"] == "ensemble"
    assert ensemble.data.tags["nbsweep.members"] == f"{CHILD},{PARENT}"
    assert ensemble.data.tags["nbsweep.member_mlflow_run_ids"] == f"{child.info.run_id},{parent.info.run_id}"
    assert runs[FAILED_RUN].data.tags["nbsweep.error"] == "ValueError: bad <base>"

    # status and times
    assert {name: (r.data.tags["nbsweep.status"], r.info.status) for name, r in runs.items()} == {
        PARENT: ("completed", "FINISHED"), CHILD: ("completed", "FINISHED"), ENSEMBLE_RUN: ("completed", "FINISHED"),
        FAILED_RUN: ("failed", "FAILED"), STOPPED: ("interrupted", "KILLED")}
    start = int(datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc).timestamp() * 1000)
    assert (parent.info.start_time, parent.info.end_time) == (start, start + 60_000)  # the record's times

    # artifacts: the run's files and its record, not the model
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == sorted([
        f"{PARENT}.html", f"{PARENT}.ipynb", f"{PARENT}.json", "confusion_matrix.png",
        "predictions.csv", "training_curves.png"])
    assert sorted(a.path for a in client.list_artifacts(runs[FAILED_RUN].info.run_id)) == [f"{FAILED_RUN}.json"]
    local = client.download_artifacts(parent.info.run_id, "predictions.csv", str(project / "dl"))
    assert Path(local).read_text(encoding="utf-8") == f"{PARENT} predictions.csv\n"

    # exporting again adds nothing
    again = export_records(project / "logs", str(store))
    assert again.exported == [] and sorted(again.present) == sorted(summary.exported)
    assert again.counts_line() == "exported 0, already present 5, unreadable 1"
    assert again.mlflow_ids == summary.mlflow_ids
    assert len(_runs(store)) == 5


def test_changed_record_or_cut_short_export_is_replaced_and_children_relinked(project, make_record):
    store = project / "mlruns"
    first = export_records(project / "logs", str(store))
    # the parent's record changes; an earlier export of the failed run was cut short (left RUNNING)
    changed = make_record(PARENT, 0.81, base="mobilenet")
    write_record(changed, project / "logs")
    client = MlflowClient(store.as_uri())
    client.update_run(first.mlflow_ids[FAILED_RUN], status="RUNNING")

    second = export_records(project / "logs", str(store))
    assert sorted(second.replaced) == sorted([PARENT, FAILED_RUN])
    assert second.counts_line() == "exported 2 (2 replaced), already present 3, unreadable 1"
    assert sorted(second.relinked) == sorted([CHILD, ENSEMBLE_RUN])
    runs = _runs(store)
    assert len(runs) == 5  # the replaced runs are deleted, not duplicated
    assert runs[PARENT].info.run_id == second.mlflow_ids[PARENT] != first.mlflow_ids[PARENT]
    assert runs[PARENT].data.metrics["weighted_recall"] == pytest.approx(0.81)
    assert runs[CHILD].data.tags["mlflow.parentRunId"] == second.mlflow_ids[PARENT]
    assert runs[ENSEMBLE_RUN].data.tags["nbsweep.member_mlflow_run_ids"].endswith(second.mlflow_ids[PARENT])
    assert runs[FAILED_RUN].info.status == "FAILED"
    assert export_records(project / "logs", str(store)).counts_line() == "exported 0, already present 5, unreadable 1"


def test_export_order_parents_and_members_first(make_record):
    child = make_record("2026-a", 0.5).model_copy(update={"parent_run_id": "2026-c"})
    grandchild = make_record("2026-0", 0.5).model_copy(update={"parent_run_id": "2026-a"})
    ensemble = make_record("2026-b", 0.5).model_copy(update={"kind": ENSEMBLE, "members": ["2026-0", "2026-z"]})
    root = make_record("2026-c", 0.5)
    order = [r.run_id for r in export_order([child, grandchild, ensemble, root])]
    assert order == ["2026-c", "2026-a", "2026-0", "2026-b"]


def test_export_order_breaks_a_cycle_of_hand_edited_records_and_exports_each_once(make_record):
    first = make_record("2026-a", 0.5).model_copy(update={"parent_run_id": "2026-b"})
    second = make_record("2026-b", 0.5).model_copy(update={"parent_run_id": "2026-a"})
    child = make_record("2026-0", 0.5).model_copy(update={"parent_run_id": "2026-a"})
    order = [r.run_id for r in export_order([child, first, second])]
    assert sorted(order) == ["2026-0", "2026-a", "2026-b"] and order.index("2026-a") < order.index("2026-0")


def test_flatten_params_nested_and_unsafe_keys():
    flat = flatten_params({"augmentation": {"flip": "horizontal", "zoom": None}, "base_kwargs": {"a/b": 1},
                           "lr_step_milestones": [3, 6], "weights": None, "class_weight": "balanced"})
    assert flat == {"augmentation.flip": "horizontal", "augmentation.zoom": "null", "base_kwargs.a_b": "1",
                    "lr_step_milestones": "[3, 6]", "weights": "null", "class_weight": "balanced"}


@pytest.mark.slow  # a subprocess importing MLflow, like the other CLI subprocess tests
def test_cli_exports_and_prints_counts(project):
    store = project / "store"
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "export_mlflow.py"),
                           "--logs-dir", "logs", "--tracking-uri", str(store)],
                          cwd=project, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != ALLOW_FILE_STORE_ENV})
    assert proc.returncode == 0, proc.stderr
    assert f"exported 5, already present 0, unreadable 1 -> {store.as_uri()}" in proc.stdout
    assert "unreadable record broken.json" in proc.stderr
    assert f"warning: {FAILED_RUN}: html" in proc.stderr
    assert len(_runs(store)) == 5


def test_cli_default_store_is_mlruns_in_the_current_folder(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main([]) == 0
    assert f"exported 5, already present 0, unreadable 1 -> {(project / 'mlruns').as_uri()}" in capsys.readouterr().out
    assert main(["--experiment-name", "other"]) == 0  # another experiment: exported again there
    assert "exported 5, already present 0" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--logs-dir", "missing"], "--logs-dir"),
    (["--tracking-uri", "logs/broken.json"], "is not a folder"),
    (["--tracking-uri", "logs/broken.json/store"], "cannot use the tracking store"),
    (["--tracking-uri", "nosuchscheme://host/x"], "cannot use the tracking store"),
    (["--experiment-name", " "], "--experiment-name"),
])
def test_cli_bad_input_exits_2(project, monkeypatch, capsys, args, message):
    monkeypatch.chdir(project)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (project / "mlruns").exists()


def test_an_explicit_no_to_the_file_store_is_respected(project):
    os.environ[ALLOW_FILE_STORE_ENV] = "false"
    with pytest.raises(ConfigError, match="maintenance mode"):
        export_records(project / "logs", str(project / "mlruns"))
