"""Helpers for the hostile-input tests (issue 19): the real `galot` command in a subprocess with a
memory limit and a deadline, the one-line check, and a small human-oracle run folder written by hand."""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from galot_core.config import config_from_dict

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog"]

# One worker process runs every case that needs a memory limit or a deadline: importing torch
# takes tens of seconds on a loaded machine, once is enough. It imports everything first, then
# sets a hard address-space limit; each case lowers the soft limit to what is mapped now plus
# its budget, so a hostile input that makes galot allocate more fails (MemoryError) instead of
# passing. A case that does not answer within its deadline (a read that never ends) kills it.
_WORKER = """
import contextlib, io, json, os, resource, sys, time, traceback
import galot.flows.cli, galot_core.export, galot_core.labels, galot_core.verify, galot_core.prepare, galot_core.data
import galot_core.data.folder, galot_core.checkpoint, PIL.PngImagePlugin
def vmsize():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) << 10
resource.setrlimit(resource.RLIMIT_AS, (vmsize() + (2 << 30), vmsize() + (2 << 30)))
answer = sys.stdout
answer.write("ready\\n")
answer.flush()
for line in sys.stdin:
    req = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (min(vmsize() + (req["budget_mb"] << 20), hard), hard))
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = galot.flows.cli.main(req["args"])
    except BaseException:
        code = -1
        err.write(traceback.format_exc())
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    answer.write(json.dumps({"code": code, "out": out.getvalue()[-100000:], "err": err.getvalue()[-100000:],
                             "seconds": time.monotonic() - start}) + "\\n")
    answer.flush()
"""


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float


class Sandbox:
    """The worker process above; ``run`` sends one command and waits for its result."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        env.pop("PREFECT_API_URL", None)
        proc = subprocess.Popen([sys.executable, "-c", _WORKER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdout and proc.stdout.readline() == "ready\n", "the worker did not start"
        return proc

    def run(self, *args: str, budget_mb: int = 300, timeout: float = 60) -> Result:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"args": list(args), "budget_mb": budget_mb}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 5)
        if not ready:
            self.close()
            raise AssertionError(f"galot {' '.join(args)[:200]}: no answer within its deadline (a read that never ends?)")
        line = self.proc.stdout.readline()
        assert line, "the worker died (killed for memory?)"
        r = Result(**json.loads(line))
        assert r.seconds < timeout, f"took {r.seconds:.0f} s"
        return r

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


SANDBOX = Sandbox()
atexit.register(SANDBOX.close)


def galot(*args: str, budget_mb: int = 300, timeout: float = 60) -> Result:
    """``galot ARGS`` with at most ``budget_mb`` MiB more memory than its imports, answering within ``timeout`` s."""
    return SANDBOX.run(*args, budget_mb=budget_mb, timeout=timeout)


def cli(capsys, *args: str) -> Result:
    """``galot ARGS`` in this process (fast), for cases where no memory or time bound is at stake."""
    from galot.flows.cli import main

    capsys.readouterr()
    start = time.monotonic()
    code = main(list(args))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err, time.monotonic() - start)


def assert_one_line_error(r: Result, *expected: str) -> str:
    """Exit 2, stderr exactly one line `galot: error: ...` holding every ``expected`` text, no traceback."""
    assert "Traceback" not in r.err, r.err[-2000:]
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.code == 2, (r.code, r.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("galot: error: "), r.err[-2000:]
    assert len(lines[0]) < 400, lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the run folder must come out of a refusal unchanged)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def human_run(tmp: Path, images: list[str] | None = None, pool_size: int = 10) -> Path:
    """A run folder of a human-oracle experiment waiting for the labels of cycle 1 (no dataset needed)."""
    images = images or [f"img{i}.png" for i in range(4)]
    run = tmp / "runs" / "r"
    cfg = config_from_dict({"experiment": {"name": "r", "runs_dir": str(tmp / "runs"), "oracle": "human",
                                           "mode": "al", "cycles": 2},
                            "data": {"dataset": "folder", "classes": CLASSES, "root": str(tmp / "imgs")}})
    (run / "labels").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "pool.json").write_text(json.dumps({"pool_size": pool_size, "labelled": [], "labels": [], "cycles": [],
                                               "removed": []}))
    items = [{"index": i, "image": name, "source": None, "thumbnail": f"labels/cycle_001/{i:06d}.png"}
             for i, name in enumerate(images)]
    (run / "labels" / "cycle_001.json").write_text(json.dumps({"cycle": 1, "classes": CLASSES, "items": items}))
    return run
