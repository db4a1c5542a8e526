"""Hostile inputs (issue 19), the labelling page and one writer at a time: bounded bodies, timeouts,
400 for bad types; concurrent answers, imports and "done" presses.

Every case goes through the real `galot` command (in this process, or in a fresh process with a
memory limit: tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input;
`galot verify` reports problems with 1) and an unchanged run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from galot_core import label_files, labels
from galot_core.errors import GalotError
from galot_core.runfolder import RunFolder
from tests.hostile_util import CLASSES, human_run, snapshot


# ----- 4b. the labelling page: bounded bodies, timeouts, 400 for bad types ------------------------
@pytest.fixture
def page(tmp_path):
    import threading

    from galot.flows.labelpage import LabelServer

    run = human_run(tmp_path)
    server = LabelServer(run, timeout_s=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, run
    server.shutdown()


def _post(server, path: str, body: bytes, length: str | None = "auto", timeout: float = 5) -> tuple[int, dict]:
    """A raw HTTP POST, with any Content-Length header (or none)."""
    import socket

    headers = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"X-Galot-Token: {server.token}",
               "Content-Type: application/json", "Connection: close"]
    if length is not None:
        headers.append(f"Content-Length: {len(body) if length == 'auto' else length}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"{}")


BAD_BODIES = {
    "index [7]": b'{"cycle": 1, "index": [7], "answer": "cat"}',
    "index {}": b'{"cycle": 1, "index": {}, "answer": "cat"}',
    "index null": b'{"cycle": 1, "index": null, "answer": "cat"}',
    "index 1e999": b'{"cycle": 1, "index": 1e999, "answer": "cat"}',
    "index 7.9": b'{"cycle": 1, "index": 0.9, "answer": "cat"}',
    "index true": b'{"cycle": 1, "index": true, "answer": "cat"}',
    "index string": b'{"cycle": 1, "index": "0", "answer": "cat"}',
    "index NaN": b'{"cycle": 1, "index": NaN, "answer": "cat"}',
    "cycle list": b'{"cycle": [1], "index": 0, "answer": "cat"}',
    "answer list": b'{"cycle": 1, "index": 0, "answer": ["cat"]}',
    "deep nesting": b"[" * 60_000 + b"]" * 5_000,
    "a list": b"[1, 2]",
    "not JSON": b"\xff\xfe",
    "huge integer": b'{"cycle": 1, "index": ' + b"9" * 5000 + b', "answer": "cat"}',
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_page_answers_bad_types_with_400_and_no_traceback(page, capfd, case):
    server, run = page
    before = snapshot(run)
    status, body = _post(server, "/api/label", BAD_BODIES[case])
    assert status == 400 and "\n" not in body["error"] and len(body["error"]) < 300, (status, body)
    assert "Traceback" not in capfd.readouterr().err
    assert snapshot(run) == before
    status, body = _post(server, "/api/label", b'{"cycle": 1, "index": 0, "answer": "cat"}')
    assert status == 200 and body["labelled"] == 1  # the server still works


@pytest.mark.parametrize("length", ["-1", "99999999999", "65537", "abc", "1e3", " -0"])
def test_page_body_cap_holds_for_any_content_length(page, capfd, length):
    server, run = page
    before = snapshot(run)
    status, body = _post(server, "/api/label", b'{"cycle": 1, "index": 0, "answer": "cat"}', length=length)
    assert status == 400 and "Content-Length" in body["error"]
    assert "Traceback" not in capfd.readouterr().err and snapshot(run) == before


def test_page_closes_idle_and_half_open_connections(page):
    """100 connections that send nothing (or half a request) do not hold 100 threads: each is closed."""
    import socket
    import threading
    import time

    server, _ = page
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    socks[0].sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n")                 # headers never end
    socks[1].sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Galot-Token: %s\r\n"
                     b"Content-Length: 100\r\n\r\n{" % (server.port, server.token.encode()))  # body never ends
    deadline = time.monotonic() + 10
    for s in socks:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        while s.recv(1024):  # a socket.timeout here: the server kept the connection open
            pass
        s.close()
    time.sleep(0.5)
    handlers = [t for t in threading.enumerate() if "process_request" in t.name]
    assert len(handlers) < 5, len(handlers)


# ----- 6. one writer at a time -------------------------------------------------------------------
def _give_all(run: str, indices: list[int], barrier) -> None:
    """One process answering: the page's way (labels.give, one per call) for even indices, import for odd."""
    batch = labels.read_batch(run, 1)
    barrier.wait()
    for i in indices:
        if i % 2:
            label_files.import_rows(run, [(f"row {i}", f"img{i}.png", CLASSES[i % 2])], 1)
        else:
            labels.give(run, batch, i, CLASSES[i % 2])


