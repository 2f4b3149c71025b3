"""The `nbsweep` command line: one entry point for every command of the project.

    nbsweep sweep GRID [--dry-run] [--verbose] [--force | --retry-failed] [...]
    nbsweep leaderboard [--logs-dir logs] [--out leaderboard.html] [--metric weighted_recall] [--top-n 10]
    nbsweep predict RUN IMAGE_OR_DIR [...] [--out predictions.csv]
    nbsweep predict RUN --evaluate LABELLED_DIR [--name NAME]
    nbsweep ensemble --top N | RUN RUN [RUN ...]
    nbsweep lineage [--logs-dir logs] [--out lineage.html] [--metric weighted_recall]
    nbsweep export-mlflow [--logs-dir logs] [--tracking-uri mlruns] [--experiment-name nbsweep]
    nbsweep rerun RUN [--expect-identical] [--dry-run]      (also: python runner/sweep.py --rerun RUN)
    nbsweep compare RUN RUN [RUN ...] [--out compare.html]

`python runner/<script>.py ...` (`sweep.py`, `leaderboard.py`, `predict.py`,
`ensemble.py`, `lineage.py`, `export_mlflow.py`) runs the same subcommand: each
script is an entry point only (`script_main`), which nothing imports. This module
sits on top of the library: nothing in `runner/` or `models/` imports it.

Errors become exit codes in one place, `_Command.invoke`: a `ConfigError`
(or `models.errors.ModelConfigError`) that a command raises is printed as
`error: <message>` on stderr, without a traceback, and exits 2. A command
whose module documents more bad-input errors lists them in its
`input_errors` (predict and ensemble: any `RunnerError` or `ValueError`;
export-mlflow: any `RunnerError`). A `FatalError` that is not one of those
(a file that cannot be written) is printed the same way and exits 1. click's
own usage errors (unknown option, bad value, missing argument) also exit 2.
Other exit codes (1 a run failed, 130 interrupted) are what the command
returns. While a command runs, Python warnings are printed as
`warning: <message>` on stderr (`_show_warning`), without a source line.

Nothing heavy is imported here: each command imports its library module when
it runs, and each help text sits beside its command, so `--help` never imports
TensorFlow or Keras.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import click

from models.errors import ModelConfigError
from models.names import DEFAULT_METRIC
from runner.errors import ConfigError, FatalError, RunnerError, shorten
from runner.records.store import EXPERIMENTS_DIR, LEADERBOARD_PATH, LOGS_DIR, TOP_N

if TYPE_CHECKING:
    from runner.core.loop import SweepOptions
    from runner.grid import GridSpec, RunBuilder, RunSpec
    from runner.search import SearchSource

MAX_RUNS = 1000
"""Default of `--max-runs`: a grid of more runs is refused unless `--yes`."""

INPUT_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ModelConfigError)
"""Errors every command prints as `error: <message>` and exits 2 for."""

BAD_INPUT_EXIT = 2
FATAL_EXIT = 1
INTERRUPTED_EXIT = 130

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Argument(click.Argument):
    """A positional argument with a help text (listed under "Arguments" in the help)."""

    def __init__(self, *args: Any, help: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = help


class _Option(click.Option):
    """An option whose help text may be computed when the help is shown (`help_factory`)."""

    def __init__(self, *args: Any, help_factory: Optional[Callable[[], str]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_factory = help_factory

    def get_help_record(self, ctx: click.Context) -> Optional[tuple[str, str]]:
        if self.help_factory is not None:
            self.help, self.help_factory = self.help_factory(), None
        return super().get_help_record(ctx)


class _Command(click.Command):
    """A subcommand: lazy help texts, and the one place where errors become exit codes.

    Attributes:
        input_errors: exceptions printed as `error: <message>` (exit 2).
    """

    def __init__(self, *args: Any, input_errors: Sequence[type[BaseException]] = INPUT_ERRORS,
                 epilog_factory: Optional[Callable[[], str]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_errors = tuple(input_errors)
        self._epilog_factory = epilog_factory

    def invoke(self, ctx: click.Context) -> Any:
        """Runs the command; a bad-input error exits 2, a `FatalError` 1, each printed without traceback.

        A non-zero exit code returned by the callback leaves through
        `ctx.exit`, so that it is the process's exit code in click's
        standalone mode too (e.g. under `click.testing.CliRunner`).
        """
        try:
            with warnings.catch_warnings():  # restores the hook (and the filters) when the command ends
                warnings.showwarning = _show_warning
                code = super().invoke(ctx)
        except self.input_errors as exc:
            click.echo(f"error: {exc}", err=True)
            code = BAD_INPUT_EXIT
        except FatalError as exc:
            click.echo(f"error: {exc}", err=True)
            code = FATAL_EXIT
        if code:
            ctx.exit(code)
        return code

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:  # argparse's words, which the scripts printed so far
            raise click.NoSuchOption(exc.option_name, f"unrecognized arguments: {exc.option_name}",
                                     exc.possibilities, exc.ctx) from None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(param.metavar or param.name.upper(), param.help) for param in self.get_params(ctx)
                if isinstance(param, _Argument) and param.help]
        if rows:
            with formatter.section("Arguments"):
                formatter.write_dl(rows)
        super().format_options(ctx, formatter)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self._epilog_factory is not None:
            self.epilog, self._epilog_factory = self._epilog_factory(), None
        super().format_epilog(ctx, formatter)


class _Group(click.Group):
    """The `nbsweep` group; its subcommands are `_Command`s."""

    command_class = _Command


def _usage_error(message: str) -> None:
    """Stops with a click usage error (exit 2), like argparse's `parser.error`."""
    raise click.UsageError(message, click.get_current_context())


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: Optional[str] = None) -> None:
    """`warnings.showwarning` while a command runs: `warning: <message>` on stderr, without the source line."""
    print(f"warning: {message}", file=file or sys.stderr)


