"""Grid files read strictly: repeated keys refused, validation errors formatted with the file, key and allowed values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from runner.errors import ConfigError, shorten
from runner.search import SearchSpec

from runner.grid.schema import EnsembleSpec, GridSpec

MERGE_TAG = "tag:yaml.org,2002:merge"


class _AliasRefused(yaml.YAMLError):
    """An alias (`*name`) where a grid file may not have one; `mark` is where it is."""

    def __init__(self, name: str, mark: yaml.Mark):
        super().__init__(name)
        self.name, self.mark = name, mark


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that records keys repeated within one mapping.

    PyYAML keeps the last value of a repeated key without a word (YAML itself
    requires the keys of a mapping to be unique), so `dropout: [0.1, 0.2]`
    followed by `dropout: [0.5]` would silently sweep one value. This loader
    builds the same Python objects as `yaml.safe_load` and lists each repeat
    in `duplicates`: `(key path, first key node, repeated key node)`, the
    path as the error messages write it (`grid.dropout`, `runs[0].head`).

    Keys are compared as constructed values (`1` and `"1"` differ, `true`
    and `yes` do not); merge keys (`<<`) and the keys they bring in are not
    repeats (overriding a merged key is what a merge is for).

    An alias (`*name`) is refused while the document is composed, before
    anything is built (`_AliasRefused`), except as the value of a merge key
    (`<<: *name`, or `<<: [*a, *b]`): aliases of aliases expand
    exponentially (a 790-byte "billion laughs" file is gigabytes of
    values), while a merge only copies keys into one mapping.

    Args:
        stream: the YAML text.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, yaml.Node, yaml.Node]] = []
        self._paths: dict[yaml.Node, str] = {}
        self._checked: set[yaml.Node] = set()
        self._merge_lists: list[yaml.Mark] = []

    def compose_node(self, parent, index):
        merge = isinstance(index, yaml.ScalarNode) and index.tag == MERGE_TAG
        if self.check_event(yaml.AliasEvent) and not merge and not (
                isinstance(parent, yaml.SequenceNode) and any(parent.start_mark is m for m in self._merge_lists)):
            event = self.peek_event()
            raise _AliasRefused(event.anchor, event.start_mark)
        if merge and self.check_event(yaml.SequenceStartEvent):  # `<<: [*a, *b]`: its items may be aliases
            self._merge_lists.append(self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_document(self, node):
        self._paths = {}
        self._index_paths(node, "")
        return super().construct_document(node)

    def _index_paths(self, root: yaml.Node, root_path: str) -> None:
        """Record the key path of every mapping below `root` (the first, for an aliased one)."""
        stack = [(root, root_path)]
        while stack:
            node, path = stack.pop()
            if node in self._paths:
                continue
            self._paths[node] = path
            children = []
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                    children.append((value_node, f"{path}.{key}" if path else str(key)))
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            stack += reversed(children)  # popped in document order

    def flatten_mapping(self, node):
        # SafeConstructor.construct_mapping flattens merge keys (`<<`) into
        # `node.value` first, for the mapping and for each merged one: check
        # a mapping's own keys before that rewrites them.
        if node not in self._checked:
            self._checked.add(node)
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                try:
                    key = self.construct_object(key_node)
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable: PyYAML's own error follows
                    continue
                if first is not key_node:
                    path = self._paths.get(node, "")
                    self.duplicates.append((f"{path}.{key}" if path else str(key), first, key_node))
        super().flatten_mapping(node)


def read_utf8(path: Path, what: str) -> str:
    """The text of a file that must be UTF-8 (a leading UTF-8 byte-order mark is dropped).

    Args:
        path: the file.
        what: what it is, for the message (`"grid file"`).

    Returns:
        The text.

    Raises:
        ConfigError: the bytes are not UTF-8: the message names the file, the
            first bad byte's line and offset, and says so for UTF-16/32 (a
            byte-order mark) or binary data.
        OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        boms = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
                b"\xfe\xff": "UTF-16"}
        encoding = next((name for bom, name in boms.items() if data.startswith(bom)), None)
        line = data.count(b"\n", 0, exc.start) + 1
        found = (f"{encoding} text (it starts with a {encoding} byte-order mark)" if encoding else
                 f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, byte {exc.start + 1}, "
                 f"is not UTF-8)")
        raise ConfigError(f"{path}: {what} is {found}; save it as UTF-8") from None


