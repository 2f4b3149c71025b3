"""Where a run executed: Python, platform, host, git commit and package versions (for its record)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any, Optional

from runner import PROJECT_ROOT

THREAD_LIMIT_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
"""Environment variables capping a kernel's compute threads (set per worker by `--workers`)."""
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH")
"""Environment variables giving a kernel its GPU(s) and TensorFlow's memory growth (`--gpus-per-worker`)."""

def package_version(name: str) -> Optional[str]:
    """The installed version of distribution `name` (from its metadata, no import), or `None`."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def collect_environment() -> dict[str, Any]:
    """Describe where runs execute: versions, git commit, host.

    Package versions are read from installed metadata (no TensorFlow import).

    Returns:
        `{"python", "platform", "hostname", "git_commit", "packages": {name: version},
        "cpu_count", "thread_limits": {variable: value}}`: `thread_limits` are the
        thread caps the run's kernel inherited (`--workers`), empty when none;
        with `CUDA_VISIBLE_DEVICES` set (`--workers N` on a machine with GPUs,
        `--gpus-per-worker`) also `"gpus"`: the GPUs the kernel was given, e.g. `["1"]`.
    """
    packages = ("tensorflow", "keras", "papermill", "nbconvert", "scikit-learn", "numpy", "pandas")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
        "packages": {name: package_version(name) for name in packages},
        "cpu_count": os.cpu_count(),
        "thread_limits": {name: os.environ[name] for name in THREAD_LIMIT_ENV if name in os.environ},
        **({"gpus": [d for d in os.environ[GPU_ENV[0]].split(",") if d]} if GPU_ENV[0] in os.environ else {}),
    }
