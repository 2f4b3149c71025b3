"""Reload a recorded run in a fresh session; predict on new images or evaluate on a labelled folder.

    python runner/predict.py RUN IMAGE_OR_DIR [...] [--out predictions.csv] [--tta flip,...|none]
    python runner/predict.py RUN --evaluate LABELLED_DIR [--name NAME] [--tta flip,...|none]

RUN is a run id, a unique prefix of one, `best` (the top completed run by
`--metric`), or the path of a record. The model is rebuilt from the record's
`params` with the same `models.build_model` the notebook used, then the run's
trained weights are loaded from its weights file (`models.build.load_run_model`:
`trained_weights.h5`, with the base rebuilt from the weights file it records and
checked, or `model.keras`; its sha256 must match the record): no notebook, no
retraining. The model resizes and preprocesses raw
images itself, so photos of any size go in. Predictions use the run's own
test-time augmentation (its `tta` parameter) unless `--tta` overrides it:
`--tta flip,crop`, or `--tta none` for the plain model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional


import numpy as np
import pandas as pd

from models.spec import ExperimentSpec, experiment_spec
from runner.errors import ConfigError
from runner.records.query import find_path, parse_metric
from runner.records import COMPLETED, ENSEMBLE, RunLoadError, RunRecord, sha256_file, write_json_atomic
from runner.records import LOGS_DIR, write_text_atomic

from models.names import CONFUSION_MATRIX_FILE, DEFAULT_METRIC, IMAGE_SUFFIXES, TTA_VIEWS as TTA_CHOICES


def parse_tta(text: str) -> list[str]:
    """The `--tta` option: `"none"` (no test-time augmentation) or comma-separated views.

    Args:
        text: e.g. `"flip"`, `"flip,crop"`, `"none"` (case-insensitive,
            spaces ignored).

    Returns:
        The views, e.g. `["flip", "crop"]`; `[]` for `"none"`.

    Raises:
        ConfigError: an unknown or repeated view, or an empty item; the
            message echoes `text` and lists the allowed views.
    """
    items = [item.strip().lower() for item in text.split(",")]
    if items == ["none"]:
        return []
    if any(item not in TTA_CHOICES for item in items) or len(set(items)) != len(items):
        raise ConfigError(f"--tta: got {text!r}, expected 'none' or distinct comma-separated items of "
                          f"{', '.join(TTA_CHOICES)} (e.g. 'flip' or 'flip,crop')")
    return items


class _Recorded:
    """What every loaded run has: its record, where it was read, its classes and folder."""

    record: RunRecord
    record_path: Path

    @property
    def class_names(self) -> list[str]:
        """Class names in the order of the model's outputs."""
        return list(self.record.data.class_names)

    @property
    def run_dir(self) -> Path:
        """The run's folder (`experiments/<run_id>/`)."""
        return (self.record_path.parent / self.record.paths["predictions"]).resolve().parent


PREDICT_CHUNK = 256
"""Image files decoded and predicted at once by `predict_paths` (float32: 38 MB at 224 px)."""


