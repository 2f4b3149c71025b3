"""The project's hashes: a file's sha256, the sha256 of canonical JSON, and of Python code as code.

Every content hash (run `config_hash`, data manifest, activation-cache keys,
weights and model files) is one of these two, so the same facts always hash
the same way.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from typing import Any


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes (read in chunks by `hashlib.file_digest`).

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def canonical_json(payload: Any) -> str:
    """`payload` as canonical JSON text: keys sorted, `str()` for values JSON cannot hold.

    Args:
        payload: JSON-like data (mappings, sequences, numbers, strings, `None`).

    Returns:
        The text `json.dumps(payload, sort_keys=True, default=str)`.
    """
    return json.dumps(payload, sort_keys=True, default=str)


def sha256_json(payload: Any) -> str:
    """sha256 hex digest of `canonical_json(payload)` encoded as UTF-8.

    Args:
        payload: JSON-like data; mappings hash the same whatever their key order.

    Returns:
        64 lowercase hex digits.
    """
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` with the docstring of its module, classes and functions removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def sha256_code(source: str) -> str:
    """sha256 of what Python code does, not how it is documented or laid out.

    The source is parsed and the docstrings of its module, classes and
    functions are dropped; the hash is that of `ast.dump` of what remains
    (no line numbers, no comments, no blank lines). Editing a docstring, a
    comment or the layout leaves the hash unchanged; editing any statement,
    name or value changes it.

    Args:
        source: Python source text.

    Returns:
        64 lowercase hex digits. A source that does not parse is hashed as
        its text (any edit then changes it).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return hashlib.sha256(source.encode("utf-8")).hexdigest()
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode("utf-8")).hexdigest()
