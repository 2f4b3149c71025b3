"""Grid files: from `grid.yaml` to the list of runs a sweep executes.

- `runner.grid.schema`: `GridSpec` (a validated grid file), `EnsembleSpec`, `RunSpec` (one run).
- `runner.grid.strict_yaml`: `load_grid`, reading YAML strictly (repeated keys refused) and
  formatting validation errors with the file, key, value received and values allowed.
- `runner.grid.expand`: the notebook's parameters, the grid's expansion (`expand_runs`,
  `RunBuilder`), each run's parameters checked against `models.spec.ExperimentSpec`.
- `runner.grid.fingerprint`: what besides parameters decides a run's result (`config_hash`).
"""

from runner.grid.expand import RunBuilder, expand_runs, notebook_parameters
from runner.grid.fingerprint import Fingerprinter, code_hashes, kernel_code_files
from runner.grid.schema import DEFAULT_NOTEBOOK, EnsembleSpec, GridSpec, RunSpec
from runner.grid.strict_yaml import load_grid

__all__ = ["DEFAULT_NOTEBOOK", "EnsembleSpec", "Fingerprinter", "GridSpec", "RunBuilder", "RunSpec", "code_hashes",
           "expand_runs", "kernel_code_files", "load_grid", "notebook_parameters"]
