"""Sweep machinery: grid → run specs → papermill executions → records → leaderboard.

Modules, in the order data flows through them:

- `runner.grid`: load and validate `grid.yaml`, expand it into `RunSpec`s.
- `runner.core.execute`: execute one run (papermill, then nbconvert) and record it.
- `runner.records`: the JSON run record, its schema and atomic writes.
- `runner.reports.leaderboard`: rank the records into `leaderboard.html` / `.csv`.
- `runner.core.loop`: the command line and the loop over runs.
"""

from models.names import PROJECT_ROOT

__all__ = ["PROJECT_ROOT"]