class _Seconds(click.ParamType):
    """A number of seconds: finite and > 0 (`0`, `-1`, `nan` and `inf` are refused, never read as "no limit")."""

    name = "seconds"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        import math

        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not (seconds > 0 and math.isfinite(seconds)):
            self.fail(f"expected a finite number of seconds > 0 (leave the option out for no limit), got {value}", param, ctx)
        return seconds


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
def nbsweep() -> None:
    """nbsweep: recorded, reproducible Keras image-classification sweeps with papermill.

    A grid file (grid.yaml) is expanded into one papermill run per
    configuration of one base notebook; each run is saved as an executed
    notebook and its html and recorded as JSON in logs/; the leaderboard ranks
    the runs. `python runner/<script>.py ...` and `python -m runner` run the same commands.
    Every command is described in docs/commands.md.

    Exit codes: 0 success; 1 a run (or an export) failed; 2 bad input or
    usage (nothing ran); 130 interrupted.
    """


def _sweep_epilog() -> str:
    from models.spec import ExperimentSpec
    from runner.grid import GridSpec

    return ("grid file keys: " + ", ".join(GridSpec.model_fields) + "\n\n"
            + "notebook parameters (in fixed, grid, runs): " + ", ".join(ExperimentSpec.model_fields)
            + "\n\nEvery key and parameter is described in docs/grid.md.")


SWEEP_HELP = """Run a sweep: every configuration of the grid file GRID is validated against the
notebook's parameters before anything runs. Each run is executed with papermill into
experiments/<run_id>/<run_id>.ipynb, exported to .html beside it, and recorded in
logs/<run_id>.json; a failed run is recorded as failed and the sweep goes on. At the end
leaderboard.html ranks every recorded run on the validation split.

A run whose completed record has the same config_hash (parameters, notebook code, the code
of models/, data manifest, weights) is skipped, so re-running the same command after an
interruption continues where it stopped.

With --rerun RUN (GRID is then optional) it executes one recorded run again instead, as
`nbsweep rerun RUN` does; a GRID given with it names the folders (logs_dir, experiments_dir,
leaderboard) and the notebook of records that name none.

Exit codes: 0 every run completed (or was skipped); 1 at least one run failed or timed
out; 2 invalid grid file or option, or another sweep holds the logs folder (nothing ran);
130 interrupted (Ctrl-C / SIGTERM).
"""

RERUN_ONLY_WITH = ("dry_run", "verbose", "timeout", "cell_timeout", "expect_identical")
"""The sweep options that apply to `--rerun` (the others choose or place many runs)."""


@nbsweep.command("sweep", short_help="Run a sweep: expand a grid file into papermill runs of one notebook.",
                 help=SWEEP_HELP, epilog_factory=_sweep_epilog)
@click.argument("grid", cls=_Argument, type=click.Path(path_type=Path), metavar="[GRID]", required=False,
                help="the grid file (YAML), e.g. grid.yaml; see docs/grid.md (optional with --rerun)")
@click.option("--dry-run", is_flag=True, help="print the expanded runs as a table and exit")
@click.option("--verbose", is_flag=True, help="show each notebook's cell output while it runs")
@click.option("--data-dir", metavar="DIR", help="use this ImageFolder-style folder as data_dir of every run")
@click.option("--weights-dir", metavar="DIR", help="folder of offline ImageNet weights files used when weights is "
              "'imagenet' (default: $NBSWEEP_WEIGHTS_DIR, else Keras downloads them)")
@click.option("--force", is_flag=True,
              help="re-run runs that already have a completed record with the same config_hash")
@click.option("--retry-failed", is_flag=True,
              help="run only the runs whose records all failed, were interrupted or timed out")
@click.option("--timeout", type=_Seconds(), metavar="SECONDS",
              help="wall-clock limit of each run; a run over it is stopped and recorded as 'timeout'")
@click.option("--cell-timeout", type=_Seconds(), metavar="SECONDS",
              help="limit of each notebook cell (papermill's execution timeout)")
@click.option("--workers", type=click.IntRange(min=1), default=1, metavar="N",
              help="run N notebooks at once, each in its own worker process and kernel, with "
              "TensorFlow threads = cores / N (default: 1, in this process)")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local",
              help="where runs execute: this machine (default) or a dask.distributed cluster "
              "(needs --scheduler and a filesystem shared with the workers; see docs/dask.md)")
@click.option("--scheduler", metavar="ADDRESS",
              help="the Dask scheduler, e.g. tcp://HOST:8786 (with --executor dask)")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0, min_open=True), metavar="G",
              help="GPUs each worker's kernels see (CUDA_VISIBLE_DEVICES): a whole number, or 1/k of one "
              "(0.5: two workers per GPU); default with --workers N and GPUs: one each, or in turn")
@click.option("--prestart/--no-prestart", default=True, show_default=True,
              help="start each run's kernel, with its imports, while the run before it executes")
@click.option("--max-runs", type=int, default=MAX_RUNS, metavar="N",
              help=f"refuse a grid of more runs than this unless --yes (default: {MAX_RUNS})")
@click.option("--yes", is_flag=True, help="run a grid larger than --max-runs")
@click.option("--retry-pruned", is_flag=True,
              help="also run again the runs a search's pruner stopped (they count as done otherwise)")
@click.option("--clean-orphans", is_flag=True, help="remove run folders that have no record (left by a SIGKILL "
              "or a failed record write); they are listed either way")
@click.option("--rerun", metavar="RUN", help="execute the recorded run RUN again (see nbsweep rerun --help)")
@click.option("--expect-identical", is_flag=True, help="with --rerun: exit 1 unless the rerun's figures and "
              "test probabilities equal the original's")
