"""The deployment the README documents: a real Prefect server, `galot serve`, and the
`prefect deployment run galot/cycle` command advancing the experiment by one cycle."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from galot_core.runfolder import RunFolder
from tests.test_flows import write_params

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: healthy(url), 240, "prefect server", proc)
        yield url, dict(env, PREFECT_API_URL=url)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_deployment_run_advances_the_experiment(server, tmp_path, tiny_sd_folder):
    url, env = server
    env = dict(env, OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    params = write_params(tmp_path, tiny_sd_folder, name="served")
    serve = subprocess.Popen([str(BIN / "galot"), "serve", "--params", str(params)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def deployed() -> bool:
            r = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "galot/cycle"], env=env,
                               capture_output=True, text=True)
            return r.returncode == 0

        wait_for(deployed, 180, "the galot/cycle deployment", serve)

        def deployment_run() -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "prefect"), "deployment", "run", "galot/cycle", "--watch",
                                   "--watch-timeout", "400"], env=env, capture_output=True, text=True, timeout=480)

        # Another process advancing the run (a `galot run`) holds its lock: the deployment's flow run,
        # in the serving process, is refused and writes nothing.
        run_dir = tmp_path / "runs/served"
        with RunFolder(run_dir).run_lock():
            refused = deployment_run()
        assert refused.returncode != 0 and "Failed" in refused.stdout, refused.stdout[-2000:]
        flow_run = re.search(r"UUID: ([0-9a-f-]{36})", refused.stdout).group(1)
        logs = subprocess.run([str(BIN / "prefect"), "flow-run", "logs", flow_run], env=env, capture_output=True,
                              text=True, timeout=120).stdout
        assert "is already running this experiment" in logs, logs[-2000:]
        assert list(run_dir.iterdir()) == []
        metrics = run_dir / "metrics.json"
        for cycle in (1, 2):
            r = deployment_run()
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            assert "Completed" in r.stdout
            rows = json.loads(metrics.read_text())
            assert [row["cycle"] for row in rows] == list(range(1, cycle + 1))  # one more cycle per run
        assert rows[-1]["labelled"] == 20 and rows[-1]["generated"] == 20
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)


def test_serve_without_a_server_is_one_clear_line(tmp_path, tiny_sd_folder):
    params = write_params(tmp_path, tiny_sd_folder, name="x")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = subprocess.run([str(BIN / "galot"), "serve", "--params", str(params)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "PREFECT_API_URL" in r.stderr
    assert "Traceback" not in r.stderr
