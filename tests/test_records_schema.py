"""`runner.records.schema`: the run record (`RunRecord`: statuses, kinds, the canonical base, its paths),
`build_record` from a notebook's result or an ensemble's figures, and the upgrade of schema-1 records
(`upgrade_v1`). Reading and writing record files: `test_records_store.py`."""

import hashlib
import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from models import names
from models.contract import DataSection, SplitMetrics, WarmStartSection
from runner.errors import RunnerError
from runner.records import (
    COMPLETED, FAILED, SCHEMA_VERSION, RunRecord, build_record, read_record, read_result, write_record, write_result,
)
from runner.records.schema import (DONE_STATUSES, ENSEMBLE, KINDS, PRUNED, REQUIRED_FILES, RUN, RUN_FILES, SKIPPED,
                                   STATUSES, WEIGHTS_KEYS, CodeHashes, RunError, RunLoadError, Timings, upgrade_v1)

from helpers import METRICS, result_sections

REQUIRED = dict(run_id="r", config_hash="c", status=FAILED, started_at="t", finished_at="t")
"""The fields a record cannot do without."""

STARTED = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_build_record_stores_each_fact_once(tmp_path):
    run_dir, logs = tmp_path / "experiments" / "r1", tmp_path / "logs"
    run_dir.mkdir(parents=True)
    (run_dir / "model.keras").write_bytes(b"weights")
    write_result(run_dir, **result_sections())
    files = {"model": run_dir / "model.keras", "result": run_dir / "result.json", "html": run_dir / "r1.html"}
    record = build_record(run_id="r1", config_hash="c" * 64, status=COMPLETED,
                          started_at=datetime(2026, 1, 1, tzinfo=timezone.utc), params={"warm_start": "best"},
                          result=read_result(run_dir), files=files, logs_dir=logs, total_s=9.87654,
                          environment={})
    assert record.schema_version == SCHEMA_VERSION == 2
    assert record.epochs_run == 4 and record.best_phase == "head" and record.best_epoch == 2
    assert record.metrics.weighted_recall == 0.9 and record.val_metrics.weighted_recall == 0.7
    assert record.timings.cache_build_s == 1.25 and record.timings.total_s == 9.877
    assert record.activation_cache["evaluation"] == {"from_cache": True}
    assert record.paths == {"model": "../experiments/r1/model.keras", "result": "../experiments/r1/result.json",
                            "html": None}  # the html does not exist: recorded as missing
    import hashlib
    assert record.model.model_file_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert record.params == {"warm_start": "best"}  # the user's reference, not the resolved run
    path = write_record(record, logs)
    assert read_record(path) == record


def test_status_and_kind_are_checked():
    base = dict(run_id="r", config_hash="c", started_at="t", finished_at="t", params={})
    with pytest.raises(ValidationError, match="status"):
        RunRecord(status="done", **base)
    with pytest.raises(ValidationError, match="kind"):
        RunRecord(status=FAILED, kind="tree", **base)


# Tables -----------------------------------------------------------------------------------------------


def test_statuses_kinds_and_run_files():
    assert SCHEMA_VERSION == 2
    assert STATUSES == ("completed", "failed", "interrupted", "timeout", "pruned")
    assert DONE_STATUSES == (COMPLETED, PRUNED) == ("completed", "pruned")
    assert SKIPPED == "skipped" and SKIPPED not in STATUSES  # never recorded
    assert KINDS == (RUN, ENSEMBLE) == ("run", "ensemble")
    assert set(REQUIRED_FILES) == {"notebook", "html", "result"} and set(REQUIRED_FILES) <= set(RUN_FILES)
    assert {key: name.format(run_id="r1") for key, name in RUN_FILES.items() if "{" in name} == {
        "notebook": "r1.ipynb", "html": "r1.html"}
    # the kept weights are looked for in the run folder's order (models.names)
    assert tuple(RUN_FILES[key] for key in WEIGHTS_KEYS) == names.RUN_WEIGHTS_FILES == (
        "trained_weights.h5", "model.keras")
    assert issubclass(RunLoadError, RunnerError)


