"""Reload a recorded run in a fresh session; predict on new images or evaluate on a labelled folder.

    python runner/predict.py RUN IMAGE_OR_DIR [...] [--out predictions.csv]
    python runner/predict.py RUN --evaluate LABELLED_DIR [--name NAME]

RUN is a run id, a unique prefix of one, `best` (the top completed run by
`--metric`), or the path of a record. The model is rebuilt from the record's
`params` with the same `models.build_model` the notebook used, then the run's
trained weights are loaded from its `model.keras` (whose sha256 must match the
record): no notebook, no retraining. The model resizes and preprocesses raw
images itself, so photos of any size go in.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from models.spec import ExperimentSpec
from runner.errors import ConfigError, RunnerError
from runner.records import COMPLETED, ENSEMBLE, RunLoadError, RunRecord, find_record, read_record, sha256_file, write_json_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class _Recorded:
    """What every loaded run has: its record, where it was read, its classes and folder."""

    record: RunRecord
    record_path: Path

    @property
    def class_names(self) -> list[str]:
        """Class names in the order of the model's outputs."""
        return list(self.record.data["class_names"])

    @property
    def run_dir(self) -> Path:
        """The run's folder (`experiments/<run_id>/`)."""
        return (self.record_path.parent / self.record.paths["predictions"]).resolve().parent


@dataclass
class LoadedRun(_Recorded):
    """A trained run, rebuilt from its record.

    Attributes:
        record: the run record.
        record_path: where the record was read from.
        model: the rebuilt Keras model with the run's trained weights; maps
            float32 `(batch, height, width, 3)` RGB in [0, 255] to
            probabilities `(batch, n_classes)`.
        spec: the run's parameters.
    """

    record: RunRecord
    record_path: Path
    model: Any
    spec: ExperimentSpec

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities for a batch of raw images.

        Args:
            images: `(n, height, width, 3)` RGB, uint8 or float in [0, 255],
                any height and width (the model resizes).
            batch_size: images per forward pass. Defaults to `32`.

        Returns:
            float32 `(n, n_classes)`, rows summing to 1.
        """
        return self.model.predict(np.asarray(images, dtype="float32"), batch_size=batch_size, verbose=0)

    def predict_paths(self, paths: Iterable[str | Path]) -> pd.DataFrame:
        """Predict image files; directories are walked for image files.

        Files are decoded and resized exactly as in training (`models.data.load_images`).
        A file that cannot be read is skipped, never fatal.

        Args:
            paths: image files and/or folders.

        Returns:
            One row per readable image: `path`, `predicted_label`, `confidence`
            (top probability), `prob_<class>` per class (floats in [0, 1]).
            `frame.attrs["skipped"]` maps every path that could not be read
            (missing, not an image, corrupt) to the reason.
        """
        from models.data import load_images
        from models.evaluate import predictions_frame

        files, skipped = expand_image_paths(paths)
        images, kept = [], []
        for path in files:
            try:
                images.append(load_images([path], self.spec.image_size)[0])
                kept.append(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
                skipped[str(path)] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        probabilities = (self.predict(np.stack(images)) if images
                         else np.zeros((0, len(self.class_names)), dtype="float32"))
        return _with_skipped(predictions_frame(kept, probabilities, self.class_names), skipped)


@dataclass
class LoadedEnsemble(_Recorded):
    """An ensemble record with its loaded members; predicts the mean of their probabilities.

    Attributes:
        record: the ensemble's record (`kind: ensemble`).
        record_path: where the record was read from.
        members: the loaded member runs.
    """

    record: RunRecord
    record_path: Path
    members: list[LoadedRun]

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Mean of the members' `LoadedRun.predict` probabilities, float32 `(n, n_classes)`."""
        return np.mean([m.predict(images, batch_size) for m in self.members], axis=0)

    def predict_paths(self, paths: Iterable[str | Path]) -> pd.DataFrame:
        """As `LoadedRun.predict_paths`, with the members' probabilities averaged."""
        from models.evaluate import predictions_frame

        paths = list(paths)
        frames = [m.predict_paths(paths) for m in self.members]
        columns = [f"prob_{c}" for c in self.class_names]
        mean = np.mean([frame[columns].to_numpy() for frame in frames], axis=0)
        return _with_skipped(predictions_frame(frames[0]["path"], mean, self.class_names),
                             frames[0].attrs["skipped"])


