"""Reload recorded runs without the notebook: predict, evaluate, and refuse what cannot be rebuilt."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from runner import PROJECT_ROOT
from runner.errors import ConfigError
from runner.core.predict import RunLoadError, evaluate_run, load_run
from helpers import predict_main
from runner.records.query import find_path, parse_metric

pytestmark = pytest.mark.slow


def test_fresh_process_reproduces_the_notebook_predictions(sweep):
    """A new interpreter that never ran the notebook gets the same probabilities on the test split."""
    work, _, records, _ = sweep
    rec = records["mobilenet"]
    script = textwrap.dedent(f"""
        import json, sys
        import pandas as pd
        from runner.core.predict import load_run
        run = load_run({rec.run_id[:17]!r}, logs_dir={str(work / 'logs')!r})
        saved = pd.read_csv({str(work / 'experiments' / rec.run_id / 'predictions.csv')!r})
        fresh = run.predict_paths(saved["path"])
        skipped = fresh.attrs["skipped"]
        cols = [f"prob_{{c}}" for c in run.class_names]
        diff = float((fresh[cols].to_numpy() - saved[cols].to_numpy()).__abs__().max())
        print(json.dumps({{"diff": diff, "n": len(fresh), "skipped": skipped,
                          "same_labels": list(fresh["predicted_label"]) == list(saved["predicted_label"]),
                          "notebook_imported": "papermill" in sys.modules}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == sum(rec.data.counts["test"].values()) and out["skipped"] == {}
    assert out["diff"] <= 1e-5 and out["same_labels"]
    assert not out["notebook_imported"]


def test_rebuilt_model_equals_the_saved_model_keras(sweep):
    from models.build import load_model

    work, _, records, _ = sweep
    rec = records["simple_cnn_small"]
    run = load_run(rec.run_id, logs_dir=work / "logs")
    saved = load_model(work / "experiments" / rec.run_id / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, size=(5, 45, 37, 3)).astype("float32")
    rebuilt = run.predict(images)
    assert rebuilt.shape == (5, 3)
    np.testing.assert_allclose(rebuilt.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(rebuilt - saved.predict(images, verbose=0)).max() <= 1e-6
    assert run.class_names == rec.data.class_names


def test_find_path_by_id_prefix_best_and_path(sweep):
    """`best` is the best completed run on the validation split (schema 2; it was the test split)."""
    work, _, records, _ = sweep
    logs = work / "logs"
    rec = records["simple_cnn_small"]
    assert find_path(rec.run_id, logs) == ((logs / f"{rec.run_id}.json").resolve(), rec)
    assert find_path(rec.run_id[:-3], logs)[1] == rec
    assert find_path(str(logs / f"{rec.run_id}.json"), logs) == ((logs / f"{rec.run_id}.json").resolve(), rec)
    completed = sorted((r for r in records.values() if r.status == "completed"), key=lambda r: r.run_id)
    best = max(completed, key=lambda r: r.val_metrics.weighted_recall)  # max keeps the earlier of a tie
    assert find_path("best", logs)[1] == best
    assert load_run("best", logs_dir=logs).record == best
    best_on_test = max(completed, key=lambda r: r.metrics.weighted_recall)
    assert find_path("best", logs, ranking=parse_metric("test_weighted_recall"))[1] == best_on_test
    with pytest.raises(RunLoadError, match="matches 3 runs"):
        find_path(rec.run_id[:4], logs)
    with pytest.raises(RunLoadError, match="no record for 'zzz'"):
        find_path("zzz", logs)
    with pytest.raises(RunLoadError, match="expected a run id"):
        find_path("../logs/x", logs)


def test_failed_run_and_altered_weights_are_refused(sweep, tmp_path):
    work, _, records, _ = sweep
    with pytest.raises(RunLoadError, match="status is 'failed'"):
        load_run(records["simple_cnn_medium"].run_id, logs_dir=work / "logs")
    rec = records["simple_cnn_small"]
    (tmp_path / "logs").mkdir()
    shutil.copytree(work / "experiments" / rec.run_id, tmp_path / "experiments" / rec.run_id)
    payload = rec.model_dump(mode="json")
    payload["model"]["model_file_sha256"] = "0" * 64
    (tmp_path / "logs" / f"{rec.run_id}.json").write_text(json.dumps(payload))
    with pytest.raises(RunLoadError, match="checksum mismatch"):
        load_run(rec.run_id, logs_dir=tmp_path / "logs")
    (tmp_path / "experiments" / rec.run_id / "model.keras").unlink()
    with pytest.raises(RunLoadError, match="weights file missing"):
        load_run(rec.run_id, logs_dir=tmp_path / "logs")
    payload["model"].pop("model_file_sha256")
    payload["params"]["base"] = "vgg61"
    shutil.copy(work / "experiments" / rec.run_id / "model.keras", tmp_path / "experiments" / rec.run_id)
    (tmp_path / "logs" / f"{rec.run_id}.json").write_text(json.dumps(payload))
    with pytest.raises(RunLoadError, match="cannot rebuild the model from its record: .*vgg61"):
        load_run(rec.run_id, logs_dir=tmp_path / "logs")


def test_cli_predicts_folders_and_skips_unreadable_files(sweep, tiny_image_dir, tmp_path, capsys):
    work, _, records, _ = sweep
    folder = tmp_path / "new"
    shutil.copytree(tiny_image_dir / "red", folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "predictions.csv"
    rc = predict_main([records["simple_cnn_small"].run_id, str(folder), str(tmp_path / "missing.png"),
                       str(folder / "notes.txt"), "--out", str(out), "--logs-dir", str(work / "logs")])
    assert rc == 0
    captured = capsys.readouterr()
    for name in ("broken.jpg", "missing.png", "notes.txt"):  # corrupt, missing, not an image
        assert f"{name}:" in captured.err
    table = pd.read_csv(out)
    assert len(table) == 12 and set(table["predicted_label"]) <= {"red", "green", "blue"}
    assert list(table.columns[:3]) == ["path", "predicted_label", "confidence"]
    np.testing.assert_allclose(table[["prob_blue", "prob_green", "prob_red"]].sum(axis=1), 1.0, atol=1e-4)


def test_evaluate_on_a_labelled_folder(sweep, tiny_image_dir, tmp_path, capsys):
    work, _, records, _ = sweep
    rec = records["simple_cnn_small"]
    run = load_run(rec.run_id, logs_dir=work / "logs")
    evaluation = evaluate_run(run, tiny_image_dir, name="tiny")
    assert evaluation["n_images"] == 36
    matrix = np.array(evaluation["metrics"]["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 36 and list(matrix.sum(axis=1)) == [12, 12, 12]
    assert {c: v["support"] for c, v in evaluation["metrics"]["per_class"].items()} == {
        "blue": 12, "green": 12, "red": 12}
    assert "weighted avg" in evaluation["report"]
    # the figures, recomputed with scikit-learn from the run's own predictions, folder by folder
    truth, predicted = [], []
    for name in run.class_names:
        table = run.predict_paths([tiny_image_dir / name])
        truth += [name] * len(table)
        predicted += list(table["predicted_label"])
    assert evaluation["metrics"]["weighted_recall"] == pytest.approx(
        recall_score(truth, predicted, average="weighted"))
    assert evaluation["metrics"]["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert evaluation["metrics"]["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, average="macro", labels=run.class_names, zero_division=0))
    assert matrix.tolist() == confusion_matrix(truth, predicted, labels=run.class_names).tolist()
    written = work / "experiments" / rec.run_id / "evaluations"
    assert json.loads((written / "tiny.json").read_text())["metrics"] == evaluation["metrics"]
    assert (written / "tiny_confusion_matrix.png").is_file()
    assert predict_main([rec.run_id, "--evaluate", str(tiny_image_dir), "--name", "cli",
                         "--logs-dir", str(work / "logs")]) == 0
    assert "weighted recall" in capsys.readouterr().out and (written / "cli.json").is_file()
    odd = tmp_path / "odd"
    (odd / "purple").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"class folders \['purple'\] are not classes"):
        evaluate_run(run, odd)
    with pytest.raises(ConfigError, match="--name"):
        evaluate_run(run, tiny_image_dir, name="../escape")


def test_predict_paths_in_chunks_gives_what_one_batch_gives(sweep, monkeypatch, tmp_path):
    """Files are decoded and predicted `PREDICT_CHUNK` at a time; chunks of 2, with an unreadable file
    between them, give the probabilities of predicting every image at once."""
    from models.data import load_images
    from runner.core import predict as predict_module

    work, _, records, _ = sweep
    run = load_run(records["mobilenet"].run_id, logs_dir=work / "logs")
    paths = list(pd.read_csv(work / "experiments" / records["mobilenet"].run_id / "predictions.csv")["path"])[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    monkeypatch.setattr(predict_module, "PREDICT_CHUNK", 2)
    table = run.predict_paths([*paths[:3], broken, *paths[3:]])
    assert list(table["path"]) == [str(p) for p in paths] and list(table.attrs["skipped"]) == [str(broken)]
    expected = run.predict(load_images(paths, run.spec.image_size))
    np.testing.assert_allclose(table[[f"prob_{c}" for c in run.class_names]].to_numpy(), expected, atol=1e-6)