def test_record_defaults_and_sections():
    record = RunRecord(params={}, **REQUIRED)
    assert (record.schema_version, record.kind, record.name, record.model, record.metrics) == (
        SCHEMA_VERSION, RUN, None, None, None)
    assert (record.history, record.paths, record.warnings, record.members) == ({}, {}, [], [])
    assert record.timings == Timings() and Timings().model_dump() == {
        "train_s": None, "eval_s": None, "cache_build_s": None, "total_s": None}
    assert RunError(ename="E", evalue="v").model_dump() == {"ename": "E", "evalue": "v", "traceback": "",
                                                          "cell_index": None}
    assert CodeHashes(notebook="/nb.ipynb", notebook_sha256="a" * 64).files == {}
    with pytest.raises(ValidationError, match="metricz"):
        RunRecord(params={}, metricz={}, **REQUIRED)  # an unknown field is refused, not dropped
    with pytest.raises(ValidationError, match="run_id"):
        RunRecord(params={}, **{k: v for k, v in REQUIRED.items() if k != "run_id"})


# The canonical base -----------------------------------------------------------------------------------


@pytest.mark.parametrize("given, canonical", [
    ("VGG16", "vgg16"),
    ("vgg16", "vgg16"),
    ("MobileNet-V2", "mobilenet_v2"),
    ("mobilenetv2", "mobilenet_v2"),
    ("ResNet50V2", "resnet50_v2"),
    ("SIMPLE-CNN-SMALL", "simple_cnn_small"),
    ("EfficientNetB3", "efficientnetb3"),  # a keras.applications model outside the registry
])
def test_record_base_reads_in_its_one_spelling(given, canonical):
    params = {"base": given, "dropout": 0.2, "dense_units": [16]}
    record = RunRecord(params=params, **REQUIRED)
    assert record.params == {"base": canonical, "dropout": 0.2, "dense_units": [16]}
    assert params["base"] == given  # the caller's mapping is left as it was
    # a record file written by a version that kept the spelling given reads the same
    stored = RunRecord.model_validate_json(json.dumps({**REQUIRED, "params": params}))
    assert stored.params["base"] == canonical and stored == record


@pytest.mark.parametrize("params", [{}, {"base": None}, {"base": 3}, {"head": "VGG16"}])
def test_record_without_a_string_base_keeps_its_params(params):
    assert RunRecord(params=params, **REQUIRED).params == params


def test_records_of_two_spellings_are_equal():
    assert RunRecord(params={"base": "InceptionResNetV2"}, **REQUIRED) == RunRecord(
        params={"base": "inception_resnet_v2"}, **REQUIRED)


# Paths ------------------------------------------------------------------------------------------------


def test_path_of_resolves_recorded_paths_against_the_logs_folder(tmp_path):
    record = RunRecord(params={}, paths={"html": "../experiments/r/r.html", "model": None, "predictions": ""},
                       **REQUIRED)
    logs = tmp_path / "logs"
    assert record.path_of("html", logs) == tmp_path / "experiments" / "r" / "r.html"
    assert record.path_of("html", str(logs)).is_absolute()
    for key in ("model", "predictions", "kernel_log"):  # missing, empty, never recorded
        assert record.path_of(key, logs) is None


@pytest.mark.parametrize("paths, expected", [
    ({"trained_weights": "../e/r/trained_weights.h5", "model": "../e/r/model.keras"}, "trained_weights.h5"),
    ({"trained_weights": None, "model": "../e/r/model.keras"}, "model.keras"),
    ({"model": "../e/r/model.keras"}, "model.keras"),  # recorded before trained_weights existed
    ({"html": "../e/r/r.html"}, None),
])
def test_weights_path_prefers_trained_weights_then_the_model(tmp_path, paths, expected):
    found = RunRecord(params={}, paths=paths, **REQUIRED).weights_path(tmp_path / "logs")
    assert found == (None if expected is None else tmp_path / "e" / "r" / expected)