def sweep(grid: Optional[Path], dry_run: bool, verbose: bool, data_dir: Optional[str], weights_dir: Optional[str],
          force: bool, retry_failed: bool, timeout: Optional[float], cell_timeout: Optional[float],
          workers: int, executor: str, scheduler: Optional[str], max_runs: int, yes: bool,
          retry_pruned: bool, clean_orphans: bool, rerun: Optional[str], expect_identical: bool,
          gpus_per_worker: Optional[float] = None, prestart: bool = True) -> int:
    """`nbsweep sweep`: checks the options, then `_sweep_file` (or, with `--rerun`,
    `_rerun_command`).

    Returns:
        0 every run completed or was skipped (or a dry run), 1 a run failed
        or timed out, 130 interrupted.
    """
    if rerun is not None:
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name, value in ctx.params.items()
                 if name not in (*RERUN_ONLY_WITH, "grid", "rerun")
                 and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            _usage_error(f"{', '.join(given)} cannot be used with --rerun (a rerun executes one recorded run "
                         f"with its own parameters)")
        return _rerun_from_sweep(rerun, grid, dry_run=dry_run, verbose=verbose, timeout_s=timeout,
                                 cell_timeout_s=cell_timeout, expect_identical=expect_identical)
    if grid is None:
        _usage_error("Missing argument 'GRID' (a grid file, or --rerun RUN).")
    if expect_identical:
        _usage_error("--expect-identical needs --rerun RUN")
    if force and retry_failed:
        _usage_error("--force and --retry-failed cannot be used together")
    if executor == "dask" and not scheduler:
        _usage_error("--executor dask needs --scheduler ADDRESS (e.g. tcp://HOST:8786)")
    if executor == "dask" and workers != 1:
        _usage_error("--workers is for --executor local; a Dask cluster runs as many runs as its workers have threads")
    if scheduler and executor != "dask":
        _usage_error("--scheduler needs --executor dask")
    if gpus_per_worker is not None and executor == "dask":
        _usage_error("--gpus-per-worker is for --executor local; give each Dask worker its GPUs when you start it")
    from runner.core.loop import SweepOptions

    options = SweepOptions(verbose=verbose, force=force, retry_failed=retry_failed, timeout_s=timeout,
                           cell_timeout_s=cell_timeout, workers=workers, executor=executor, scheduler=scheduler,
                           retry_pruned=retry_pruned, clean_orphans=clean_orphans, prestart=prestart,
                           gpus_per_worker=gpus_per_worker)
    return _sweep_file(grid, options, dry_run=dry_run, data_dir=data_dir, weights_dir=weights_dir,
                       max_runs=max_runs, yes=yes)


def _sweep_file(grid: Path, options: SweepOptions, *, dry_run: bool, data_dir: Optional[str],
                weights_dir: Optional[str], max_runs: int, yes: bool) -> int:
    """Validate a grid file, then sweep its grid (`_sweep_grid`) or its search (`_sweep_search`).

    Args:
        grid: the grid file.
        options: a `runner.core.loop.SweepOptions`; `options.verbose` also logs at INFO level.
        dry_run: print the runs (or the search space) and run nothing.
        data_dir, weights_dir: `data_dir` / `weights_dir` of every run, or `None` (the grid's).
        max_runs, yes: refuse a grid of more runs than `max_runs` unless `yes`.

    Returns:
        The exit code (see `SWEEP_HELP`).

    Raises:
        ConfigError: invalid grid file, parameters or inputs, more runs than
            `max_runs`, `--gpus-per-worker` that does not fit this machine's
            GPUs, or another sweep holds the logs folder; nothing ran.
    """
    import logging

    from runner.core.executors import worker_gpus
    from runner.grid import load_grid

    if options.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if options.gpus_per_worker is not None and options.executor != "dask":
        worker_gpus(options.workers, options.gpus_per_worker)  # a share that does not fit: refused before anything
    overrides = {k: v for k, v in {"data_dir": data_dir, "weights_dir": weights_dir}.items() if v}
    spec = load_grid(grid)
    if spec.search is not None:
        return _sweep_search(spec, grid, options, overrides, dry_run)
    return _sweep_grid(spec, grid, options, overrides, dry_run=dry_run, max_runs=max_runs, yes=yes)


def _sweep_grid(spec: GridSpec, grid: Path, options: SweepOptions, overrides: dict, *, dry_run: bool,
                max_runs: int, yes: bool) -> int:
    """Expand and check the grid's runs (notes on stderr); print them for a dry run, else run those not done."""
    from runner.core.loop import format_counts, plan_grid, run_sweep
    from runner.core.preflight import check_runs
    from runner.grid import expand_runs
    from runner.records import COMPLETED, SKIPPED
    from runner.records.query import read_all

    runs, notes = expand_runs(spec, grid, overrides=overrides, max_runs=None if yes else max_runs)
    notes += check_runs(spec, runs, grid)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if dry_run:
        print(_table_text(_runs_table(runs), max_colwidth=40))
        print(f"{len(runs)} runs (dry run: nothing executed)")
        return 0

    def sweep() -> dict:
        source, skipped = plan_grid(runs, read_all(spec.logs_dir), options)
        return run_sweep(spec, source, options, skipped=skipped)

    outcome = _run_locked(spec, sweep)
    if isinstance(outcome, int):
        return outcome
    print(f"{format_counts(outcome)}; leaderboard: {spec.leaderboard}")
    return 0 if len(outcome[COMPLETED]) + len(outcome[SKIPPED]) == len(runs) else 1


