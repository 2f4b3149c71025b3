"""Run records: the typed JSON record of each run, how it is stored, and how records are found and ranked.

- `runner.records.schema`: `RunRecord` (`logs/<run_id>.json`), its statuses and kinds,
  the run folder's files (`RUN_FILES`), `build_record` from a notebook's `result.json`
  (`models.contract.NotebookResult`), and the upgrade of schema-1 records.
- `runner.records.store`: atomic reads and writes of records and of the pages a sweep writes.
- `runner.records.environment`: where a run executed (versions, host, git commit, thread caps).
- `runner.records.query`: reading a logs folder, metric names (`parse_metric`), ranking, lookups.
- `runner.records.index`: the derived SQLite index of a logs folder's summaries (`read_summaries`).
- `runner.records.groups`: repeats grouped by configuration, their statistics computed once per group.
- `runner.records.export_mlflow`: the records exported to an MLflow tracking store.

The names most modules need are re-exported here.
"""

from models.contract import (RANKING_METRICS, DataSection, ModelSection, NotebookResult, SplitMetrics,
                             WarmStartSection, read_result, write_json_atomic, write_result, write_text_atomic)
from models.hashing import sha256_file
from models.names import KERNEL_LOG_FILE, RESULT_FILE
from runner.records.environment import THREAD_LIMIT_ENV, collect_environment, package_version
from runner.records.schema import (COMPLETED, DONE_STATUSES, ENSEMBLE, FAILED, INTERRUPTED, KINDS, PRUNED,
                                   REQUIRED_FILES, RUN, RUN_FILES, SCHEMA_VERSION, SKIPPED, STATUSES, TIMEOUT,
                                   CodeHashes, RunError, RunLoadError, RunRecord, Timings, build_record, upgrade_v1)
from runner.records.store import (EXPERIMENTS_DIR, LEADERBOARD_PATH, LOGS_DIR, TOP_N, read_record, write_page,
                                  write_record)

__all__ = [
    "COMPLETED", "DONE_STATUSES", "ENSEMBLE", "EXPERIMENTS_DIR", "LEADERBOARD_PATH", "LOGS_DIR", "TOP_N", "FAILED", "INTERRUPTED", "KERNEL_LOG_FILE", "KINDS", "PRUNED",
    "RANKING_METRICS", "REQUIRED_FILES", "RESULT_FILE", "RUN", "RUN_FILES", "SCHEMA_VERSION", "SKIPPED",
    "STATUSES", "THREAD_LIMIT_ENV", "TIMEOUT", "CodeHashes", "DataSection", "ModelSection", "NotebookResult",
    "RunError", "RunLoadError", "RunRecord", "SplitMetrics", "Timings", "WarmStartSection", "build_record",
    "collect_environment", "package_version", "read_record", "read_result", "sha256_file", "upgrade_v1",
    "write_json_atomic", "write_page", "write_record", "write_result", "write_text_atomic",
]