# build_record -----------------------------------------------------------------------------------------


def test_build_record_of_a_failed_run_without_a_result(tmp_path):
    run_dir, logs = tmp_path / "experiments" / "r2", tmp_path / "logs"
    run_dir.mkdir(parents=True)
    (run_dir / "r2.ipynb").write_text("{}")
    error = RunError(ename="ValueError", evalue="bad", traceback="...", cell_index=4)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    record = build_record(run_id="r2", config_hash="d" * 64, status=FAILED, started_at=STARTED,
                          params={"base": "VGG16", "head": "gap"}, result=None,
                          files={"notebook": run_dir / "r2.ipynb", "html": run_dir / "r2.html", "model": None},
                          logs_dir=logs, total_s=1.23456, error=error, warnings=["html export failed"])
    assert (record.status, record.kind, record.error, record.warnings) == (FAILED, RUN, error, ["html export failed"])
    assert record.params == {"base": "vgg16", "head": "gap"}
    assert (record.model, record.data, record.metrics, record.val_metrics) == (None, None, None, None)
    assert (record.history, record.best_epoch, record.epochs_run, record.activation_cache) == ({}, None, None, {})
    assert record.timings == Timings(total_s=1.235)
    assert record.paths == {"notebook": "../experiments/r2/r2.ipynb", "html": None, "model": None}
    assert record.started_at == "2026-01-01T00:00:00+00:00"
    assert datetime.fromisoformat(record.finished_at) >= before  # now, in UTC
    assert datetime.fromisoformat(record.finished_at).utcoffset().total_seconds() == 0
    # the environment defaults to where this process runs
    assert {"python", "platform", "hostname", "git_commit", "packages", "cpu_count",
            "thread_limits"} <= set(record.environment)


