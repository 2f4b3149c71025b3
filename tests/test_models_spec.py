"""models.spec: `ExperimentSpec` and its nested mappings validate, normalise and refuse as documented, every
field carries its description, and docs/grid.md's parameter tables are the ones written from them."""

import pytest
from pydantic import ValidationError

from models import spec as spec_module
from models.errors import ModelConfigError
from models.spec import (
    Augmentation, ExperimentSpec, FineTuneFrom, ShearFactors, SpecModel, augmenting, bypass_reason, cache_build_key,
    split_key,
)
from runner.grid import docs_tables

SPEC_MODELS = sorted((value for value in vars(spec_module).values()
                      if isinstance(value, type) and issubclass(value, SpecModel) and value is not SpecModel),
                     key=lambda model: model.__name__)


# The parameter tables of docs/grid.md -------------------------------------------------------------------------------

def test_the_parameter_tables_of_docs_grid_md_are_written_from_the_spec():
    stale = [line for line in docs_tables.stale_sections() if line.startswith("docs/grid.md")]
    assert not stale, (f"{', '.join(stale)}: the table differs from what models/spec.py describes; "
                       f"run `{docs_tables.COMMAND}` and commit docs/grid.md")


@pytest.mark.parametrize("model", SPEC_MODELS, ids=lambda model: model.__name__)
def test_every_field_is_described_beside_itself(model):
    assert [name for name, field in model.model_fields.items() if not field.description] == []


def test_a_table_row_gives_type_bounds_default_and_description():
    rows = {row.split(" | ")[0]: row for row in docs_tables.model_table(ExperimentSpec, "parameter").splitlines()}
    assert rows["| `dropout`"] == ("| `dropout` | float, in [0, 1) | `0.5` | Dropout rate before each dense layer "
                                   "and the classifier. |")
    assert "`val_loss`, `val_accuracy` or `val_weighted_recall`" in rows["| `early_stopping_monitor`"]
    assert "| int or `null`, >= 1 | `3` |" in rows["| `early_stopping_patience`"]
    assert "| `1.0e-5` |" in rows["| `fine_tune_learning_rate`"]  # YAML 1.1 reads 1e-05 as a string
    assert "[Repeats](reproducibility.md#repeats)" in rows["| `split_seed`"]


def test_a_rewrite_replaces_only_what_lies_between_the_markers():
    begin, end = (f"<!-- BEGIN generated: x (edit the code, then run `{docs_tables.COMMAND}`) -->",
                  "<!-- END generated: x -->")
    text = f"before\n{begin}\nold\ntable\n{end}\nafter\n"
    assert docs_tables.rewrite(text, "x", "new") == f"before\n{begin}\nnew\n{end}\nafter\n"
    with pytest.raises(ValueError, match="expected one pair of markers"):
        docs_tables.rewrite("no markers", "x", "new")


# SpecModel, the shared base -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", SPEC_MODELS, ids=lambda model: model.__name__)
def test_every_model_is_strict_frozen_and_finite(model):
    assert model.model_config["extra"] == "forbid" and model.model_config["frozen"] is True
    assert model.model_config["strict"] is True and model.model_config["allow_inf_nan"] is False


def test_an_instance_cannot_be_changed():
    spec = ExperimentSpec()
    with pytest.raises(ValidationError, match="frozen"):
        spec.dropout = 0.1


def test_unknown_keys_are_refused_before_the_input_is_rewritten():
    """`Augmentation` turns `shear: 0` into `null`; an unknown key beside it is echoed as it was given."""
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate({"augmentation": {"shear": 0, "zz": 1}})
    (error,) = caught.value.errors()
    assert error["input"] == {"shear": 0, "zz": 1}
    assert error["msg"] == ("Value error, unknown key augmentation.zz; allowed keys of augmentation: "
                            + ", ".join(Augmentation.model_fields))


def test_experiment_spec_leaves_unknown_keys_to_pydantic():
    """A grid's unknown names are refused by `runner.grid.expand` first, with its own message."""
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate({"sampler": "balanced"})
    (error,) = caught.value.errors()
    assert (error["type"], error["loc"], error["msg"]) == ("extra_forbidden", ("sampler",),
                                                           "Extra inputs are not permitted")