def _sweep_search(spec: GridSpec, grid: Path, options: SweepOptions, overrides: dict, dry_run: bool) -> int:
    """Check the grid's search space at its bounds (notes on stderr); print it for a dry run, else run the study."""
    from runner.core.loop import format_counts, run_sweep
    from runner.core.preflight import check_runs
    from runner.grid import RunBuilder
    from runner.records import FAILED, TIMEOUT
    from runner.search import parse_space

    builder = RunBuilder(spec, grid, overrides=overrides)
    dims = parse_space(spec, Path(grid), builder)
    first = {d.name: d.bounds()[0] for d in dims}
    corners = [builder.build("grid", {**first, d.name: value})[0] for d in dims for value in d.bounds()]
    for note in check_runs(spec, corners, grid):  # every choice and bound, with the others' first value
        print(f"note: {note}", file=sys.stderr)
    max_epochs = max(r.spec.max_epochs if "epochs" in r.params else 0 for r in corners)  # 0: a notebook without epochs
    if dry_run:
        print(_table_text(_space_table(dims), max_colwidth=60))
        print(f"search: {spec.search.sampler} sampler, {spec.search.n_runs or 'default'} runs, pruner "
              f"{spec.search.pruner} (dry run: nothing executed)")
        return 0
    outcome = _run_locked(spec, lambda: run_sweep(spec, _open_search(spec, grid, dims, builder, max_epochs), options))
    if isinstance(outcome, int):
        return outcome
    print(f"{format_counts(outcome)}; leaderboard: {spec.leaderboard}")
    return 0 if not any(outcome[status] for status in (FAILED, TIMEOUT)) else 1


def _open_search(spec: GridSpec, grid: Path, dims: list, builder: RunBuilder, max_epochs: int) -> SearchSource:
    """`runner.search.open_search`, its warnings and notes on stderr."""
    from runner.search import open_search

    warnings: list[str] = []
    notes: list[str] = []
    try:
        return open_search(spec, grid, dims, builder, max_epochs, warnings, notes)
    finally:
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        for line in notes:
            print(f"note: {line}", file=sys.stderr)


def _run_locked(spec: GridSpec, sweep: Callable[[], dict]) -> dict | int:
    """`sweep()` under `runner.core.lock.sweep_lock`: its outcome, or the exit code of a fatal error or an interrupt."""
    from runner.core.lock import sweep_lock
    from runner.records import INTERRUPTED

    try:
        with sweep_lock(spec.logs_dir):
            return sweep()
    except FatalError as exc:
        print(f"error: {exc}; the sweep stopped, every record written so far is intact", file=sys.stderr)
        return FATAL_EXIT
    except KeyboardInterrupt:
        print(f"interrupted: running runs are recorded as '{INTERRUPTED}' and {spec.leaderboard} is up to date; "
              f"run the same command again to continue with the remaining runs", file=sys.stderr)
        return INTERRUPTED_EXIT


def _runs_table(runs: list[RunSpec]):
    """The expanded runs as a `pandas.DataFrame`: index, origin, hash, and the parameters that vary.

    Parameter columns only for parameters whose value differs between runs
    (all parameters when there is one run).
    """
    import pandas as pd

    params = pd.DataFrame([{k: v if isinstance(v, (str, int, float)) else str(v)
                            for k, v in run.params.items()} for run in runs])
    varying = [c for c in params.columns if params[c].astype(str).nunique() > 1] if len(runs) > 1 else list(params.columns)
    meta = pd.DataFrame({"run": [r.index for r in runs], "origin": [r.origin for r in runs],
                         "config_hash": [r.config_hash[:8] for r in runs]})
    return pd.concat([meta, params[varying]], axis=1)


def _space_table(dims):
    """The search space as a `pandas.DataFrame`: parameter, kind, values or range."""
    import pandas as pd

    return pd.DataFrame([{"parameter": d.name, "kind": d.kind,
                          "values": (", ".join(map(str, d.choices)) if d.kind == "categorical" else
                                     f"[{d.low}, {d.high}]" + (" log" if d.log else "")
                                     + (f" step {d.step}" if d.step else ""))} for d in dims])


def _table_text(table, max_colwidth: int) -> str:
    """`table` as text, 200 characters wide, every column shown, cells cut to `max_colwidth`."""
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", max_colwidth):
        return table.to_string(index=False)


