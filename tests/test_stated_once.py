"""Each fact stated once: the default metric, the default output locations and page size, the run files'
names, a base's one name, the activation-cache rule of the search's cost model, the metric a pruner follows,
and the batch sampler's own name (`batch_sampler`, apart from a search's Optuna `sampler`)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from helpers import expand, write_grid
from models import ExperimentSpec
from models.bases.registry import BASES, canonical_base
from models.names import DEFAULT_METRIC, EPOCH_LOG_KEYS
from models.spec import cache_build_key
from runner import PROJECT_ROOT
from runner.errors import ConfigError
from runner.grid import load_grid
from runner.records import DataSection, write_record
from runner.records.query import parse_metric, read_all


# The default metric -------------------------------------------------------------------------------------------

def _string_constants(path: Path, value: str) -> list[int]:
    """Lines of `path` where `value` is a string constant of the code: not a docstring, not a subscript
    (`metrics["weighted_recall"]` reads a named figure, it states no default)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skipped.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # attribute docstrings
            skipped.add(id(node.value))
        if isinstance(node, ast.Subscript):
            skipped.add(id(node.slice))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value == value and id(node) not in skipped]


def test_the_default_metric_is_written_only_in_models_names():
    """`models.names.DEFAULT_METRIC` is the one place; `models.contract.RANKING_METRICS` lists the metrics."""
    allowed = {PROJECT_ROOT / "models" / "names.py", PROJECT_ROOT / "models" / "contract.py"}
    found = {str(path.relative_to(PROJECT_ROOT)): lines
             for package in ("runner", "models") for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
             if path not in allowed and (lines := _string_constants(path, DEFAULT_METRIC))}
    assert found == {}, f"{DEFAULT_METRIC!r} written out instead of models.names.DEFAULT_METRIC: {found}"


def _written_in(value, allowed: set[Path]) -> dict[str, list[int]]:
    """Where the code of `runner/` and `models/` (outside `allowed`) has `value` as a constant."""
    return {str(path.relative_to(PROJECT_ROOT)): lines
            for package in ("runner", "models") for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
            if path not in allowed and (lines := _string_constants(path, value))}


@pytest.mark.parametrize("value, home", [
    ("logs", "runner/records/store.py"), ("experiments", "runner/records/store.py"),
    ("leaderboard.html", "runner/records/store.py"), ("builtin:", "models/data/folders.py"),
    ("training_curves.png", "models/names.py"), ("confusion_matrix.png", "models/names.py")])
def test_default_locations_and_file_names_are_written_once(value, home):
    """Each default folder, page and file name is a constant of one module, imported everywhere else (the
    template `leaderboard.html` is a template's name, not the default page, so the reports' templates may
    say it)."""
    allowed = {PROJECT_ROOT / home} | ({PROJECT_ROOT / "runner" / "reports" / "leaderboard.py"}
                                       if value == "leaderboard.html" else set())
    assert _written_in(value, allowed) == {}


def test_the_notebook_takes_its_file_names_from_models_names():
    import nbformat

    from models.names import CONFUSION_MATRIX_FILE, TRAINING_CURVES_FILE

    cells = nbformat.read(PROJECT_ROOT / "notebooks" / "base_experiment.ipynb", as_version=4).cells
    code = "\n".join(cell.source for cell in cells if cell.cell_type == "code")
    assert TRAINING_CURVES_FILE not in code and CONFUSION_MATRIX_FILE not in code
    assert "TRAINING_CURVES_FILE" in code and "CONFUSION_MATRIX_FILE" in code


def test_the_default_page_size_and_run_limit_are_stated_once():
    """`runner.records.TOP_N` is the default of the grid, the leaderboard, `--top-n` and a rerun's page; the
    `--max-runs` default is `runner.cli.MAX_RUNS`, its help text included."""
    import click

    from runner import cli
    from runner.grid import GridSpec
    from runner.records import TOP_N
    from runner.reports.leaderboard import write_leaderboard

    assert GridSpec.model_fields["top_n"].default == TOP_N
    assert inspect.signature(write_leaderboard).parameters["top_n"].default == TOP_N
    options = {param.name: param for param in cli.leaderboard.params if isinstance(param, click.Option)}
    assert options["top_n"].default == TOP_N and f"default: {TOP_N}" in options["top_n"].help
    sweep_options = {param.name: param for param in cli.sweep.params if isinstance(param, click.Option)}
    assert sweep_options["max_runs"].default == cli.MAX_RUNS and f"default: {cli.MAX_RUNS}" in sweep_options[
        "max_runs"].help