def test_concurrent_page_and_import_never_lose_an_acknowledged_answer(tmp_path):
    import multiprocessing as mp

    n, procs = 24, 6
    run = human_run(tmp_path, [f"img{i}.png" for i in range(n)], pool_size=n)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    workers = [ctx.Process(target=_give_all, args=(str(run), list(range(k, n, procs)), barrier))
               for k in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    answers = labels.read_answers(run, 1)
    assert sorted(a["index"] for a in answers) == list(range(n))  # every acknowledged answer is there


def _press_done(run: str, command: list[str], barrier, out) -> None:
    from galot.flows.labelling import Continuation

    cont = Continuation(Path(run), command)
    barrier.wait()
    out.put(cont(1))
    if cont.proc is not None:
        cont.proc.wait()


def test_concurrent_done_requests_start_at_most_one_run(tmp_path):
    """Four "done" at once, from four processes (pages): one run starts, the others say it is running."""
    import multiprocessing as mp
    import sys

    run = human_run(tmp_path)
    marker = tmp_path / "started"
    # A stand-in for `galot run` that adopts the lock the page hands it, as galot run does.
    script = ("import sys, time; from pathlib import Path; from galot_core.runfolder import RunFolder\n"
              f"with RunFolder({str(run)!r}).run_lock():\n"
              f"    open({str(marker)!r}, 'a').write('x\\n'); time.sleep(3)\n")
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_press_done, args=(str(run), [sys.executable, "-c", script], barrier, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    messages = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert marker.read_text() == "x\n", messages
    assert sum("continuing the experiment" in m for m in messages) == 1, messages
    assert sum("already running" in m for m in messages) == 3, messages


def test_a_second_run_on_the_same_folder_is_one_line(tmp_path):
    import subprocess
    import sys

    run = human_run(tmp_path)
    fd = RunFolder(run).try_run_lock()
    assert fd is not None
    try:
        with pytest.raises(GalotError, match="another `galot run`.*is already running this experiment"):
            with RunFolder(run).run_lock():
                pass
        # The descriptor handed down (the labelling page's way) is adopted, not refused.
        code = ("import os; from galot_core.runfolder import RunFolder, RUN_LOCK_ENV\n"
                f"with RunFolder({str(run)!r}).run_lock(): print('adopted', RUN_LOCK_ENV in os.environ)\n")
        p = subprocess.run([sys.executable, "-c", code], pass_fds=(fd,), capture_output=True, text=True, timeout=120,
                           env={**os.environ, "GALOT_RUN_LOCK_FD": str(fd)})
        assert p.stdout.strip() == "adopted False", p.stderr
    finally:
        os.close(fd)
    assert RunFolder(run).try_run_lock() is not None  # released with the last descriptor


def test_page_reports_a_damaged_run_folder_in_one_line(page, capfd):
    import urllib.error
    import urllib.request

    server, run = page
    (run / "pool.json").write_text(json.dumps({"pool_size": 10, "labelled": [-1], "labels": [0], "cycles": [1]}))
    try:
        urllib.request.urlopen(server.url + "api/state", timeout=5)
        raise AssertionError("expected an error status")
    except urllib.error.HTTPError as e:
        assert e.code == 409 and "pool.json: 'labelled'[0] must be a pool index" in json.loads(e.read())["error"]
    status, body = _post(server, "/api/label", b'{"cycle": 1, "index": 0, "answer": "cat"}')
    assert status == 409 and "pool.json" in body["error"]
    assert "Traceback" not in capfd.readouterr().err