def _rerun_command(ref: str, *, logs_dir: str | Path = LOGS_DIR, experiments_dir: Optional[str | Path] = None,
                  leaderboard: Optional[str | Path] = LEADERBOARD_PATH, notebook: Optional[str | Path] = None,
                  default_notebook: Optional[str | Path] = None,
                  metric: str = DEFAULT_METRIC, top_n: int = TOP_N, verbose: bool = False,
                  timeout_s: Optional[float] = None, cell_timeout_s: Optional[float] = None,
                  expect_identical: bool = False, dry_run: bool = False) -> int:
    """`nbsweep rerun` and `sweep --rerun`: plan, print what changed, execute, print the differences, regenerate the leaderboard.

    Args:
        ref: the run to repeat (id, prefix, name, `best` or record path).
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        experiments_dir: parent of the new run folder (see `execute_rerun`).
        leaderboard: the leaderboard page to regenerate, or `None`. Defaults to `runner.records.LEADERBOARD_PATH`.
        notebook, default_notebook: the notebook to execute (see `plan_rerun`).
        metric, top_n: the leaderboard's ranking and rows.
        verbose, timeout_s, cell_timeout_s: as for a sweep.
        expect_identical: exit 1 unless every figure and probability is the same.
        dry_run: print what changed and stop.

    Returns:
        0 the rerun completed (and, with `expect_identical`, is identical to
        the original); 1 it did not complete, or differs with
        `expect_identical`; 130 interrupted.

    Raises:
        ConfigError: see `plan_rerun`; another sweep holds the logs folder.
    """
    from runner.core.lock import sweep_lock
    from runner.core.loop import StopSignals
    from runner.core.rerun import compare_outcomes, execute_rerun, outcome_text, plan_rerun, plan_text
    from runner.records import COMPLETED
    from runner.records.query import parse_metric

    parse_metric(metric)  # a bad --metric fails before anything runs
    plan = plan_rerun(ref, logs_dir, None if notebook is None else Path(notebook),
                      None if default_notebook is None else Path(default_notebook))
    print(plan_text(plan), flush=True)
    if dry_run:
        print("dry run: nothing executed")
        return 0
    start = time.perf_counter()
    with sweep_lock(plan.logs_dir), StopSignals(lambda line: print(line, file=sys.stderr)) as stop:
        record = execute_rerun(plan, None if experiments_dir is None else Path(experiments_dir), verbose=verbose,
                               timeout_s=timeout_s, cell_timeout_s=cell_timeout_s, metric=metric,
                               should_stop=stop.event.is_set)
    outcome = compare_outcomes(plan.original, record, plan.logs_dir)
    print(f"executed in {time.perf_counter() - start:.1f} s")
    print(outcome_text(plan.original, record, outcome))
    if leaderboard is not None:
        from runner.reports.leaderboard import write_leaderboard

        print(write_leaderboard(plan.logs_dir, leaderboard, metric, top_n).summary())
    if stop.event.is_set():
        return 130
    if expect_identical and not outcome.identical:
        print("error: --expect-identical: the rerun differs from the original", file=sys.stderr)
        return 1
    return 0 if record.status == COMPLETED else 1


def _leaderboard_beside(logs_dir: str | Path) -> Path:
    """The leaderboard page a command that names only a logs folder regenerates: `LEADERBOARD_PATH`'s name
    in the logs folder's parent (`./leaderboard.html` for the default `logs`), so another project's logs
    never overwrite this project's page."""
    return Path(logs_dir).parent / LEADERBOARD_PATH.name


def _rerun_from_sweep(run: str, grid: Optional[Path], **options: Any) -> int:
    """`sweep --rerun RUN [GRID]`: `_rerun_command` in the grid's folders (or the defaults)."""
    if grid is None:
        return _rerun_command(run, **options)
    from runner.grid import load_grid

    spec = load_grid(grid)
    return _rerun_command(run, logs_dir=spec.logs_dir, experiments_dir=spec.experiments_dir,
                         leaderboard=spec.leaderboard, default_notebook=spec.notebook, metric=spec.metric,
                         top_n=spec.top_n, **options)


RERUN_HELP = """Execute a recorded run again with its exact parameters, as a new run linked to the
original (its record's rerun_of), and report how far its figures moved.

RUN is a run id, a unique prefix of one, a run name, 'best' or the path of a record. Before
running, it names whatever changed since the original ran: the notebook's code, each
changed file of models/ (code, not docstrings), package versions, the data manifest (the
split's files, listed afresh) and the weights files. A rerun is always executed, even when
nothing changed (its config_hash then equals the original's). A warm-started run starts
from the same parent. After the run it prints every validation and test metric of both,
their difference, and the largest absolute difference of the predicted probabilities on the
test split, then regenerates the leaderboard.

Exit codes: 0 the rerun completed (with --expect-identical: and every figure and
probability equals the original's); 1 it failed, or differs with --expect-identical; 2 bad
input (unknown run, a notebook that no longer takes its parameters); 130 interrupted.
"""


@nbsweep.command("rerun", short_help="Execute a recorded run again and report how far its figures moved.",
                 help=RERUN_HELP)
@click.argument("run", cls=_Argument, metavar="RUN", help="run id, unique run-id prefix, run name, 'best' or a "
                "record path")
@click.option("--expect-identical", is_flag=True,
              help="exit 1 unless the rerun's figures and test probabilities equal the original's")
@click.option("--dry-run", is_flag=True, help="only name what changed since the original ran; run nothing")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of run records (default: {LOGS_DIR})")
@click.option("--experiments-dir", metavar="DIR",
              help="where the new run folder goes (default: beside the original's run folder)")
@click.option("--notebook", type=click.Path(path_type=Path), metavar="FILE",
              help="execute this notebook (default: the one the original ran)")
@click.option("--leaderboard", "leaderboard_path", metavar="FILE",
              help=f"leaderboard to regenerate (default: {LEADERBOARD_PATH} beside the logs folder)")
@click.option("--metric", cls=_Option, default=DEFAULT_METRIC, metavar="NAME", help_factory=lambda: "what the "
              f"regenerated leaderboard ranks by, {_metric_choices()} (default: {DEFAULT_METRIC})")
@click.option("--verbose", is_flag=True, help="show the notebook's cell output while it runs")
@click.option("--timeout", type=_Seconds(), metavar="SECONDS", help="wall-clock limit of the run")
@click.option("--cell-timeout", type=_Seconds(), metavar="SECONDS", help="limit of each notebook cell")
def rerun(run: str, expect_identical: bool, dry_run: bool, logs_dir: str, experiments_dir: Optional[str],
          notebook: Optional[Path], leaderboard_path: Optional[str], metric: str, verbose: bool, timeout: Optional[float],
          cell_timeout: Optional[float]) -> int:
    """`nbsweep rerun`: `_rerun_command`."""
    return _rerun_command(run, logs_dir=logs_dir, experiments_dir=experiments_dir,
                          leaderboard=leaderboard_path or _leaderboard_beside(logs_dir),
                         notebook=notebook, metric=metric, verbose=verbose, timeout_s=timeout,
                         cell_timeout_s=cell_timeout, expect_identical=expect_identical, dry_run=dry_run)