def test_every_metric_default_is_the_default_metric():
    from runner import cli
    from runner.core.ensemble import build_ensemble
    from runner.core.executors import RunTask
    from runner.core.predict import load_run
    from runner.grid import GridSpec
    from runner.reports.leaderboard import write_leaderboard
    from runner.reports.lineage import lineage_text

    for function in (build_ensemble, load_run, write_leaderboard, lineage_text):
        assert inspect.signature(function).parameters["metric"].default == DEFAULT_METRIC, function
    assert GridSpec.model_fields["metric"].default == DEFAULT_METRIC
    assert RunTask.__dataclass_fields__["metric"].default == DEFAULT_METRIC
    options = {name: param.default for name, command in cli.nbsweep.commands.items()
               for param in command.params if param.name == "metric"}
    assert options and set(options.values()) == {DEFAULT_METRIC}, options


def test_metric_names_are_read_by_parse_metric(make_record):
    """The leaderboard's figure columns and the ensemble page's bold figure are metric names read by
    `parse_metric`: a bad one is a ConfigError, not an AttributeError or a silently unbolded page."""
    from runner.core.ensemble import _report
    from runner.reports.leaderboard import split_figure

    rec = make_record("r", 0.9, val_recall=0.8)
    assert split_figure(rec, "val_weighted_recall") == 0.8 and split_figure(rec, "test_accuracy") == pytest.approx(0.89)
    assert split_figure(rec.model_copy(update={"val_metrics": None}), "val_macro_f1") is None
    with pytest.raises(ConfigError, match="expected one of accuracy"):
        split_figure(rec, "val_recall")
    assert "<b>macro_f1</b>" in _report("e", ["a", "b"], rec.metrics, "test_macro_f1")
    with pytest.raises(ConfigError, match="expected one of accuracy"):
        _report("e", ["a", "b"], rec.metrics, "val_recall")


# One canonical base name ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, canonical", [
    ("VGG16", "vgg16"), ("vgg16", "vgg16"), ("MobileNetV2", "mobilenet_v2"), ("mobilenet-v2", "mobilenet_v2"),
    ("Inception_ResNet_V2", "inception_resnet_v2"), ("SIMPLE-CNN-SMALL", "simple_cnn_small"),
    ("EfficientNetB3", "efficientnetb3"), ("vgg61", "vgg61"),
])
def test_a_base_has_one_spelling_without_tensorflow(name, canonical):
    assert canonical_base(name) == canonical
    assert ExperimentSpec(base=name).base == canonical  # what a run's params, records and cache keys hold
    assert canonical in BASES or canonical == name.lower().replace("_", "").replace("-", "")


def test_vgg16_and_VGG16_are_one_configuration(tmp_path):
    runs, notes = expand(tmp_path, "fixed: {weights: null, image_size: 32}\nruns:\n  - {base: VGG16}\n"
                                   "  - {base: vgg16}\n")
    assert len(runs) == 1 and runs[0].params["base"] == "vgg16"
    assert any("duplicates" in note for note in notes), notes


@pytest.fixture
def vgg_parent(tmp_path, make_record):
    """A completed run written with the base spelled `VGG16` (as a record from before canonical names)."""
    logs, run_id = tmp_path / "logs", "20260101-000000-aaaaaaaa"
    folder = tmp_path / "experiments" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights")
    rec = make_record(run_id, 0.9, base="VGG16", base_kwargs={}, head="gap", dense_units=[16], image_size=32)
    rec.data = DataSection(dir="/d", class_names=["a", "b"], manifest_hash="0" * 64)
    rec.paths = {"model": f"../experiments/{run_id}/model.keras"}
    write_record(rec, logs)
    return logs, rec


@pytest.mark.parametrize("ref", ["best", "20260101-000000-aaaaaaaa"])
def test_a_warm_start_matches_any_spelling_of_its_parents_base(vgg_parent, ref):
    from runner.core.warm_start import resolve_warm_start

    logs, parent = vgg_parent
    params = dict(base="vgg16", base_kwargs={}, head="gap", dense_units=[16], image_size=32, warm_start=ref)
    assert resolve_warm_start(params, read_all(logs)).parent_run_id == parent.run_id
    assert {r.params["base"] for r in read_all(logs).records} == {"vgg16"}  # the record reads in the one spelling
    with pytest.raises(ConfigError, match="has base='vgg16', this run has base='vgg19'"):
        resolve_warm_start({**params, "base": "vgg19", "warm_start": parent.run_id}, read_all(logs))


