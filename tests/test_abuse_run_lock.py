"""One lock for every way a cycle starts (issue 30): the CLI and the flow function refuse each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from galot_core.errors import GalotError
from galot_core.runfolder import RunFolder
from tests.hostile_util import assert_one_line_error, cli


# ----- 6b. one lock for every way a cycle starts (issue 30) ---------------------------------------
def _long_al_params(tmp_path: Path) -> Path:
    """A simulated-oracle AL run whose first cycle trains for minutes: the first holder is still inside it."""
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "experiment": {"name": "raced", "runs_dir": str(tmp_path / "runs"), "mode": "al", "cycles": 2, "judge": None},
        "al": {"budget_per_cycle": 10}, "tracking": {"mlflow": False},
        "train": {"epochs": 1, "min_steps": 20_000, "device": "cpu"}}))
    return params


_FLOW = ("import sys; from galot.flows.galot import galot_run; from galot_core.params_file import load_config\n"
         "galot_run(load_config(sys.argv[1]))\n")


def _start_first(params: Path, run: Path, first: str, api: str):
    """The first process advancing the run: the CLI or the flow function; returned once it holds the run
    (config.json is written under the lock, by either)."""
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "galot.flows.cli", "run", "--params", str(params)] if first == "cli" \
        else [sys.executable, "-c", _FLOW, str(params)]
    env = {**os.environ, "PREFECT_API_URL": api, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "config.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the first process never started the run"
        time.sleep(0.5)
    return proc


@pytest.mark.parametrize("first", ["cli", "flow"])
def test_cli_and_flow_function_refuse_each_other(prefect_api, tmp_path, capsys, first):
    """`galot run` and the flow function `galot_run(...)` (what a deployment runs) on one run folder:
    whichever comes second is refused in one line, and the first one's run is untouched."""
    import signal

    from galot.flows.galot import galot_run
    from galot_core.params_file import load_config

    params = _long_al_params(tmp_path)
    run = tmp_path / "runs" / "raced"
    proc = _start_first(params, run, first, prefect_api)
    try:
        if first == "flow":
            r = cli(capsys, "run", "--params", str(params))
            assert_one_line_error(r, str(run), "is already running this experiment")
        else:
            with pytest.raises(GalotError, match="is already running this experiment") as e:
                galot_run(load_config(params))
            assert "\n" not in str(e.value)
        assert not (run / "metrics.json").exists() and proc.poll() is None  # the first one goes on
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert RunFolder(run).try_run_lock() is not None  # the kernel released the dead holder's lock


def test_run_lock_is_reentrant_in_one_process_and_shared_by_its_spellings(tmp_path):
    """The CLI holds the lock and then calls the flow, which takes it again, as does each cycle:
    nested holders in one process share it; it is released when the outermost one leaves."""
    run = tmp_path / "r"
    run.mkdir()
    with RunFolder(run).run_lock():
        with RunFolder(tmp_path / "." / "r").run_lock():
            assert RunFolder(run).try_run_lock() is None
        assert RunFolder(run).try_run_lock() is None  # still held by the outer one
    fd = RunFolder(run).try_run_lock()
    assert fd is not None
    os.close(fd)