COMPARE_HELP = """Write one static, offline page comparing recorded runs side by side: the parameters
that differ (a toggle shows all), the training curves of every run overlaid (loss and
accuracy, training and validation, both phases, best epoch marked), the validation and
test figures, per-class precision, recall and F1 with the difference to the first run,
the confusion matrices, McNemar's exact test of each run against the first on the test
split's predictions, timings, cache use and parents.

Each RUN is a run id, a unique prefix of one, a run name, 'best' or a record path; the first
is the reference. The page needs no server and no network (charts are inline SVG).
"""


@nbsweep.command("compare", short_help="Write compare.html: two or more recorded runs side by side.",
                 help=COMPARE_HELP, input_errors=(RunnerError,))
@click.argument("runs", cls=_Argument, nargs=-1, metavar="RUN RUN [RUN]...",
                help="the runs (ids, unique prefixes, names or record paths); the first is the reference")
@click.option("--out", default="compare.html", metavar="FILE", help="html page to write (default: compare.html)")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of run records (default: {LOGS_DIR})")
def compare(runs: tuple[str, ...], out: str, logs_dir: str) -> int:
    """`nbsweep compare`: `runner.reports.compare.write_compare`."""
    if len(runs) < 2:
        _usage_error("give at least 2 runs to compare")
    from runner.reports.compare import write_compare

    page = write_compare(list(runs), logs_dir, out)
    print(f"wrote {out} ({len(runs)} runs; first: {page.runs[0].run_id})")
    return 0


def _metric_choices() -> str:
    from runner.records import RANKING_METRICS

    return f"one of {', '.join(RANKING_METRICS)}"


@nbsweep.command("leaderboard", short_help="Rank the run records into leaderboard.html and leaderboard.csv.",
                 help="Rank the run records into leaderboard.html, leaderboard.csv and lineage.html "
                      "(on the validation split; test figures beside it).")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of JSON run records (default: {LOGS_DIR})")
@click.option("--out", default=str(LEADERBOARD_PATH), metavar="FILE", help=f"html page to write (default: {LEADERBOARD_PATH})")
@click.option("--metric", cls=_Option, default=DEFAULT_METRIC, metavar="NAME", help_factory=_metric_choices)
@click.option("--top-n", type=int, default=TOP_N, metavar="N", help=f"runs shown (default: {TOP_N})")
def leaderboard(logs_dir: str, out: str, metric: str, top_n: int) -> int:
    """`nbsweep leaderboard`: `runner.reports.leaderboard.write_leaderboard`, then its one-line summary."""
    from runner.reports.leaderboard import write_leaderboard
    from runner.records.query import require_logs_dir

    require_logs_dir(logs_dir)  # a typo must not write an empty page
    print(write_leaderboard(logs_dir, out, metric, top_n).summary())
    return 0


PREDICT_HELP = """Predict with a recorded run, or evaluate it on a labelled folder.

RUN is a run id, a unique prefix of one, 'best' (the top completed run by --metric), or the
path of a record. The model is rebuilt from the record's params with the same
models.build_model the notebook used, then the run's trained weights are loaded from its
weights file (trained_weights.h5, with the base rebuilt from the ImageNet weights file it
records and checked, or model.keras; its sha256 must match the record): no notebook, no
retraining. The model
resizes and preprocesses raw images itself, so photos of any size go in. Predictions use the
run's own test-time augmentation (its tta parameter) unless --tta overrides it: --tta
flip,crop, or --tta none for the plain model.
"""


@nbsweep.command("predict", short_help="Predict with a recorded run, or evaluate it on a labelled folder.",
                 help=PREDICT_HELP, input_errors=(RunnerError, ValueError))
@click.argument("run", cls=_Argument, metavar="RUN",
                help="run id, unique run-id prefix, 'best', or a record path")
@click.argument("paths", cls=_Argument, nargs=-1, metavar="[IMAGE_OR_DIR]...",
                help="image files and/or folders (walked for images)")
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE", help="also write the predictions to this CSV file")
@click.option("--evaluate", type=click.Path(path_type=Path), metavar="LABELLED_DIR",
              help="evaluate on an ImageFolder-style folder (one sub-folder per class)")
@click.option("--name", metavar="NAME", help="evaluation name (default: the folder's name)")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of run records (default: {LOGS_DIR})")
@click.option("--metric", default=DEFAULT_METRIC, metavar="NAME", help=f"what 'best' ranks by (default: {DEFAULT_METRIC})")
@click.option("--tta", "tta_text", metavar="VIEWS",
              help="test-time augmentation instead of the run's own: flip, vflip, crop, comma-separated, or none")