def _with_skipped(frame: pd.DataFrame, skipped: dict[str, str]) -> pd.DataFrame:
    frame.attrs["skipped"] = skipped
    return frame


def expand_image_paths(paths: Iterable[str | Path]) -> tuple[list[Path], dict[str, str]]:
    """Files as given, folders walked (sorted) for files with an image suffix.

    Returns:
        `(files, missing)`: the files, and paths that do not exist mapped to a reason.
    """
    files, missing = [], {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            missing[str(path)] = "no such file or folder"
    return files, missing


def load_run(run: str | Path, logs_dir: str | Path = "logs",
             metric: str = "weighted_recall") -> LoadedRun | LoadedEnsemble:
    """Rebuild a recorded run's model from its spec and load its trained weights.

    Works in a new Python process: it needs the record and the run's
    `model.keras`, not the notebook.

    Args:
        run: a run id, a unique run-id prefix, `"best"`, or a record path.
        logs_dir: folder of the records. Defaults to `"logs"`.
        metric: what `"best"` ranks by. Defaults to `"weighted_recall"`.

    Returns:
        The `LoadedRun`, or a `LoadedEnsemble` for an ensemble record (its
        members loaded the same way).

    Raises:
        RunLoadError: the run is unknown or ambiguous, did not complete, its
            spec cannot be rebuilt (e.g. unknown base), its `model.keras` is
            missing, or the file's sha256 differs from the record's.
    """
    record_path = find_record(str(run), logs_dir, metric)
    record = read_record(record_path)
    if record.status != COMPLETED:
        raise RunLoadError(f"run {record.run_id}: status is {record.status!r}, only completed runs can be loaded")
    if record.kind == ENSEMBLE:
        members = [load_run(member, record_path.parent) for member in record.members]
        return LoadedEnsemble(record=record, record_path=record_path, members=members)
    model_rel = record.paths.get("model")
    model_path = (record_path.parent / model_rel).resolve() if model_rel else None
    if model_path is None or not model_path.is_file():
        raise RunLoadError(f"run {record.run_id}: weights file missing: {model_path or 'no model in record'}")
    expected = record.model.get("model_file_sha256")
    actual = sha256_file(model_path)
    if expected and actual != expected:
        raise RunLoadError(f"run {record.run_id}: checksum mismatch for {model_path}: "
                           f"sha256 {actual[:12]}..., record says {expected[:12]}...")
    import models

    fields = ExperimentSpec.model_fields
    try:
        spec = ExperimentSpec(**{k: v for k, v in record.params.items() if k in fields})
        # Same architecture, random initial weights: the trained ones are loaded next.
        model = models.build_model(spec.model_copy(update={"weights": None}), len(record.data["class_names"]))
        model.load_weights(model_path)
    except (ValueError, KeyError, OSError) as exc:
        raise RunLoadError(f"run {record.run_id}: cannot rebuild the model from its record: {exc}") from exc
    return LoadedRun(record=record, record_path=record_path, model=model, spec=spec)


def evaluate_run(loaded: LoadedRun, labelled_dir: str | Path, name: Optional[str] = None) -> dict[str, Any]:
    """Evaluate a loaded run on an ImageFolder-style folder (one sub-folder per class).

    Writes `<run folder>/evaluations/<name>.json` (metrics, counts, skipped
    files) and `<name>_confusion_matrix.png` beside it.

    Args:
        loaded: from `load_run`.
        labelled_dir: folder whose sub-folder names are class names of the run.
        name: evaluation name (letters, digits, `.`, `_`, `-`). Defaults to
            the folder's name.

    Returns:
        The evaluation record (also written as JSON).

    Raises:
        ConfigError: the folder is missing, has no class sub-folders, has a
            sub-folder that is not one of the run's classes, or `name` has
            other characters.
    """
    from sklearn.metrics import classification_report

    from models.evaluate import classification_metrics, save_confusion_matrix

    labelled_dir = Path(labelled_dir)
    name = name or labelled_dir.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise ConfigError(f"--name: got {name!r}, expected letters, digits, '.', '_' or '-' (no leading '.')")
    if not labelled_dir.is_dir():
        raise ConfigError(f"--evaluate: {labelled_dir} is not a folder")
    folders = sorted(p for p in labelled_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in loaded.class_names]
    if not folders or unknown:
        raise ConfigError(f"--evaluate: {labelled_dir}: class folders {unknown or '(none)'} are not classes "
                          f"of run {loaded.record.run_id}; expected some of {', '.join(loaded.class_names)}")
    frames, skipped = [], {}
    for folder in folders:
        frame = loaded.predict_paths([folder])
        skipped.update(frame.attrs["skipped"])
        frames.append(frame.assign(true_label=folder.name))
    predictions = pd.concat(frames, ignore_index=True)
    labels = predictions["true_label"].map(loaded.class_names.index).to_numpy()
    probabilities = predictions[[f"prob_{c}" for c in loaded.class_names]].to_numpy()
    metrics = classification_metrics(labels, probabilities, loaded.class_names)
    report = classification_report(labels, probabilities.argmax(axis=1), labels=range(len(loaded.class_names)),
                                   target_names=loaded.class_names, zero_division=0, digits=4)
    out_dir = loaded.run_dir / "evaluations"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_confusion_matrix(metrics["confusion_matrix"], loaded.class_names, out_dir / f"{name}_confusion_matrix.png")
    evaluation = {"run_id": loaded.record.run_id, "name": name, "data_dir": str(labelled_dir.resolve()),
                  "n_images": len(predictions), "metrics": metrics, "report": report, "skipped": skipped}
    write_json_atomic(out_dir / f"{name}.json", evaluation)
    return evaluation


def main(argv: Optional[list[str]] = None) -> int:
    """Command line; returns 0 on success, 2 for bad input or a run that cannot be loaded."""
    parser = argparse.ArgumentParser(prog="python runner/predict.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run id, unique run-id prefix, 'best', or a record path")
    parser.add_argument("paths", nargs="*", help="image files and/or folders (walked for images)")
    parser.add_argument("--out", type=Path, help="also write the predictions to this CSV file")
    parser.add_argument("--evaluate", metavar="LABELLED_DIR", type=Path,
                        help="evaluate on an ImageFolder-style folder (one sub-folder per class)")
    parser.add_argument("--name", help="evaluation name (default: the folder's name)")
    parser.add_argument("--logs-dir", default="logs", help="folder of run records (default: logs)")
    parser.add_argument("--metric", default="weighted_recall", help="what 'best' ranks by (default: weighted_recall)")
    args = parser.parse_args(argv)
    if not args.paths and args.evaluate is None:
        parser.error("give image paths to predict, or --evaluate LABELLED_DIR")
    try:
        loaded = load_run(args.run, args.logs_dir, args.metric)
        if args.evaluate is not None:
            evaluation = evaluate_run(loaded, args.evaluate, args.name)
            m = evaluation["metrics"]
            print(f"run {loaded.record.run_id} on {args.evaluate} ({evaluation['n_images']} images)")
            print(evaluation["report"])
            print(f"accuracy {m['accuracy']:.4f}  weighted recall {m['weighted_recall']:.4f}  "
                  f"macro F1 {m['macro_f1']:.4f}")
            print(f"wrote {loaded.run_dir / 'evaluations' / (evaluation['name'] + '.json')}")
            skipped = evaluation["skipped"]
        if args.paths:
            predictions = loaded.predict_paths(args.paths)
            skipped = predictions.attrs["skipped"]
            with pd.option_context("display.width", 200, "display.max_columns", None):
                print(predictions.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            if args.out:
                predictions.to_csv(args.out, index=False)
                print(f"wrote {args.out} ({len(predictions)} images)")
    except (RunnerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, reason in skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
