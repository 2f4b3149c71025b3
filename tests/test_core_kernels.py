"""Kernels started ahead (`runner.core.kernels`): run k+1's kernel starts and imports while run k executes,
papermill runs the notebook in it, and no kernel outlives a sweep, however the sweep ends.

The kernel tests run a probe notebook: `tests/assets/faults.ipynb` with a first cell that prints
whether a module its later cell imports (`tabnanny`) is loaded already, the kernel's pid, working
folder, stderr and any name the runner left in its namespace. "No leftover kernel" is
`helpers.kernels_running_in`: no process whose working folder is below the test's folder (a kernel
started ahead waits in the experiments folder).
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from runner.core import kernels
from runner.core.execute import execute_run
from runner.core.kernels import KernelSetup, take_next_kernel, warm_up_modules
from runner.grid import RunSpec
from runner.records import COMPLETED, FAILED, INTERRUPTED
from runner.records.query import read_all

from helpers import FAULTS_NOTEBOOK, SWEEP, kernels_running_in, wait_for
from runner import PROJECT_ROOT

PROBE = ('import os, sys\n'
         'print("PROBE " + json.dumps({"preloaded": "tabnanny" in sys.modules, "pid": os.getpid(), '
         '"cwd": os.getcwd(), "stderr": os.readlink("/proc/self/fd/2"), '
         '"left": sorted(n for n in globals() if n.startswith("_nbsweep"))}))')


def probe_notebook(folder: Path) -> Path:
    """faults.ipynb with the probe cell first after the parameters, and `import tabnanny` last."""
    nb = json.loads(FAULTS_NOTEBOOK.read_text(encoding="utf-8"))
    code = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"]
    probe = {"cell_type": "code", "id": "probe", "metadata": {}, "outputs": [], "execution_count": None,
             "source": "import json\n" + PROBE}
    late = {"cell_type": "code", "id": "late", "metadata": {}, "outputs": [], "execution_count": None,
            "source": "import tabnanny"}
    nb["cells"][code[0] + 1:code[0] + 1] = [probe]
    nb["cells"].append(late)
    path = folder / "probe.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def probed(record, logs_dir: Path) -> dict:
    """What the probe cell printed in the run's executed notebook, and the notebook's execution counts."""
    nb = json.loads(record.path_of("notebook", logs_dir).read_text(encoding="utf-8"))
    text = "".join("".join(out.get("text", "")) for cell in nb["cells"] for out in cell.get("outputs", []))
    (line,) = [line for line in text.splitlines() if line.startswith("PROBE ")]
    counts = [cell["execution_count"] for cell in nb["cells"] if cell["cell_type"] == "code"]
    return {**json.loads(line[len("PROBE "):]), "counts": counts}


def run_spec(index: int, **params) -> RunSpec:
    return RunSpec(index=index, params={"action": "ok", "score": 0.5, **params},
                   config_hash=f"{index:02d}" * 32, origin=f"runs[{index}]")


def ahead_pids(experiments: Path) -> list[int]:
    """Kernels waiting in the experiments folder itself: started ahead, not taken by a run yet."""
    pids = []
    for pid in kernels_running_in(experiments):
        try:
            if Path(os.readlink(f"/proc/{pid}/cwd")) == experiments:
                pids.append(pid)
        except OSError:  # it ended meanwhile
            pass
    return pids



def test_warm_up_modules_are_the_notebooks_imports_and_with_models_tensorflow():
    base = warm_up_modules(PROJECT_ROOT / "notebooks" / "base_experiment.ipynb")
    assert base[:4] == ("pandas", "IPython.display", "models", "models.contract")
    assert {"tensorflow", "keras", "models.data", "models.build", "models.training", "models.evaluate"} <= set(base)
    assert len(base) == len(set(base))
    # a notebook that does not import the models package itself: its own imports, no TensorFlow
    assert warm_up_modules(FAULTS_NOTEBOOK) == ("os", "signal", "time", "models.contract")
    assert warm_up_modules(Path("/nonexistent.ipynb")) == ()


@pytest.mark.slow
def test_the_next_run_executes_in_the_kernel_started_ahead(tmp_path):
    notebook, experiments, logs = probe_notebook(tmp_path), tmp_path / "experiments", tmp_path / "logs"
    first = execute_run(run_spec(0), notebook, experiments, logs, prestart=True, prepare_next=True)
    assert first.status == COMPLETED
    assert probed(first, logs)["preloaded"] is False  # nothing was started ahead of the first run
    assert wait_for(lambda: len(ahead_pids(experiments)) == 1)  # run 2's kernel, ready in the experiments folder
    (pid,) = ahead_pids(experiments)

    second = execute_run(run_spec(1), notebook, experiments, logs, prestart=True, prepare_next=False)
    assert second.status == COMPLETED
    seen = probed(second, logs)
    run_dir = logs / second.paths["notebook"]
    assert seen["pid"] == pid and seen["preloaded"] is True  # that kernel, its imports done
    assert Path(seen["cwd"]) == run_dir.parent.resolve()  # moved into the run's folder
    assert Path(seen["stderr"]) == run_dir.parent.resolve() / "kernel.log"  # its stderr in the run's kernel.log
    assert seen["left"] == [] and seen["counts"] == list(range(1, len(seen["counts"]) + 1))  # silent warm-up
    assert kernels_running_in(tmp_path) == []  # both killed after their runs; none started after the last


@pytest.mark.slow
def test_a_kernel_that_died_ahead_is_replaced_and_another_setup_discards_it(tmp_path):
    notebook, experiments, logs = probe_notebook(tmp_path), tmp_path / "experiments", tmp_path / "logs"
    execute_run(run_spec(0), notebook, experiments, logs, prestart=True, prepare_next=True)
    assert wait_for(lambda: len(ahead_pids(experiments)) == 1)
    os.killpg(ahead_pids(experiments)[0], signal.SIGKILL)
    rec = execute_run(run_spec(1), notebook, experiments, logs, prestart=True, prepare_next=True)
    assert rec.status == COMPLETED and probed(rec, logs)["preloaded"] is False  # a kernel of its own instead
    assert wait_for(lambda: len(ahead_pids(experiments)) == 1)
    other = KernelSetup.of(experiments, FAULTS_NOTEBOOK, verbose=False)  # other imports: not that kernel
    assert take_next_kernel(other) is None
    assert wait_for(lambda: kernels_running_in(tmp_path) == [], timeout=10)
    assert kernels._ahead is None


def probe_grid(work: Path, body: str) -> Path:
    path = work / "grid.yaml"
    path.write_text(f"notebook: {probe_notebook(work)}\n{body}", encoding="utf-8")
    return path


def sweep(work: Path, *extra: str, timeout: float = 600, env: dict | None = None):
    return subprocess.run([*SWEEP, "grid.yaml", *extra], cwd=work, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.slow
def test_no_kernel_outlives_a_sweep_with_failed_runs_and_without_prestart_none_is_started(tmp_path):
    probe_grid(tmp_path, "runs: [{score: 0.1}, {action: raise}, {action: kill}, {score: 0.4}]\n")
    done = sweep(tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert kernels_running_in(tmp_path) == []
    records = sorted(read_all(tmp_path / "logs").records, key=lambda r: r.started_at)
    assert [r.status for r in records] == [COMPLETED, FAILED, FAILED, COMPLETED]
    assert [probed(r, tmp_path / "logs")["preloaded"] for r in records] == [False, True, True, True]
    assert len({probed(r, tmp_path / "logs")["pid"] for r in records}) == 4  # a fresh kernel per run

    again = sweep(tmp_path, "--no-prestart", "--retry-failed")
    assert again.returncode == 1 and kernels_running_in(tmp_path) == []
    retried = [r for r in read_all(tmp_path / "logs").records if r not in records]
    assert len(retried) == 2 and [probed(r, tmp_path / "logs")["preloaded"] for r in retried] == [False, False]


@pytest.mark.slow
def test_ctrl_c_kills_the_kernel_started_ahead(tmp_path):
    probe_grid(tmp_path, "runs: [{score: 0.1}, {action: sleep, seconds: 150}, {score: 0.3}]\n")
    proc = subprocess.Popen([*SWEEP, "grid.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    experiments = tmp_path / "experiments"
    # run 2 in its kernel, sleeping (not computing, so the test does not wait on run 3's kernel, started at
    # nice +10 beside it, to get the cores) until Ctrl-C, with run 3's kernel ready
    seen = set()

    def ready() -> bool:  # what was seen is kept for the failure message
        state = (len(read_all(tmp_path / "logs").records), len(ahead_pids(experiments)),
                 len(kernels_running_in(experiments)))
        seen.add(state)
        return state[0] == 1 and state[1] == 1

    assert wait_for(ready, timeout=240), f"(records, kernels ahead, kernels) seen: {sorted(seen)}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert kernels_running_in(tmp_path) == []
    assert sorted(r.status for r in read_all(tmp_path / "logs").records) == [COMPLETED, INTERRUPTED]


@pytest.mark.slow
def test_a_search_that_stops_on_its_budget_leaves_no_kernel(tmp_path):
    probe_grid(tmp_path, "search: {sampler: random, n_runs: 20, seed: 3, budget: 8}\n"
                         "fixed: {action: sleep, seconds: 2}\n"
                         "grid: {score: {low: 0.0, high: 1.0}}\n")
    done = sweep(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no more runs start" in done.stderr  # the budget, not n_runs, ended it
    records = read_all(tmp_path / "logs").records
    assert 1 <= len(records) < 20
    assert kernels_running_in(tmp_path) == []


@pytest.mark.slow
def test_each_of_two_workers_keeps_its_next_kernel_ready(tmp_path):
    probe_grid(tmp_path, "fixed: {action: sleep, seconds: 3}\ngrid: {score: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}\n")
    done = sweep(tmp_path, "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert kernels_running_in(tmp_path) == []  # the kernels started ahead that no run took died with the workers
    records = read_all(tmp_path / "logs").records
    seen = [probed(r, tmp_path / "logs") for r in records]
    assert len(records) == 6 and len({s["pid"] for s in seen}) == 6
    assert sum(s["preloaded"] for s in seen) >= 3  # every run after a worker's first (both workers' firsts: cold)