def predict(run: str, paths: tuple[str, ...], out: Optional[Path], evaluate: Optional[Path], name: Optional[str],
            logs_dir: str, metric: str, tta_text: Optional[str]) -> int:
    """`nbsweep predict`: `runner.core.predict.load_run`, then `evaluate_run` and/or `predict_paths`."""
    if not paths and evaluate is None:
        _usage_error("give image paths to predict, or --evaluate LABELLED_DIR")
    import pandas as pd

    from runner.core.predict import (check_out_path, evaluate_run, expand_image_paths, load_run, no_readable_images,
                                     parse_tta, write_predictions_csv)

    tta = None if tta_text is None else parse_tta(tta_text)
    if out is not None:
        check_out_path(out)  # before the model loads: a bad --out costs nothing
    given = shorten(", ".join(map(str, paths)), quote=False)
    if paths and not expand_image_paths(paths)[0]:  # likewise no image to predict
        raise ConfigError(no_readable_images(given, expand_image_paths(paths)[1]))
    loaded = load_run(run, logs_dir, metric)
    skipped: dict[str, str] = {}
    if evaluate is not None:
        evaluation = evaluate_run(loaded, evaluate, name, tta=tta)
        m = evaluation["metrics"]
        print(f"run {loaded.record.run_id} on {evaluate} ({evaluation['n_images']} images)")
        print(evaluation["report"])
        print(f"accuracy {m['accuracy']:.4f}  weighted recall {m['weighted_recall']:.4f}  "
              f"macro F1 {m['macro_f1']:.4f}")
        print(f"wrote {loaded.run_dir / 'evaluations' / (evaluation['name'] + '.json')}")
        skipped = evaluation["skipped"]
    if paths:
        predictions = loaded.predict_paths(list(paths), tta=tta)
        skipped = predictions.attrs["skipped"]
        if predictions.empty:  # every file failed to decode: an error, not an empty table
            raise ConfigError(no_readable_images(given, skipped))
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(predictions.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if out:
            write_predictions_csv(predictions, out)
            print(f"wrote {out} ({len(predictions)} images)")
    for path, reason in skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


EXPORT_HELP = """Write a recorded run's model as one standalone Keras file, base included.

RUN is a run id, a unique prefix of one, 'best' (the top completed run by --metric), or the
path of a record. The run is loaded as predict loads it (a run that stores only what it
trained gets its base rebuilt from the weights file it records, checked by sha256), then saved
whole: keras.models.load_model(FILE) loads it alone, after `import models.build` (which
registers the preprocessing layer). It maps raw RGB images in [0, 255] of any size to class
probabilities, classes in the record's data.class_names order.
"""


@nbsweep.command("export", short_help="Write a recorded run's model as one standalone .keras file.",
                 help=EXPORT_HELP, input_errors=(RunnerError, ModelConfigError))
@click.argument("run", cls=_Argument, metavar="RUN",
                help="run id, unique run-id prefix, 'best', or a record path")
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE", required=True,
              help="the .keras file to write (its folder must exist; an existing file is replaced)")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of run records (default: {LOGS_DIR})")
@click.option("--metric", default=DEFAULT_METRIC, metavar="NAME", help=f"what 'best' ranks by (default: {DEFAULT_METRIC})")
def export(run: str, out: Path, logs_dir: str, metric: str) -> int:
    """`nbsweep export`: `runner.core.predict.export_run`."""
    from runner.core.predict import export_run

    written = export_run(run, out, logs_dir, metric)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


ENSEMBLE_HELP = """Average the softmax outputs of the top N runs (--top N, ranked by --metric on the
validation split) or of the member runs given.

The members must share the test split (same data manifest hash) and the class list. Their
saved test-split probabilities (predictions.csv) are averaged, evaluated with the
notebook's metrics, and recorded as a record of kind 'ensemble' listing its members: it is
ranked on the leaderboard like any run, and predict loads it (predicting with every member
and averaging).
"""


@nbsweep.command("ensemble", short_help="Average the softmax outputs of the top runs (or chosen runs).",
                 help=ENSEMBLE_HELP, input_errors=(RunnerError, ValueError))
@click.argument("runs", cls=_Argument, nargs=-1, metavar="[RUN]...",
                help="member runs (ids, unique prefixes or record paths)")
@click.option("--top", type=int, metavar="N", help="use the N best completed runs instead")
@click.option("--metric", default=DEFAULT_METRIC, metavar="NAME", help=f"what --top ranks by (default: {DEFAULT_METRIC})")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of run records (default: {LOGS_DIR})")
@click.option("--experiments-dir", default=str(EXPERIMENTS_DIR), metavar="DIR", help=f"folder of run folders (default: {EXPERIMENTS_DIR})")
@click.option("--leaderboard", "leaderboard_path", metavar="FILE",
              help=f"leaderboard to regenerate (default: {LEADERBOARD_PATH} beside the logs folder)")
def ensemble(runs: tuple[str, ...], top: Optional[int], metric: str, logs_dir: str, experiments_dir: str,
             leaderboard_path: Optional[str]) -> int:
    """`nbsweep ensemble`: `runner.core.ensemble.build_ensemble`, then the leaderboard is regenerated."""
    if bool(runs) == (top is not None):
        _usage_error("give either member runs or --top N")
    from runner.core.ensemble import build_ensemble
    from runner.reports.leaderboard import write_leaderboard
    from runner.records.query import parse_metric, require_logs_dir

    require_logs_dir(logs_dir)
    leaderboard_path = leaderboard_path or str(_leaderboard_beside(logs_dir))
    record = build_ensemble(list(runs), top, logs_dir=logs_dir, experiments_dir=experiments_dir, metric=metric)
    write_leaderboard(logs_dir, leaderboard_path, metric)
    name = parse_metric(metric, "--metric").metric  # an ensemble is evaluated on the members' test split
    print(f"ensemble {record.run_id} of {', '.join(record.members)}: "
          f"test_{name} {getattr(record.metrics, name):.4f}; leaderboard: {leaderboard_path}")
    return 0


@nbsweep.command("lineage", short_help="Write lineage.html: the tree of warm starts of the recorded runs.",
                 help="Write lineage.html from the run records: the tree of runs, roots (ImageNet or random "
                      "weights) and the runs warm-started from them, each run id linking to its saved notebook "
                      "html. The sweep and `nbsweep leaderboard` write it too, beside the leaderboard.")
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of JSON run records (default: {LOGS_DIR})")
@click.option("--out", default="lineage.html", metavar="FILE", help="html page to write (default: lineage.html)")
@click.option("--metric", cls=_Option, default=DEFAULT_METRIC, metavar="NAME", help_factory=lambda: "the metric shown at "
              f"each run, {_metric_choices()} (default: {DEFAULT_METRIC})")
