"""Hostile tracking URIs (issue 30): an unsupported MLFLOW_TRACKING_URI scheme, a server that refuses
or never answers, a SQLite database in a missing folder — each one line with exit 2, found in
seconds before the cycle's work starts (CLI and flow functions), nothing written."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from galot.flows.cli import main
from galot.flows.galot import galot_cycle, galot_run, galot_transfer
from galot.tasks.tracking_check import TIMEOUT_ENV, check_tracking
from galot_core.config import config_from_dict
from galot_core.errors import GalotError


def _cfg(tmp_path: Path, mlflow: bool = True):
    return config_from_dict({"experiment": {"runs_dir": str(tmp_path / "runs"), "name": "t", "mode": "al"},
                             "tracking": {"mlflow": mlflow}})


def _refused(cfg, *fragments: str) -> str:
    with pytest.raises(GalotError) as info:
        check_tracking(cfg)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    for fragment in ("MLFLOW_TRACKING_URI", *fragments):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["ftp://host/x", "s3://bucket/mlruns", "javascript:alert(1)", "gopher://x"])
def test_unsupported_scheme_is_one_line(tmp_path, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _refused(_cfg(tmp_path), "which MLflow cannot track to", "tracking.mlflow: false")


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/mlflow.db", "file://{tmp}/mlruns", "{tmp}/mlruns",
                                 "sqlite:///:memory:"])
def test_supported_local_stores_pass(tmp_path, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    check_tracking(_cfg(tmp_path))


def test_sqlite_database_in_a_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    _refused(_cfg(tmp_path), "nowhere", "create the folder")


def test_nothing_is_checked_without_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://host/x")
    check_tracking(_cfg(tmp_path, mlflow=False))


def test_refused_connection_is_found_in_a_second(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:s3cret@127.0.0.1:{_unused_port()}")
    start = time.monotonic()
    message = _refused(_cfg(tmp_path), "does not answer", "start it")
    assert time.monotonic() - start < 2 and "s3cret" not in message


def test_server_that_accepts_but_never_answers_times_out(tmp_path, monkeypatch):
    with socket.socket() as listener:  # the kernel completes the handshake; nobody ever replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv(TIMEOUT_ENV, "0.5")
        start = time.monotonic()
        _refused(_cfg(tmp_path), "does not answer", "0.5 s", TIMEOUT_ENV)
        assert time.monotonic() - start < 3


def test_non_routable_address_is_bounded_by_the_timeout(tmp_path, monkeypatch):
    # A blackhole on most networks; where a middlebox answers for every address (as in some sandboxes)
    # its answer is not MLflow's, which is refused too.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.255.255.1:5000")
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    start = time.monotonic()
    _refused(_cfg(tmp_path), "10.255.255.1")
    assert time.monotonic() - start < 3


def test_bad_timeout_setting_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    for bad in ("soon", "0", "-1", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(GalotError, match=TIMEOUT_ENV):
            check_tracking(_cfg(tmp_path))


@pytest.mark.parametrize("status, prefix, ok", [(200, "", True), (401, "", True), (200, "/mlflow", True),
                                                (404, "", False), (502, "", False)])
def test_a_server_is_taken_when_its_health_answers_as_mlflow(tmp_path, monkeypatch, status, prefix, ok):
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (MLflow's server: GET <prefix>/health -> 200 OK)
            seen.append(self.path)
            self.send_response(status if self.path == f"{prefix}/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}{prefix}/")
        if ok:
            check_tracking(_cfg(tmp_path))
        else:
            _refused(_cfg(tmp_path), f"answers HTTP {status}")
        assert seen == [f"{prefix}/health"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("flow", [galot_run, galot_cycle, galot_transfer], ids=lambda f: f.name)
def test_flow_functions_refuse_before_the_run_lock(tmp_path, monkeypatch, flow):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_unused_port()}")
    with pytest.raises(GalotError, match="MLFLOW_TRACKING_URI"):
        flow.fn(_cfg(tmp_path))  # the flow's own body, as a deployment runs it
    assert not (tmp_path / "runs").exists()


def test_cli_run_with_unreachable_server_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_unused_port()}")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"runs_dir": str(tmp_path / "runs"), "name": "t", "mode": "al"}}))
    start = time.monotonic()
    code = main(["run", "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert "galot: error: MLFLOW_TRACKING_URI" in err and time.monotonic() - start < 10
    assert not (tmp_path / "runs").exists()


def test_cli_run_with_unsupported_scheme_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://example.org/mlruns")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"runs_dir": str(tmp_path / "runs"), "name": "t", "mode": "al"}}))
    assert main(["run", "--params", str(params)]) == 2
    assert "scheme 'ftp'" in capsys.readouterr().err and not (tmp_path / "runs").exists()