def _position(mark: yaml.Mark, other: yaml.Mark) -> str:
    """`line N` (1-based), with the column when both marks are on one line."""
    line = f"line {mark.line + 1}"
    return f"{line}, column {mark.column + 1}" if mark.line == other.line else line


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid file.

    Args:
        path: a YAML file.

    Returns:
        The validated `GridSpec`.

    Raises:
        ConfigError: the file is missing, is not valid YAML, repeats a key
            within one mapping (at any depth; the message gives the key's
            path and both line numbers, every repeat listed), is not a
            mapping, or breaks the schema (unknown key, wrong type: types are
            strict, e.g. `sample: true` is refused); the message names the
            file and the key; every value echoed is cut to about 200
            characters (`runner.errors.shorten`). The file must be UTF-8
            text (`read_utf8`), and an alias is refused (see `_UniqueKeyLoader`),
            before anything is built.
    """
    path = Path(path)
    try:
        loader = _UniqueKeyLoader(read_utf8(path, "grid file"))
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read grid file ({exc.strerror or exc})") from exc
    except _AliasRefused as exc:
        raise ConfigError(f"{path}: line {exc.mark.line + 1}, column {exc.mark.column + 1}: YAML alias "
                          f"*{shorten(exc.name, quote=False)}: aliases are refused in grid files (nested ones "
                          f"expand exponentially), except as a merge key (<<: *{shorten(exc.name, quote=False)}); "
                          f"write the value out instead") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {shorten(str(exc), 2000, quote=False)}") from exc
    if loader.duplicates:
        raise ConfigError("\n".join(
            f"{path}: {where}: duplicate key, at {_position(first.start_mark, again.start_mark)} and again "
            f"at {_position(again.start_mark, first.start_mark)} (YAML would silently keep only the last); "
            f"keep one"
            for where, first, again in sorted(loader.duplicates, key=lambda d: d[2].start_mark.index)
        ))
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys ({', '.join(GridSpec.model_fields)}), "
            f"got {type(raw).__name__}"
        )
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc, allowed=tuple(GridSpec.model_fields), sections={
            "search": tuple(SearchSpec.model_fields), "ensembles": tuple(EnsembleSpec.model_fields)})) from exc


def _format_validation(path: Path, exc: ValidationError, prefix: str = "", allowed=(), sections=None) -> str:
    """One line per pydantic error: `<file>: <key path>: got <value>, <what is allowed>`.

    Args:
        path: the grid file, named at the start of each line.
        exc: the validation error.
        prefix: key path the error locations are below, e.g. `fixed`.
            Defaults to `""`.
        allowed: the keys allowed where an unknown key was found, listed in
            its message. Defaults to `()`.
        sections: for an unknown key inside a section (`search.budgt`,
            `ensembles.0.topp`), the keys allowed there, by section name,
            instead of `allowed`. Defaults to none.

    Returns:
        The lines, joined with newlines; a string where a number or boolean
        was expected gets a hint (see `type_hint`).
    """
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        got = err.get("input")
        msg = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
        msg += type_hint(err["type"], got)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            keys = (sections or {}).get(err["loc"][0], allowed) if len(err["loc"]) > 1 else allowed
            if keys:
                msg += f", expected one of {', '.join(keys)}"
        where = shorten(where, quote=False)
        lines.append(f"{path}: {where or '(top)'}: got {shorten(got)}, {msg}" if err["type"] != "missing"
                     else f"{path}: {where}: {msg}")
    return "\n".join(lines)


def type_hint(error_type: str, value: Any) -> str:
    """Why a string was refused where a number or a boolean is expected, and the fix.

    PyYAML follows YAML 1.1, whose floats need a dot: `1e-3` is read as the
    string `'1e-3'` (`1.0e-3` is a float). A quoted `"32"` or `"yes"` is a
    string too. Strict validation refuses these rather than converting them.

    Args:
        error_type: the pydantic error type, e.g. `float_type`.
        value: the refused input.

    Returns:
        `" (...)"` to append to the message: for `int_type` / `float_type`
        and a string that is a decimal number (an `int_type` one only when
        the number is whole), or `bool_type` and one of `true`, `false`,
        `yes`, `no`, `on`, `off` (any case); `""` otherwise.
    """
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if error_type in ("int_type", "float_type") and text and set(text) <= set("0123456789+-.eE"):
        try:
            number = float(text)
        except ValueError:
            return ""
        if error_type == "int_type" and not number.is_integer():
            return ""
        mantissa, exp, exponent = text.lower().partition("e")
        if exp and "." not in mantissa:
            fix = str(int(number)) if error_type == "int_type" else f"{mantissa}.0e{exponent}"
            return f" (YAML reads {text} as a string; write {fix})"
        return f" (a quoted number is a string; write {text} without quotes)"
    if error_type == "bool_type" and text.lower() in ("true", "false", "yes", "no", "on", "off"):
        return " (a quoted word is a string; write true or false without quotes)"
    return ""