def test_build_record_hashes_the_kept_weights_trained_weights_first(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_result(run_dir, **result_sections())
    (run_dir / "model.keras").write_bytes(b"full model")
    (run_dir / "trained_weights.h5").write_bytes(b"trained part")

    def sha(files):
        return build_record(run_id="r", config_hash="c", status=COMPLETED, started_at=STARTED, params={},
                            result=read_result(run_dir), files=files, logs_dir=tmp_path, total_s=0.0,
                            environment={}).model.model_file_sha256

    both = {"model": run_dir / "model.keras", "trained_weights": run_dir / "trained_weights.h5"}
    assert sha(both) == hashlib.sha256(b"trained part").hexdigest()
    assert sha({"model": run_dir / "model.keras"}) == hashlib.sha256(b"full model").hexdigest()
    assert sha({**both, "trained_weights": run_dir / "gone.h5"}) == hashlib.sha256(b"full model").hexdigest()
    assert sha({"model": None}) is None


def test_build_record_adds_the_kernels_runtime_and_cache_bypass(tmp_path):
    runtime = {"deterministic": True, "op_determinism": False, "device": "CPU: x86_64",
               "devices": [{"name": "/physical_device:CPU:0", "type": "CPU", "model": None}]}
    evaluation = {**result_sections()["evaluation"], "from_cache": False, "cache_bypass_reason": "tta"}
    write_result(tmp_path, **result_sections(runtime=runtime, evaluation=evaluation))
    record = build_record(run_id="r", config_hash="c", status=COMPLETED, started_at=STARTED, params={},
                          result=read_result(tmp_path), files={}, logs_dir=tmp_path, total_s=0.0,
                          environment={"hostname": "h"})
    assert record.environment == {"hostname": "h", **runtime}
    assert record.activation_cache == {"head": {"status": "built", "build_s": 1.25, "key": "k"},
                                       "fine_tune": {"status": "hit", "build_s": 0.0},
                                       "evaluation": {"from_cache": False, "reason": "tta"}}
    assert record.data.manifest_hash == "0" * 64 and record.model.base == "simple_cnn_small"
    assert record.timings == Timings(train_s=3.5, eval_s=0.5, cache_build_s=1.25, total_s=0.0)


def test_build_record_stores_the_warm_start_relative_to_the_logs_folder(tmp_path):
    logs = tmp_path / "logs"
    warm = WarmStartSection(parent_run_id="p1", checkpoint=3,
                            weights_path=str(tmp_path / "experiments" / "p1" / "trained_weights.h5"),
                            weights_sha256="e" * 64)
    code = {"notebook": "/nb.ipynb", "notebook_sha256": "a" * 64, "files": {"models/heads.py": "b" * 64}}
    record = build_record(run_id="r", config_hash="c", status=FAILED, started_at=STARTED, params={}, result=None,
                          files={}, logs_dir=logs, total_s=0.0, environment={}, warm_start=warm, code=code,
                          rerun_of="old", group_hash="g" * 64, refit_of="best", name="mine")
    assert record.warm_start == warm.model_copy(update={"weights_path": "../experiments/p1/trained_weights.h5"})
    assert warm.weights_path.startswith(str(tmp_path))  # the caller's section is not changed
    assert record.parent_run_id == "p1"
    assert record.code == CodeHashes(**code)
    assert (record.rerun_of, record.group_hash, record.refit_of, record.name) == ("old", "g" * 64, "best", "mine")


def test_build_record_of_an_ensemble_takes_its_own_figures(tmp_path):
    metrics, val = SplitMetrics(**METRICS), SplitMetrics(**{**METRICS, "accuracy": 0.5})
    data = DataSection(dir="/d", class_names=["a", "b"], manifest_hash="1" * 64)
    record = build_record(run_id="e1", config_hash="c", status=COMPLETED, started_at=STARTED, params={"members": 2},
                          result=None, files={}, logs_dir=tmp_path, total_s=0.0, kind=ENSEMBLE,
                          members=("r1", "r2"), environment={}, metrics=metrics, val_metrics=val, data=data)
    assert (record.kind, record.members) == (ENSEMBLE, ["r1", "r2"])
    assert (record.metrics, record.val_metrics, record.data) == (metrics, val, data)
    assert record.model is None and record.code is None


# upgrade_v1 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("best_epoch, phase", [(1, "head"), (3, "head"), (4, "fine_tune"), (5, "fine_tune")])
def test_upgrade_v1_derives_epochs_run_and_best_phase_from_the_history(best_epoch, phase):
    payload = {"history": {"head": {"loss": [1, 1, 1], "val_loss": [1.0, 0.9, 0.8]},
                           "fine_tune": {"val_loss": [0.7, 0.6]}}, "best_epoch": best_epoch}
    upgraded = upgrade_v1(payload)
    assert (upgraded["epochs_run"], upgraded["best_phase"]) == (5, phase)
    assert "epochs_run" not in payload  # a copy


def test_upgrade_v1_counts_loss_where_a_phase_has_no_val_loss():
    assert upgrade_v1({"history": {"head": {"loss": [1.0, 0.5]}}})["epochs_run"] == 2
    assert "best_phase" not in upgrade_v1({"history": {"head": {"loss": [1.0]}}, "best_epoch": None})
    assert "epochs_run" not in upgrade_v1({"history": {}})


def test_upgrade_v1_empty_sections_become_none_and_errors_get_defaults():
    payload = {**REQUIRED, "schema_version": 1, "params": {"base": "VGG16"}, "warm_start": {}, "model": {},
               "data": {}, "metrics": {}, "error": {"ename": "KeyError", "evalue": "'x'"}}
    upgraded = upgrade_v1(payload)
    assert (upgraded["warm_start"], upgraded["model"], upgraded["data"], upgraded["metrics"]) == (
        None, None, None, None)
    assert upgraded["error"] == {"ename": "KeyError", "evalue": "'x'", "traceback": "", "cell_index": None}
    record = RunRecord.model_validate(upgraded)
    assert record.schema_version == 1 and record.error == RunError(ename="KeyError", evalue="'x'")
    assert record.params == {"base": "vgg16"} and record.val_metrics is None
    assert upgrade_v1({"error": None})["error"] is None