def _timed(make_record, total_s: float, cache_build_s: float, **params):
    rec = make_record("earlier", 0.8, **params)
    return rec.model_copy(update={"epochs_run": 4, "timings": rec.timings.model_copy(
        update={"total_s": total_s, "cache_build_s": cache_build_s})})


CHEAP = {"base": "mobilenet", "image_size": 128, "epochs": 4, "fine_tune_layers": 0, "augmentation": None,
         "augmented_copies": 2}


def test_the_cost_model_knows_every_spelling_of_a_base(make_record):
    from models.spec import experiment_spec
    from runner.search import predict_duration_s
    from runner.search.duration import BASE_GMACS_224

    assert set(BASE_GMACS_224) <= set(BASES)
    rec = _timed(make_record, 100.0, 60.0, **CHEAP)
    # MobileNetV2: another base; its build is MobileNet's scaled by multiply-adds (0.300 / 0.569 GMACs)
    assert predict_duration_s(experiment_spec({**CHEAP, "base": "MobileNetV2"}), [rec]) == pytest.approx(40.0 + 60.0 * 0.300 / 0.569)
    assert predict_duration_s(experiment_spec({**CHEAP, "base": "MobileNetV2"}), [rec]) == \
        predict_duration_s(experiment_spec({**CHEAP, "base": "mobilenet_v2"}), [rec])
    # a record that spelled the base MobileNet is the same base, the same entries: no build
    assert predict_duration_s(experiment_spec(CHEAP), [_timed(make_record, 100.0, 60.0, **{**CHEAP, "base": "MobileNet"})]) == \
        pytest.approx(40.0)


# The activation-cache rule of the search's cost model ---------------------------------------------------------------

def test_cache_build_key_changes_only_with_what_changes_the_entries():
    spec = ExperimentSpec(base="mobilenet", image_size=64, augmented_copies=2)
    key = cache_build_key(spec)
    assert key is not None and len(key) == 32
    same = [dict(learning_rate=0.1), dict(dropout=0.1), dict(head="flatten"), dict(epochs=3),
            dict(dense_units=[8]), dict(base="MobileNet"), dict(augmentation={"rotation": 0, "flip": None}),
            dict(augmentation={}), dict(augmented_copies=0), dict(warm_start_checkpoint=3),
            dict(optimizer="sgd"), dict(tta=["flip"])]
    for update in same:
        assert cache_build_key(ExperimentSpec(**{**spec.model_dump(), **update})) == key, update
    other = [dict(warm_start="exp_001"), dict(base="vgg16"), dict(base_kwargs={"alpha": 0.5}), dict(image_size=96),
             dict(seed=1), dict(data_dir="/elsewhere"), dict(max_images_per_class=5), dict(val_fraction=0.2),
             dict(weights="/w.weights.h5"), dict(activation_cache_dtype="float16"), dict(cache_dir="/c"),
             dict(fine_tune_layers=4, fine_tune_epochs=1), dict(augmentation={"flip": "horizontal"})]
    keys = [cache_build_key(ExperimentSpec(**{**spec.model_dump(), **update})) for update in other]
    assert None not in keys and len({key, *keys}) == len(other) + 1, dict(zip(map(str, other), keys))
    warm = ExperimentSpec(**{**spec.model_dump(), "warm_start": "exp_001"})
    assert cache_build_key(ExperimentSpec(**{**warm.model_dump(), "warm_start_checkpoint": 2})) != \
        cache_build_key(warm)


@pytest.mark.parametrize("update", [dict(activation_cache=False), dict(weights=None),
                                    dict(augmentation={"mixup": 0.2}),
                                    dict(augmentation={"flip": "horizontal"}, augmented_copies=0)])
def test_a_run_that_builds_no_entry_has_no_cache_build_key(update):
    assert cache_build_key(ExperimentSpec(**update)) is None


def test_the_cost_model_applies_the_cache_rule(make_record):
    """An all-off augmentation mapping builds nothing new; a warm start builds its own entries."""
    from models.spec import experiment_spec
    from runner.search import predict_duration_s

    rec = _timed(make_record, 100.0, 60.0, **CHEAP)
    assert predict_duration_s(experiment_spec({**CHEAP, "augmentation": {"rotation": 0.0, "flip": None}}), [rec]) == pytest.approx(40.0)
    assert predict_duration_s(experiment_spec({**CHEAP, "learning_rate": 0.1, "head": "flatten"}), [rec]) == pytest.approx(40.0)
    assert predict_duration_s(experiment_spec({**CHEAP, "warm_start": "earlier"}), [rec]) == pytest.approx(100.0)
    # nothing frozen, so no build: the whole base trains each of the 4 epochs, forward and backward (3
    # passes), at the build's 60 s per pass
    assert predict_duration_s(experiment_spec({**CHEAP, "weights": None}), [rec]) == pytest.approx(4 * 3 * 60.0)


