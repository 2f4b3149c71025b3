"""predict.py faults: a bad --out path, a labelled folder without one readable image."""

import os
import re

import pandas as pd
import pytest

import models.contract
from runner.errors import ConfigError
from runner.core.predict import check_out_path, evaluate_run, load_run, write_predictions_csv
from helpers import predict_main

FRAME = pd.DataFrame({"path": ["a.png", "b.png"], "predicted_label": ["red", "blue"], "confidence": [0.9, 0.8]})


@pytest.mark.parametrize("make_out, message", [
    (lambda tmp: tmp / "nonexistent" / "dir" / "p.csv", "--out {out}: folder {out.parent} does not exist"),
    (lambda tmp: tmp, "--out {out}: is a directory"),
    (lambda tmp: tmp / "file.txt" / "p.csv", "--out {out}: {out.parent} is not a folder"),
], ids=["folder-missing", "a-directory", "folder-is-a-file"])
def test_bad_out_path_is_refused_and_nothing_is_written(tmp_path, make_out, message):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    before = sorted(tmp_path.rglob("*"))
    out = make_out(tmp_path)
    expected = message.format(out=out)
    with pytest.raises(ConfigError) as caught:
        check_out_path(out)
    assert str(caught.value).startswith(expected)
    with pytest.raises(ConfigError, match="^" + re.escape(expected)):
        write_predictions_csv(FRAME, out)
    assert sorted(tmp_path.rglob("*")) == before  # no folder created, no file, no temporary file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its permissions")
def test_out_in_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="folder .*ro is not writable"):
            check_out_path(tmp_path / "ro" / "p.csv")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_predictions_csv_is_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "p.csv"
    assert write_predictions_csv(FRAME, out) == out
    assert pd.read_csv(out).equals(FRAME)
    out.write_text("the previous predictions\n")

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models.contract.os, "replace", replace_fails)
    with pytest.raises(ConfigError, match=r"--out .*p\.csv: cannot write it \(No space left on device\)"):
        write_predictions_csv(FRAME, out)
    assert out.read_text() == "the previous predictions\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]  # no temporary file left


@pytest.mark.parametrize("make_out, message", [
    (lambda tmp: "/nonexistent/dir/p.csv", "--out /nonexistent/dir/p.csv: folder /nonexistent/dir does not exist"),
    (lambda tmp: str(tmp), "--out {tmp}: is a directory"),
], ids=["folder-missing", "a-directory"])
def test_cli_refuses_a_bad_out_before_loading_the_run(tmp_path, capsys, make_out, message):
    """The run named does not exist: the --out error comes first, so it is checked before any loading."""
    (tmp_path / "logs").mkdir()
    image = tmp_path / "img.png"
    FRAME.to_csv(image)  # never read
    rc = predict_main(["nope", str(image), "--out", make_out(tmp_path), "--logs-dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err and "no record" not in err


@pytest.mark.slow
def test_evaluate_on_a_folder_of_unreadable_images_lists_the_skipped_files(sweep, tmp_path, capsys):
    """Every image unreadable: the error names the folder and the skipped files, not sklearn's empty input."""
    work, _, records, _ = sweep
    run_id = records["simple_cnn_small"].run_id
    run = load_run(run_id, logs_dir=work / "logs")
    bad = tmp_path / "bad"
    (bad / "red").mkdir(parents=True)
    (bad / "green").mkdir()
    for i in range(12):
        (bad / "red" / f"broken_{i:02d}.jpg").write_bytes(b"not an image")
    (bad / "green" / "empty.png").write_bytes(b"")
    (bad / ".ipynb_checkpoints").mkdir()  # reported among the skipped too
    with pytest.raises(ConfigError) as caught:
        evaluate_run(run, bad, name="bad")
    message = str(caught.value)
    assert message.startswith(f"--evaluate: {bad}: no readable image in its class folders green, red; "
                              f"skipped 14 file(s): ")
    assert message.endswith("; and 4 more")
    assert f"{bad / 'green' / 'empty.png'}: " in message and f"{bad / 'red' / 'broken_00.jpg'}: " in message
    assert "Found array with 0 sample" not in message and "empty input" not in message
    assert not (run.run_dir / "evaluations" / "bad.json").exists()
    assert not (run.run_dir / "evaluations" / "bad_confusion_matrix.png").exists()
    # through the command line: the same message, exit code 2, no traceback
    assert predict_main([run_id, "--evaluate", str(bad), "--logs-dir", str(work / "logs")]) == 2
    err = capsys.readouterr().err
    assert f"error: --evaluate: {bad}: no readable image" in err and "Traceback" not in err


@pytest.mark.slow
def test_evaluate_on_a_folder_without_image_files(sweep, tmp_path):
    work, _, records, _ = sweep
    run = load_run(records["simple_cnn_small"].run_id, logs_dir=work / "logs")
    (tmp_path / "empty" / "red").mkdir(parents=True)
    (tmp_path / "empty" / "red" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"--evaluate: .*empty: no image files in its class folders red "
                                          r"\(expected \.jpg, "):
        evaluate_run(run, tmp_path / "empty", name="empty")