@dataclass
class LoadedRun(_Recorded):
    """A trained run, rebuilt from its record.

    Attributes:
        record: the run record.
        record_path: where the record was read from.
        model: the rebuilt Keras model with the run's trained weights; maps
            float32 `(batch, height, width, 3)` RGB in [0, 255] to
            probabilities `(batch, n_classes)`.
        spec: the run's parameters (`spec.tta`: its test-time augmentation).
    """

    record: RunRecord
    record_path: Path
    model: Any
    spec: ExperimentSpec

    def tta_used(self, tta: Optional[list[str]] = None) -> list[str]:
        """The test-time augmentation `predict(..., tta=tta)` applies.

        Args:
            tta: `None` (the run's own `spec.tta`), `[]` (none) or views.
                Defaults to `None`.

        Returns:
            The views, e.g. `["flip"]`; `[]` for none.
        """
        return list(self.spec.tta or []) if tta is None else list(tta)

    def predict(self, images: np.ndarray, batch_size: int = 32, tta: Optional[list[str]] = None) -> np.ndarray:
        """Class probabilities for a batch of raw images, with the run's test-time augmentation.

        `models.evaluate.predict_with_tta`, as the run's evaluation: the mean
        of the softmax outputs over the images and their transformed copies.

        Args:
            images: `(n, height, width, 3)` RGB, uint8 or float in [0, 255],
                any height and width (the model resizes).
            batch_size: images per forward pass. Defaults to `32`.
            tta: `None` for the run's own `tta` parameter, `[]` for none, or
                views of `TTA_CHOICES` (e.g. `["flip"]`) overriding it.
                Defaults to `None`.

        Returns:
            float32 `(n, n_classes)`, rows summing to 1.

        Raises:
            ValueError: `tta` has an unknown or repeated view.
        """
        from models.evaluate import predict_with_tta

        return predict_with_tta(self.model, np.asarray(images, dtype="float32"), self.tta_used(tta), batch_size)

    def predict_paths(self, paths: Iterable[str | Path], tta: Optional[list[str]] = None) -> pd.DataFrame:
        """Predict image files; directories are walked for image files.

        Files are decoded and resized exactly as in training (`models.data.load_images`),
        `PREDICT_CHUNK` at a time, so memory does not grow with the number of files beyond one
        chunk of images and the `(n, n_classes)` probabilities. A file that cannot be read is
        skipped, never fatal.

        Args:
            paths: image files and/or folders.
            tta: as in `predict`. Defaults to `None` (the run's own).

        Returns:
            One row per readable image: `path`, `predicted_label`, `confidence`
            (top probability), `prob_<class>` per class (floats in [0, 1]).
            `frame.attrs["skipped"]` maps every path that could not be read
            (missing, not an image, corrupt) to the reason.
        """
        from models.data import check_image_file, load_images
        from models.evaluate import predictions_frame

        files, skipped = expand_image_paths(paths)
        kept, probabilities = [], [np.zeros((0, len(self.class_names)), dtype="float32")]
        for start in range(0, len(files), PREDICT_CHUNK):  # memory bounded by one chunk of decoded images
            images = []
            for path in files[start:start + PREDICT_CHUNK]:
                reason = check_image_file(path)  # the training listing's check: a file it skips is skipped here
                if reason:
                    skipped[str(path)] = reason
                    continue
                try:
                    images.append(load_images([path], self.spec.image_size)[0])
                    kept.append(path)
                except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
                    skipped[str(path)] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if images:
                probabilities.append(self.predict(np.stack(images), tta=tta))
        return _with_skipped(predictions_frame(kept, np.concatenate(probabilities), self.class_names), skipped)


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

    def tta_used(self, tta: Optional[list[str]] = None) -> dict[str, list[str]]:
        """Each member's test-time augmentation under `predict(..., tta=tta)`: `{run_id: views}`."""
        return {m.record.run_id: m.tta_used(tta) for m in self.members}

    def predict(self, images: np.ndarray, batch_size: int = 32, tta: Optional[list[str]] = None) -> np.ndarray:
        """Mean of the members' `LoadedRun.predict` probabilities, float32 `(n, n_classes)`.

        `tta`: `None` (each member its own `tta`), `[]` or views for all of them.
        """
        return np.mean([m.predict(images, batch_size, tta=tta) for m in self.members], axis=0)

    def predict_paths(self, paths: Iterable[str | Path], tta: Optional[list[str]] = None) -> pd.DataFrame:
        """As `LoadedRun.predict_paths`, with the members' probabilities averaged (`tta` as in `predict`)."""
        from models.evaluate import predictions_frame

        paths = list(paths)
        frames = [m.predict_paths(paths, tta=tta) for m in self.members]
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
        `(files, skipped)`: the files, and what is not used mapped to the
        reason: paths that do not exist, and in the folders walked every
        other file (hidden ones aside: `.DS_Store`) and every symbolic link
        that leads to no file (`models.data.folders.broken_link_reason`).
    """
    from models.data.folders import broken_link_reason

    files, skipped = [], {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(found)
                elif found.is_file() and not found.name.startswith("."):
                    skipped[str(found)] = (f"not an image file name (extension {found.suffix or '(none)'!r}; "
                                           f"expected one of {', '.join(IMAGE_SUFFIXES)})")
                elif found.is_symlink() and not found.exists():
                    skipped[str(found)] = broken_link_reason(found)
        elif path.is_file():
            files.append(path)
        elif path.is_symlink():
            skipped[str(path)] = broken_link_reason(path)
        else:
            skipped[str(path)] = "no such file or folder"
    return files, skipped


def check_run_files(record: RunRecord, record_path: str | Path, *, predictions: bool = False) -> list[str]:
    """The problems that keep a recorded run's files from being loaded; empty when there are none.

    The one check of a run's files: `load_run` makes it before rebuilding the
    model, `runner.core.ensemble.choose_members` before taking a member. It hashes
    the run's weights file (`RunRecord.weights_path`: `trained_weights.h5` or
    `model.keras`; seconds for a large model) and, for `trained_weights.h5`, the
    base weights file it records (`models.saving.check_base_file`), and decodes
    nothing.

    Args:
        record: a run record.
        record_path: the file the record was read from; its `paths` are
            relative to its folder.
        predictions: also require the run's test-split `predictions.csv`
            (what an ensemble averages). Defaults to `False`.

    Returns:
        One message per problem, naming the file: `"weights file missing:
        <path>"` (no `model` / `trained_weights` path in the record, or no file
        there), `"cannot read <path>: <reason>"`, `"checksum mismatch for
        <path>: sha256 <12 hex>..., record says <12 hex>..."` (only when the
        record has a `model_file_sha256`), `"base weights <path> (recorded in
        <file>) is missing..."` or `"base weights <path>: sha256 <12 hex>…
        differs from the run's <12 hex>…"`, and with `predictions`,
        `"predictions file missing: <path>"`. An ensemble record has no model
        file of its own (its members are checked when they are loaded): only
        `predictions` applies to it.
    """
    folder = Path(record_path).parent
    problems = []
    if record.kind != ENSEMBLE:
        model_path = record.weights_path(folder)
        if model_path is None or not model_path.is_file():
            problems.append(f"weights file missing: {model_path or 'no model in record'}")
        else:
            expected = (record.model.model_file_sha256 if record.model else None)
            try:
                actual = sha256_file(model_path)
            except OSError as exc:
                problems.append(f"cannot read {model_path}: {exc.strerror or exc}")
            else:
                if expected and actual != expected:
                    problems.append(f"checksum mismatch for {model_path}: sha256 {actual[:12]}..., "
                                    f"record says {expected[:12]}...")
                else:
                    problems += _base_problems(model_path)
    if predictions:
        predictions_path = record.path_of("predictions", folder)
        if predictions_path is None or not predictions_path.is_file():
            problems.append(f"predictions file missing: {predictions_path or 'no predictions in record'}")
    return problems


def _base_problems(weights_path: Path) -> list[str]:
    """The problem with the base weights file a `trained_weights.h5` records (missing, changed), if any."""
    from models.saving import RunWeightsError, check_base_file, is_trained_weights_file, read_base_identity

    if not is_trained_weights_file(weights_path):
        return []
    try:
        identity = read_base_identity(weights_path)
        if identity is not None:
            check_base_file(identity, weights_path)
    except RunWeightsError as exc:
        return [str(exc)]
    return []


def check_out_path(out_path: str | Path) -> Path:
    """Refuse a CSV destination that cannot be written, before any model is loaded.

    Args:
        out_path: the `--out` file; an existing file is replaced.

    Returns:
        `out_path` as a `Path`.

    Raises:
        ConfigError: `out_path` is an existing folder (`"--out P: is a
            directory"`), its folder does not exist (`"--out P: folder F does
            not exist"`; it is never created), is not a folder, or cannot be
            written.
    """
    out_path = Path(out_path)
    folder = out_path.parent
    if out_path.is_dir():
        raise ConfigError(f"--out {out_path}: is a directory; give a file path such as {out_path / 'predictions.csv'}")
    if not folder.exists():
        raise ConfigError(f"--out {out_path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"--out {out_path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out_path}: folder {folder} is not writable")
    return out_path


def write_predictions_csv(frame: pd.DataFrame, out_path: str | Path) -> Path:
    """Write a predictions table as CSV atomically (temporary file in the same folder, then rename).

    Args:
        frame: e.g. from `LoadedRun.predict_paths`.
        out_path: destination file; checked with `check_out_path` (its folder
            must exist: it is not created).

    Returns:
        The written path.

    Raises:
        ConfigError: `check_out_path` refuses `out_path`, or writing fails
            (e.g. disk full); nothing is left at `out_path` then, and a file
            already there is untouched.
    """
    out_path = check_out_path(out_path)
    try:
        return write_text_atomic(out_path, frame.to_csv(index=False))
    except OSError as exc:
        raise ConfigError(f"--out {out_path}: cannot write it ({exc.strerror or exc})") from exc


def load_run(run: str | Path, logs_dir: str | Path = LOGS_DIR,
             metric: str = DEFAULT_METRIC) -> LoadedRun | LoadedEnsemble:
    """Rebuild a recorded run's model from its spec and load its trained weights.

    Works in a new Python process: it needs the record and the run's weights
    file (`trained_weights.h5` and the base weights file it records, or
    `model.keras`), not the notebook. The one loader is
    `models.build.load_run_model`.

    Args:
        run: a run id, a unique run-id prefix, `"best"`, or a record path.
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        metric: what `"best"` ranks by. Defaults to `models.names.DEFAULT_METRIC`.

    Returns:
        The `LoadedRun`, or a `LoadedEnsemble` for an ensemble record (its
        members loaded the same way).

    Raises:
        RunLoadError: the run is unknown or ambiguous, did not complete, its
            spec cannot be rebuilt (e.g. unknown base), `check_run_files`
            finds a problem (its weights file is missing or unreadable, its
            sha256 differs from the record's, or the base weights file it
            records is missing or changed), or the frozen weights rebuilt
            differ from the run's; the message lists each problem with the
            file.
    """
    record_path, record = find_path(run, logs_dir, ranking=parse_metric(metric))
    if record.status != COMPLETED:
        raise RunLoadError(f"run {record.run_id}: status is {record.status!r}, only completed runs can be loaded")
    if record.kind == ENSEMBLE:
        members = [load_run(member, record_path.parent) for member in record.members]
        return LoadedEnsemble(record=record, record_path=record_path, members=members)
    problems = check_run_files(record, record_path)
    if problems:
        raise RunLoadError(f"run {record.run_id}: {'; '.join(problems)}")
    model_path = record.weights_path(record_path.parent)
    from models.build import load_run_model
    from models.saving import RunWeightsError

    try:
        spec = experiment_spec(record.params)
        model = load_run_model(spec, len(record.data.class_names), model_path)
    except RunWeightsError as exc:
        raise RunLoadError(f"run {record.run_id}: {exc}") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise RunLoadError(f"run {record.run_id}: cannot rebuild the model from its record: {exc}") from exc
    return LoadedRun(record=record, record_path=record_path, model=model, spec=spec)


def export_run(run: str | Path, out_path: str | Path, logs_dir: str | Path = LOGS_DIR,
               metric: str = DEFAULT_METRIC) -> Path:
    """Write a recorded run's model as one standalone Keras file, base included (`nbsweep export`).

    The run is loaded as `load_run` loads it (its base rebuilt from the
    recorded weights file and checked, for a run that stores only what it
    trained), then saved whole with `models.build.export_model`:
    `keras.models.load_model(out_path)` loads it alone, in a fresh process
    that has imported `models.build` (it registers the `Preprocess` layer).
    The model maps float32 `(batch, height, width, 3)` RGB in [0, 255] of
    any size to probabilities `(batch, n_classes)`, classes in the record's
    `data.class_names` order; the run's test-time augmentation is not part
    of it.

    Args:
        run: a run id, a unique run-id prefix, `"best"`, or a record path.
        out_path: the `.keras` file to write; its folder must exist; an
            existing file is replaced.
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        metric: what `"best"` ranks by. Defaults to `models.names.DEFAULT_METRIC`.

    Returns:
        `out_path` as a `Path`.

    Raises:
        ConfigError: `out_path` does not end in `.keras`, is a folder, or its
            folder does not exist or is not writable; `run` is an ensemble
            (it has no single model).
        RunLoadError: see `load_run`.
    """
    out_path = check_out_path(out_path)
    if out_path.suffix != ".keras":
        raise ConfigError(f"--out {out_path}: expected a file name ending in .keras (Keras's format)")
    loaded = load_run(run, logs_dir, metric)
    if isinstance(loaded, LoadedEnsemble):
        raise ConfigError(f"run {loaded.record.run_id} is an ensemble: it has no single model to export; export "
                          f"its members ({', '.join(loaded.record.members)})")
    from models.build import export_model

    return export_model(loaded.model, out_path)


SHOWN_SKIPPED = 10
"""How many skipped files an error message lists (then a count of the rest)."""


def no_readable_images(where: str, skipped: dict[str, str], inside: str = "") -> str:
    """The message for images to predict or evaluate of which not one can be read: the files skipped and why.

    Args:
        where: what was given, e.g. the folder (`"--evaluate: <folder>"` for an evaluation).
        skipped: path -> why it was not used (`expand_image_paths`, `LoadedRun.predict_paths`).
        inside: where in it, e.g. `" in its class folders red, green"`. Defaults to `""`.

    Returns:
        `"<where>: no image files<inside> (expected .jpg, ... files)"` when no
        file has an image name, else `"<where>: no readable image<inside>"`;
        then `"; skipped N file(s): <path>: <reason>; ..."` (the first
        `SHOWN_SKIPPED`, then a count of the rest).
    """
    if any(Path(path).suffix.lower() in IMAGE_SUFFIXES for path in skipped):
        head = f"{where}: no readable image{inside}"
    else:
        head = f"{where}: no image files{inside} (expected {', '.join(IMAGE_SUFFIXES)} files)"
    if not skipped:
        return head
    shown = "; ".join(f"{path}: {reason}" for path, reason in list(skipped.items())[:SHOWN_SKIPPED])
    more = len(skipped) - SHOWN_SKIPPED
    return f"{head}; skipped {len(skipped)} file(s): {shown}{f'; and {more} more' if more > 0 else ''}"


def _no_readable_images(labelled_dir: Path, class_folders: list[str], skipped: dict[str, str]) -> str:
    """The message for a labelled folder without one readable image: the files skipped and why."""
    return no_readable_images(f"--evaluate: {labelled_dir}", skipped, f" in its class folders {', '.join(class_folders)}")


def evaluate_run(loaded: LoadedRun, labelled_dir: str | Path, name: Optional[str] = None,
                 tta: Optional[list[str]] = None) -> dict[str, Any]:
    """Evaluate a loaded run on an ImageFolder-style folder (one sub-folder per class).

    Writes `<run folder>/evaluations/<name>.json` (metrics, counts, skipped
    files) and `<name>_confusion_matrix.png` beside it. Unreadable files are
    skipped, and so are hidden sub-folders (`models.data.list_class_folders`):
    both are listed in the evaluation's `skipped` with the reason.

    Args:
        loaded: from `load_run`.
        labelled_dir: folder whose sub-folder names are class names of the run.
        name: evaluation name (letters, digits, `.`, `_`, `-`). Defaults to
            the folder's name.
        tta: test-time augmentation, as in `LoadedRun.predict`: `None` for
            the run's own, `[]` for none. Defaults to `None`.

    Returns:
        The evaluation record (also written as JSON): `run_id`, `name`,
        `data_dir`, `n_images`, `tta` (the views used, `[]` for none; for
        an ensemble `{member run id: views}`), `metrics`, `report`,
        `skipped`.

    Raises:
        ConfigError: the folder is missing, has no class sub-folders, has a
            sub-folder that is not one of the run's classes, `name` has
            other characters, or not one image in the class folders can be
            read (the message lists the first `SHOWN_SKIPPED` files skipped
            with their reasons and counts the rest); nothing is written then.
    """
    from sklearn.metrics import classification_report

    from models.data import list_class_folders
    from models.evaluate import classification_metrics, save_confusion_matrix

    labelled_dir = Path(labelled_dir)
    name = name or labelled_dir.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise ConfigError(f"--name: got {name!r}, expected letters, digits, '.', '_' or '-' (no leading '.')")
    if not labelled_dir.is_dir():
        raise ConfigError(f"--evaluate: {labelled_dir} is not a folder")
    folders, hidden = list_class_folders(labelled_dir)
    unknown = [p.name for p in folders if p.name not in loaded.class_names]
    if not folders or unknown:
        raise ConfigError(f"--evaluate: {labelled_dir}: class folders {unknown or '(none)'} are not classes "
                          f"of run {loaded.record.run_id}; expected some of {', '.join(loaded.class_names)}")
    frames, skipped = [], {str(labelled_dir / folder): reason for folder, reason in hidden.items()}
    for folder in folders:
        frame = loaded.predict_paths([folder], tta=tta)
        skipped.update(frame.attrs["skipped"])
        frames.append(frame.assign(true_label=folder.name))
    predictions = pd.concat(frames, ignore_index=True)
    if predictions.empty:
        raise ConfigError(_no_readable_images(labelled_dir, [p.name for p in folders], skipped))
    labels = predictions["true_label"].map(loaded.class_names.index).to_numpy()
    probabilities = predictions[[f"prob_{c}" for c in loaded.class_names]].to_numpy()
    metrics = classification_metrics(labels, probabilities, loaded.class_names)
    report = classification_report(labels, probabilities.argmax(axis=1), labels=range(len(loaded.class_names)),
                                   target_names=loaded.class_names, zero_division=0, digits=4)
    out_dir = loaded.run_dir / "evaluations"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_confusion_matrix(metrics["confusion_matrix"], loaded.class_names, out_dir / f"{name}_{CONFUSION_MATRIX_FILE}")
    evaluation = {"run_id": loaded.record.run_id, "name": name, "data_dir": str(labelled_dir.resolve()),
                  "n_images": len(predictions), "tta": loaded.tta_used(tta), "metrics": metrics,
                  "report": report, "skipped": skipped}
    write_json_atomic(out_dir / f"{name}.json", evaluation)
    return evaluation