# What is accepted, and how it is stored -----------------------------------------------------------------------------

def test_the_defaults_validate_again_unchanged():
    dumped = ExperimentSpec().model_dump(mode="json")
    assert ExperimentSpec.model_validate(dumped).model_dump(mode="json") == dumped
    assert dumped["deterministic"] is spec_module.DETERMINISTIC_DEFAULT and dumped["base"] == "vgg16"


@pytest.mark.parametrize("params, expected", [
    ({"learning_rate": 1}, {"learning_rate": 1.0}),  # an int for a float field
    ({"base": "MobileNetV2"}, {"base": "mobilenet_v2"}),  # one canonical spelling
    ({"base": "VGG-16"}, {"base": "vgg16"}),
    ({"augmentation": {"shear": 0.2}}, {"augmentation.shear": {"x": 0.2, "y": 0.2}}),  # one number, both axes
    ({"augmentation": {"shear": 0}}, {"augmentation.shear": None}),  # all factors 0: off
    ({"augmentation": {"color_jitter": {"hue": 0}}}, {"augmentation.color_jitter": None}),
    ({"augmentation": {"random_resized_crop": {}}},
     {"augmentation.random_resized_crop": {"scale": [0.08, 1.0], "ratio": [0.75, 4 / 3]}}),
    ({"fine_tune_layers": {"from_layer": "block5_conv1"}, "fine_tune_epochs": 2},
     {"fine_tune_layers": {"from_layer": "block5_conv1"}}),
    ({"fine_tune_layers": 0.3, "fine_tune_epochs": 1}, {"fine_tune_layers": 0.3}),
    ({"fine_tune_layers": 2, "fine_tune_epochs": 3, "swa_epochs": 3}, {"swa_epochs": 3}),
    ({"jit_compile": True, "tta": ["flip", "crop"]}, {"jit_compile": True, "tta": ["flip", "crop"]}),
    ({"keep_checkpoints": None}, {"keep_checkpoints": None}),
])
def test_valid_parameters_are_stored_normalised(params, expected):
    dumped = ExperimentSpec.model_validate(params).model_dump(mode="json")
    for path, value in expected.items():
        node = dumped
        for key in path.split("."):
            node = node[key]
        assert node == value, path
    assert ExperimentSpec.model_validate(dumped).model_dump(mode="json") == dumped


# What is refused, and the message ----------------------------------------------------------------------------------

@pytest.mark.parametrize("params, error, message", [
    ({"epochs": True}, ValidationError, r"epochs\n  Input should be a valid integer"),
    ({"image_size": "32"}, ValidationError, r"image_size\n  Input should be a valid integer"),
    ({"learning_rate": float("inf")}, ValidationError, r"learning_rate\n  Input should be a finite number"),
    ({"dropout": 1.0}, ValidationError, r"dropout\n  Input should be less than 1"),
    ({"head": "pyramid"}, ValidationError, r"Input should be 'flatten' or 'gap'"),
    ({"augmentation": {"flipp": "x", "zom": 2}}, ValidationError,
     r"unknown keys augmentation.flipp, augmentation.zom; allowed keys of augmentation: random_resized_crop, flip"),
    ({"augmentation": {"shear": {"z": 0.1}}}, ValidationError,
     r"unknown key augmentation.shear.z; allowed keys of augmentation.shear: x, y"),
    ({"augmentation": {"shear": True}}, ValidationError, r"augmentation.shear\n  Input should be a valid dictionary"),
    ({"augmentation": {"random_resized_crop": {"scale": [0.5, 0.2]}}}, ValidationError,
     r"scale: got \[0.5, 0.2\], expected \[min, max\] with 0.0 < min <= max <= 1.0 \(area fractions\)"),
    ({"augmentation": {"mixup": 0.2, "cutmix": 1.0}}, ValidationError,
     r"mixup \(0.2\) and cutmix \(1.0\) are exclusive: set at most one of them"),
    ({"fine_tune_layers": {"layer": "x"}}, ValidationError,
     r"got \{'layer': 'x'\}: unknown key fine_tune_layers.layer; allowed keys of fine_tune_layers: from_layer"),
    ({"fine_tune_layers": 2.0}, ValidationError, r"a float in \[0, 1\].*; for a layer count give an int \(2\)"),
    ({"fine_tune_layers": 3}, ValidationError, r"fine_tune_layers=3 needs fine_tune_epochs >= 1"),
    ({"fine_tune_layers": 2, "fine_tune_epochs": 1, "weights": None}, ValidationError,
     r"with weights=None: a base with random weights is trained whole"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, ValidationError, r"val_fraction \+ test_fraction must be < 1"),
    ({"epochs": 0}, ValidationError, r"epochs=0 skips the head phase and needs fine-tuning"),
    ({"warmup_epochs": 10}, ValidationError, r"warmup_epochs=10 needs epochs > 10"),
    ({"ema": 1.5}, ValidationError, r"ema: got 1.5, expected null \(off\) or a momentum in \(0, 1\)"),
    ({"ema": 0.9, "fine_tune_layers": 1, "fine_tune_epochs": 2, "swa_epochs": 1}, ValidationError,
     r"ema=0.9 and swa_epochs=1 both average the weights"),
    ({"swa_epochs": 1}, ValidationError, r"but there is no fine-tuning phase \(fine_tune_layers=0\)"),
    ({"train_on_val": True}, ValidationError, r"early_stopping_patience: got 3 with train_on_val=true"),
    ({"class_weight": "balanced", "batch_sampler": "balanced"}, ValidationError,
     r"both correct for class imbalance"),
    ({"tta": ["flip", "flip"]}, ValidationError, r"expected null \(off\) or a non-empty list of distinct"),
    ({"warm_start": "../x"}, ValidationError,
     r"'best' or null \(no '/', '\\' or '\.\.': records are looked up in logs_dir only\)"),
    ({"name": "bad name"}, ValidationError, r"String should match pattern"),
])
def test_invalid_parameters_are_refused_with_what_was_received(params, error, message):
    with pytest.raises(error, match=message):
        ExperimentSpec.model_validate(params)


