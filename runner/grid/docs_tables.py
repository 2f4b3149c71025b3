"""The reference tables of `docs/`, written from the code: `python -m runner.grid.docs_tables`.

Each table sits in a Markdown file between two marker comments,
`<!-- BEGIN generated: <name> ... -->` and `<!-- END generated: <name> -->`;
this module rewrites what lies between them and nothing else:

- `parameters` in `docs/grid.md`: every notebook parameter of
  `models.spec.ExperimentSpec` (name, type and allowed values, default,
  the field's `description`), then the keys of its nested mappings
  (`augmentation`, `fine_tune_layers: {from_layer}`).
- `search` in `docs/search.md`: the samplers and pruners a `search:` block may
  name (`runner.search.space.SAMPLERS`, `PRUNERS`).

`python -m runner.grid.docs_tables --check` rewrites nothing and exits with 1
when a table is stale; `tests/test_models_spec.py` and
`tests/test_search_space.py` fail then.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

from pydantic.fields import FieldInfo

from models.spec import ExperimentSpec, SpecModel
from runner import PROJECT_ROOT
from runner.search.space import PRUNERS, SAMPLERS

COMMAND = "python -m runner.grid.docs_tables"
"""What regenerates the tables, as stale-table messages name it."""

SEE_ALSO = {
    "split_seed": "See [Repeats](reproducibility.md#repeats).",
    "deterministic": "See [Reproducibility](reproducibility.md).",
    "weights_dir": "See [ImageNet weights without a network](trashnet.md#imagenet-weights-without-a-network).",
    "augmentation": "Its keys are in the `augmentation` table below.",
    "fine_tune_layers": "The mapping's key is in the `fine_tune_layers` table below.",
    "jit_compile": "On 2 CPU cores XLA made MobileNet fine-tuning much slower: see "
                   "[Measured results](results.md#xla-on-2-cpu-cores).",
    "warm_start": "See [Warm starts](warm-starts.md).",
    "train_on_val": "See [Refit](reproducibility.md#refit).",
    "activation_cache": "See [Speed](speed.md#activation-cache).",
}
"""Links from a parameter's row to the pages of `docs/` that say more (the field descriptions name code,
not pages)."""


def _yaml(value: Any) -> str:
    """A value as a grid file writes it: `null`, `true`, `1.0e-5` (a dot in the mantissa, as YAML 1.1 needs)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        text = format(value, ".6g")
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{int(exponent)}" if exponent else mantissa
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_yaml(item)}" for key, item in value.items()) + "}"
    return str(value)


