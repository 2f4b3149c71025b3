"""The sweep lock (`runner.core.lock`): one sweep at a time on a logs folder; a sweep that holds it is refused
in `tests/test_core_loop.py`."""

import os
import threading

from runner.core.lock import sweep_lock
from runner.errors import ConfigError


def test_sweep_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with sweep_lock(tmp_path / "logs"):
        assert (tmp_path / "logs" / ".sweep.lock").read_text() == str(os.getpid())
        outcome = []

        def second():  # flock locks belong to open files: another open in this process is refused too
            try:
                with sweep_lock(tmp_path / "logs"):
                    outcome.append("got it")
            except ConfigError as exc:
                outcome.append(str(exc))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
        assert outcome[0].startswith(f"another sweep is running (pid {os.getpid()}) on {tmp_path / 'logs'}")
    with sweep_lock(tmp_path / "logs"):  # released with the first
        pass
