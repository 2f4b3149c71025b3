"""The project's two hashes: a file's sha256, and the sha256 of canonical JSON.

Every content hash (run `config_hash`, data manifest, activation-cache keys,
weights and model files) is one of these two, so the same facts always hash
the same way.
"""

from __future__ import annotations

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