def test_a_model_config_error_is_a_validation_error_of_the_spec():
    """`ModelConfigError` is a `ValueError`, so pydantic reports it like any refused value."""
    assert issubclass(ModelConfigError, ValueError)
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate({"swa_epochs": 0})
    assert caught.value.errors()[0]["loc"] == ("swa_epochs",)


def test_nested_mappings_validate_on_their_own():
    assert ShearFactors.model_validate(0.3) == ShearFactors(x=0.3, y=0.3)
    with pytest.raises(ValidationError, match=r"String should have at least 1 character"):
        FineTuneFrom(from_layer="")
    assert Augmentation(mixup=0.2).mixes_batches and not Augmentation(rotation=0.1).mixes_batches


# What a spec decides -------------------------------------------------------------------------------------------------

def test_the_split_follows_split_seed_else_seed():
    spec = ExperimentSpec(seed=3)
    assert spec.data_seed == 3 and ExperimentSpec(seed=3, split_seed=7).data_seed == 7
    assert split_key({"seed": 3, "split_seed": 7, "val_fraction": 0.2}) == (None, None, 0.2, None, 7)
    assert split_key(spec.model_dump())[-1] == 3


def test_augmentation_that_turns_nothing_on_is_no_augmentation():
    assert not augmenting(ExperimentSpec(augmentation={"shear": 0}))
    assert augmenting(ExperimentSpec(augmentation={"flip": "horizontal"}))
    assert bypass_reason(ExperimentSpec()) is None
    assert "augmented_copies is 0" in bypass_reason(ExperimentSpec(augmentation={"flip": "horizontal"}))
    assert "mixup / cutmix" in bypass_reason(ExperimentSpec(augmentation={"mixup": 0.2}, augmented_copies=2))


def test_the_cache_build_key_changes_with_what_decides_the_entries_only():
    key = cache_build_key(ExperimentSpec())
    assert len(key) == 32
    assert cache_build_key(ExperimentSpec(learning_rate=0.1, head="flatten", epochs=3)) == key
    assert cache_build_key(ExperimentSpec(seed=1, split_seed=42)) == key  # the split's seed is still 42
    assert cache_build_key(ExperimentSpec(split_seed=1)) != key
    assert cache_build_key(ExperimentSpec(weights=None)) is None  # from scratch: nothing frozen
    assert cache_build_key(ExperimentSpec(activation_cache=False)) is None