def lineage(logs_dir: str, out: str, metric: str) -> int:
    """`nbsweep lineage`: `runner.reports.lineage.render_lineage` of the records, written atomically.

    Raises:
        ConfigError: unknown metric (nothing is written).
        FatalError: the page cannot be written.
    """
    from runner.reports.lineage import render_lineage
    from runner.records.query import read_all, require_logs_dir
    from runner.records import write_page

    logs, page = require_logs_dir(logs_dir).resolve(), Path(out).resolve()
    found = read_all(logs)
    write_page(page, render_lineage(found.records, metric, logs, page.parent))
    for name, reason in found.unreadable.items():
        print(f"unreadable record {name}: {reason}", file=sys.stderr)
    print(f"wrote {out} ({len(found.records)} records)")
    return 0


@nbsweep.command("export-mlflow", short_help="Export the run records to MLflow, parents linked.",
                 help="Export the run records to MLflow: one MLflow run per record, parents linked.",
                 input_errors=(RunnerError, ModelConfigError))
@click.option("--logs-dir", default=str(LOGS_DIR), metavar="DIR", help=f"folder of JSON run records (default: {LOGS_DIR})")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI or file store folder (default: mlruns, a local file store)")
@click.option("--experiment-name", default="nbsweep", metavar="NAME",
              help="MLflow experiment, created if missing (default: nbsweep)")
def export_mlflow(logs_dir: str, tracking_uri: Optional[str], experiment_name: str) -> int:
    """`nbsweep export-mlflow`: `runner.records.export_mlflow.export_records`, then its summary.

    Returns:
        0 exported, 1 some run could not be exported.
    """
    from runner.records.export_mlflow import export_records

    summary = export_records(logs_dir, tracking_uri, experiment_name)
    for name, reason in summary.unreadable.items():
        print(f"unreadable record {name}: {reason}", file=sys.stderr)
    for note in summary.warnings:
        print(f"warning: {note}", file=sys.stderr)
    for rid, reason in summary.failed.items():
        print(f"error: {rid}: {reason}", file=sys.stderr)
    print(f"{summary.counts_line()} -> {summary.tracking_uri} (experiment id {summary.experiment_id})")
    if summary.relinked:
        print(f"relinked {len(summary.relinked)} runs to replaced parents or members")
    return 1 if summary.failed else 0


NATIVE_LOG = "nbsweep-native-stderr.log"
"""Where this process's native libraries' stderr goes (in the temporary folder, or `$NBSWEEP_NATIVE_LOG`)."""


def quiet_native_stderr() -> Optional[Path]:
    """Send what C/C++ libraries write to file descriptor 2 (TensorFlow's start-up lines) to a log file.

    TensorFlow prints "Could not find cuda drivers", "failed call to cuInit"
    and the cpu_feature_guard notice from C++ straight to fd 2, before the
    progress bar and even for `--dry-run`. Python's own `sys.stderr`
    (messages, warnings, tracebacks, the progress bar) is moved to a copy of
    the terminal's stderr first, so only the native lines leave the console;
    each run's kernel still writes its own to `kernel.log`. Does nothing
    when `sys.stderr` is not the process's real stderr (e.g. under pytest's
    capture) or `$NBSWEEP_NATIVE_LOG` is `-`.

    Returns:
        The log file, or `None` when nothing was redirected.
    """
    import os
    import tempfile

    target = os.environ.get("NBSWEEP_NATIVE_LOG") or str(Path(tempfile.gettempdir()) / NATIVE_LOG)
    if target == "-" or sys.stderr is not sys.__stderr__:
        return None
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        log = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError:
        return None
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = sys.__stderr__ = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding,
                                            errors="backslashreplace")
    return Path(target)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_command(command: Optional[str], argv: Optional[Sequence[str]] = None,
                prog_name: Optional[str] = None) -> int:
    """Run `nbsweep` or one of its subcommands; return the exit code.

    Args:
        command: a subcommand name (`"sweep"`, ...), or `None` for the
            `nbsweep` group itself.
        argv: the arguments. Defaults to `sys.argv[1:]`.
        prog_name: the name shown in usage lines. Defaults to `"nbsweep"`
            (with the subcommand's name after it).

    Returns:
        The exit code: 0, or what the command returned (1, 2, 130); 0 for
        `--help`; 130 for Ctrl-C outside a sweep's own handling.

    Raises:
        SystemExit: a usage error (code 2, after click printed the usage and
            the error), as argparse's `parse_args` did.
    """
    quiet_native_stderr()
    target = nbsweep if command is None else nbsweep.commands[command]
    if prog_name is None:
        prog_name = "nbsweep" if command is None else f"nbsweep {command}"
    try:
        result = target.main(args=None if argv is None else list(argv), prog_name=prog_name,
                             standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C that no command handled
        click.echo("interrupted", err=True)
        return INTERRUPTED_EXIT
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    return result if isinstance(result, int) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The `nbsweep` console script; returns the exit code (usage errors included).

    Args:
        argv: the arguments after `nbsweep`. Defaults to `sys.argv[1:]`.

    Returns:
        The exit code (see `run_command`; 2 for a usage error).
    """
    try:
        return run_command(None, argv)
    except SystemExit as exc:
        return _exit_code(exc)



def script_main(command: str) -> None:
    """Run one subcommand as the script `python runner/<script>.py` and exit with its code.

    Args:
        command: the subcommand (`"sweep"`, `"predict"`, ...); the script's
            arguments are `sys.argv[1:]`.

    Raises:
        SystemExit: always, with the command's exit code.
    """
    script = Path(sys.argv[0]).name
    try:
        code = run_command(command, sys.argv[1:], prog_name=f"python runner/{script}")
    except SystemExit as exc:
        code = _exit_code(exc)
    sys.exit(code)
