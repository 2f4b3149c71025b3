"""The sweep machinery around the notebook: grid → run specs → papermill runs → records → reports.

Data flows one way through its sub-packages, each importing only those after it (import-linter
checks it, `pyproject.toml`): `runner.cli` (the `nbsweep` command line, imported by nothing but
the entry-point scripts `runner/<script>.py` and `python -m runner`) → `runner.core` (the sweep
loop, one run's execution and its executors, pre-flight checks, warm starts, rerun, ensembles,
predict, the MLflow export) → `runner.reports` (leaderboard, lineage, compare pages, plots,
significance tests, their templates) → `runner.grid` (a grid file's schema, strict YAML, the
expansion into `RunSpec`s, the `config_hash` fingerprint) → `runner.search` (an Optuna study
that proposes runs: space, study, duration, ask-and-tell source) → `runner.records` (the run
record's schema, its store, queries and ranking, the environment) → `runner.errors` (the
exception root) → `models` (what a run's kernel imports, including the notebook ↔ runner
contract, `models.contract`).
"""

from models.names import PROJECT_ROOT

__all__ = ["PROJECT_ROOT"]