# The metric a pruner follows ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["macro_f1", "val_weighted_f1", "test_accuracy", "test_weighted_recall"])
def test_a_pruner_refuses_a_metric_without_a_per_epoch_value(tmp_path, metric):
    with pytest.raises(ConfigError, match=rf"metric: got '{metric}', but search.pruner: median .* only "
                                          rf"accuracy, weighted_recall \(val_ prefix optional\)"):
        load_grid(write_grid(tmp_path, f"search: {{pruner: median}}\nmetric: {metric}\n"))
    assert load_grid(write_grid(tmp_path, f"search: {{pruner: none}}\nmetric: {metric}\n")).metric == metric
    assert load_grid(write_grid(tmp_path, f"metric: {metric}\n")).metric == metric


@pytest.mark.parametrize("metric, reported", [(DEFAULT_METRIC, "val_weighted_recall"),
                                              ("val_accuracy", "val_accuracy"), ("accuracy", "val_accuracy")])
def test_the_kernel_is_told_the_grids_metric_to_prune_on(tmp_path, metric, reported):
    from runner.grid import RunBuilder
    from runner.search import SearchSource, open_study, parse_space, pruner_config

    path = write_grid(tmp_path, f"search: {{sampler: grid, pruner: median}}\nmetric: {metric}\n"
                                "grid:\n  image_size: [32]\n")
    spec = load_grid(path)
    builder = RunBuilder(spec, path, base_dir=tmp_path)
    dims = parse_space(spec, path, builder)
    journal = tmp_path / "logs" / "s.journal"
    source = SearchSource(study=open_study(spec.search, dims, journal, "s", max_epochs=2), dims=dims,
                          search=spec.search, builder=builder, found=read_all(tmp_path / "logs"),
                          ranking=parse_metric(spec.metric), journal=journal, pruner=pruner_config(spec.search, 2))
    run = source.peek()
    assert run.trial["metric"] == reported and reported in EPOCH_LOG_KEYS
    source.close()


def test_the_kernel_reports_the_metric_it_is_told(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from models.pruning import PRUNED_ON, PruningCallback, TrialReporter

    journal = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(journal)),
                                direction="maximize")
    trial = study.ask()
    config = {"storage": journal, "study_name": "s", "trial_number": trial.number, "min_epochs": 1,
              "pruner": None, "metric": "val_weighted_recall"}
    callback = PruningCallback(TrialReporter(config))
    assert callback.key == "val_accuracy"  # weighted recall = accuracy for single-label classification
    callback.on_epoch_end(0, {"val_loss": 0.3, "val_accuracy": 0.75})
    assert study.trials[0].intermediate_values == {1: 0.75}
    assert set(PRUNED_ON) == {"val_accuracy", "val_weighted_recall"}
    for bad in ("val_macro_f1", "val_loss"):
        with pytest.raises(ValueError, match=rf"pruning: metric: got '{bad}', expected one of val_accuracy, "
                                             rf"val_weighted_recall"):
            TrialReporter({**config, "metric": bad})
    with pytest.raises(KeyError, match="metric"):
        TrialReporter({k: v for k, v in config.items() if k != "metric"})


# The batch sampler's own name --------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, text", [
    ("fixed.sampler", "fixed: {sampler: balanced}\n"),
    ("runs[0].sampler", "runs:\n  - {sampler: balanced}\n"),
    ("grid.sampler", "grid: {sampler: [balanced, null]}\n"),
])
def test_the_old_sampler_parameter_is_refused_naming_batch_sampler(tmp_path, where, text):
    message = f"grid.yaml: {where}: sampler: renamed to batch_sampler (search: {{sampler: ...}} is the search's Optuna"
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(tmp_path, text)


def test_batch_sampler_is_a_run_parameter_and_sampler_a_search_setting(tmp_path):
    runs, _ = expand(tmp_path, "fixed: {weights: null, batch_sampler: balanced}\n")
    assert runs[0].params["batch_sampler"] == "balanced" and "sampler" not in runs[0].params
    assert load_grid(write_grid(tmp_path, "search: {sampler: random}\ngrid: {batch_sampler: [balanced, null]}\n")
                     ).search.sampler == "random"