def _one_of(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _nested_models(annotation: Any) -> list[type[SpecModel]]:
    """The `SpecModel`s an annotation holds (`Optional[Augmentation]` -> `[Augmentation]`)."""
    if isinstance(annotation, type) and issubclass(annotation, SpecModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _nested_models(arg)]


def _alternatives(annotation: Any) -> list[str]:
    """What an annotation accepts, one item per alternative, in a grid file's words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return [f"`{_yaml(arg)}`" for arg in args]
    if origin in (Union, types.UnionType):
        found = [item for arg in args if arg is not type(None) for item in _alternatives(arg)]
        return found + (["`null`"] if type(None) in args else [])
    if origin is list:
        return [f"list of {', '.join(_alternatives(args[0]))}" if args else "list"]
    if annotation is dict or origin is dict:
        return ["mapping"]
    if isinstance(annotation, type) and issubclass(annotation, SpecModel):
        return [f"mapping (`{annotation.__name__}`)"]
    return [getattr(annotation, "__name__", str(annotation))]


def type_text(annotation: Any) -> str:
    """An annotation in a grid file's words: `float`, `` `flatten` or `gap` ``, `list of int`, `int or `null``.

    A `Literal` lists its values, a `SpecModel` is `mapping (<its name>)`, and
    `Optional[X]` adds `` `null` `` as the last alternative.
    """
    return _one_of(_alternatives(annotation))


def _number(value: float) -> str:
    """A bound as the docs print it: an int exactly (`4294967296`), a float short (`1e-05`)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def constraint_text(field: FieldInfo) -> str:
    """A field's bounds, lengths and pattern: `in [0, 1)`, `>= 1`, `2 items`, `at most 80 characters`."""
    low = high = min_length = max_length = pattern = None
    for item in field.metadata:  # pydantic's constraint objects (annotated_types.Ge, ...), read by attribute
        if getattr(item, "ge", None) is not None:
            low = f"[{_number(item.ge)}"
        elif getattr(item, "gt", None) is not None:
            low = f"({_number(item.gt)}"
        elif getattr(item, "le", None) is not None:
            high = f"{_number(item.le)}]"
        elif getattr(item, "lt", None) is not None:
            high = f"{_number(item.lt)})"
        elif getattr(item, "min_length", None) is not None:
            min_length = item.min_length
        elif getattr(item, "max_length", None) is not None:
            max_length = item.max_length
        elif getattr(item, "pattern", None):
            pattern = item.pattern
    parts = []
    if low and high:
        parts.append(f"in {low}, {high}")
    elif low:
        parts.append(f"{'>=' if low[0] == '[' else '>'} {low[1:]}")
    elif high:
        parts.append(f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}")
    unit = "characters" if str in (field.annotation, *typing.get_args(field.annotation)) else "items"
    if min_length is not None and min_length == max_length:
        parts.append(f"{min_length} {unit}")
    else:
        if min_length:
            parts.append("not empty" if min_length == 1 else f"at least {min_length} {unit}")
        if max_length is not None:
            parts.append(f"at most {max_length} {unit}")
    if pattern:
        parts.append(f"matching `{pattern}`")
    return ", ".join(parts)


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell: on one line, `|` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def model_table(model: type[SpecModel], first_column: str) -> str:
    """A Markdown table of `model`'s fields, in their order: name, type and allowed values, default, description.

    Raises:
        ValueError: a field has no `description`.
    """
    rows = [f"| {first_column} | type and allowed values | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name}: no Field(description=...) to document it with")
        kind = type_text(field.annotation)
        limits = constraint_text(field)
        default = "required" if field.is_required() else f"`{_yaml(field.get_default(call_default_factory=True))}`"
        text = field.description + (f" {SEE_ALSO[name]}" if model is ExperimentSpec and name in SEE_ALSO else "")
        rows.append(f"| `{name}` | {_cell(kind + (f', {limits}' if limits else ''))} | {_cell(default)} | "
                    f"{_cell(text)} |")
    return "\n".join(rows)


def _models_below(model: type[SpecModel]) -> list[tuple[str, type[SpecModel]]]:
    """`(parameter path, model)` of every `SpecModel` nested in `model`'s fields, depth first, in field order."""
    found = []
    for name, field in model.model_fields.items():
        for nested in _nested_models(field.annotation):
            path = name if model is ExperimentSpec else f"{model.param_path}.{name}"
            found.append((path, nested))
            found += _models_below(nested)
    return found


def parameters_section() -> str:
    """The `parameters` table of `docs/grid.md`: `ExperimentSpec`, then each nested mapping's keys."""
    parts = [model_table(ExperimentSpec, "parameter")]
    for path, model in _models_below(ExperimentSpec):
        parts.append(f"**`{path}`** (`{model.__name__}`): {' '.join((model.__doc__ or '').split())}")
        parts.append(model_table(model, "key"))
    return "\n\n".join(parts)


def search_section() -> str:
    """The `search` table of `docs/search.md`: every `search.sampler` and `search.pruner` value, in table order."""
    rows = ["| key | value | Optuna class | what it does |", "|---|---|---|---|"]
    for key, table in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        for value, kind in table.items():
            optuna_class = f"`optuna.{key}s.{kind.optuna_class}`" if kind.optuna_class else "none"
            rows.append(f"| `{key}` | `{value}` | {optuna_class} | {_cell(kind.summary)} |")
    return "\n".join(rows)


SECTIONS: dict[str, tuple[Path, Callable[[], str]]] = {
    "parameters": (Path("docs/grid.md"), parameters_section),
    "search": (Path("docs/search.md"), search_section),
}
"""Section name -> (its Markdown file, relative to the project root; what renders it)."""


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN generated: {name} (edit the code, then run `{COMMAND}`) -->",
            f"<!-- END generated: {name} -->")


def rewrite(text: str, name: str, body: str) -> str:
    """`text` with what lies between section `name`'s markers replaced by `body`.

    Raises:
        ValueError: the markers are not both there once, in order.
    """
    begin, end = _markers(name)
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected one pair of markers {begin!r} ... {end!r}")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def stale_sections(root: Path = PROJECT_ROOT) -> list[str]:
    """The sections whose file does not hold what the code renders now, as `file: section` lines."""
    stale = []
    for name, (path, render) in SECTIONS.items():
        text = (root / path).read_text(encoding="utf-8")
        if rewrite(text, name, render()) != text:
            stale.append(f"{path.as_posix()}: {name}")
    return stale


def write_sections(root: Path = PROJECT_ROOT) -> list[str]:
    """Rewrite every stale section in place; the `file: section` lines rewritten."""
    written = []
    for name, (path, render) in SECTIONS.items():
        text = (root / path).read_text(encoding="utf-8")
        new = rewrite(text, name, render())
        if new != text:
            (root / path).write_text(new, encoding="utf-8")
            written.append(f"{path.as_posix()}: {name}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m runner.grid.docs_tables [--check]`: rewrite the stale tables (or, with `--check`, list them)."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit with 1 if a table is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_sections()
        for line in stale:
            print(f"stale: {line} (run `{COMMAND}`)")
        return 1 if stale else 0
    for line in write_sections():
        print(f"rewrote {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
