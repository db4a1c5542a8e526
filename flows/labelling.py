"""Waiting for a person's labels inside a Prefect flow run, and resuming it when they are given.

A ``galot`` flow run of a human-oracle experiment reaches the cycle's labels step after
its batch is written to ``runs/<name>/labels/`` (galot_core/labels.py). If answers are
missing it either

- **stops** (``pause_for_labels=False``, the command line's default): the flow raises
  :class:`galot_core.labels.WaitingForLabels`, the CLI prints one line and exits with 3,
  and the next ``galot run`` continues from the run folder; or
- **pauses** (``pause_for_labels=True``: the deployments ``galot serve`` registers, and
  ``galot run --wait-for-labels`` against a Prefect server): Prefect's
  ``pause_flow_run(wait_for_input=LabelsInput)`` keeps the flow run alive in state
  *Paused*. It is resumed by the labelling page's "done" (``galot label serve``), by
  ``galot label import`` of the last answers, or from the Prefect UI's Resume form, whose ``labels`` field
  takes ``{"image": "class name"}`` answers. The paused run's id is written to
  ``labels/paused.json`` so that those tools can find it.

Either way the batch is never selected again, and the answers are read from the run
folder, so labels given any way (page, CSV import, resume input) end up the same.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from prefect.input import RunInput
from pydantic import Field

from galot_core import label_files, labels
from galot_core.errors import GalotError
from galot_core.io import atomic_write_json, read_json
from galot_core.runfolder import RUN_LOCK_ENV, RunFolder



def pause_timeout_s() -> int:
    """How long a paused flow run waits for labels before it stops (resumably, like the CLI): 7 days."""
    return int(os.environ.get("GALOT_PAUSE_TIMEOUT_SECONDS", str(7 * 24 * 3600)))


def pause_poll_s() -> int:
    """How often a paused flow run asks the server whether it was resumed."""
    return int(os.environ.get("GALOT_PAUSE_POLL_SECONDS", "5"))


class LabelsInput(RunInput):
    """What resuming a paused galot flow run may carry: more answers (optional)."""

    labels: dict[str, str] = Field(
        default_factory=dict,
        description='answers not yet given with `galot label`: {"image id or file": "class name or skip"}')


def paused_path(run_dir: str | Path) -> Path:
    return labels.labels_dir(run_dir) / "paused.json"


def read_paused(run_dir: str | Path) -> dict[str, Any] | None:
    path = paused_path(run_dir)
    return read_json(path) if path.exists() else None


def wait_for_labels(run_dir: Path, cycle: int, pause: bool) -> None:
    """Return once every image of the cycle's batch has an answer; pause or raise meanwhile."""
    attempt = 0
    while True:
        batch = labels.read_batch(run_dir, cycle)
        if batch is None:
            return  # simulated oracle or gal mode: nothing to wait for
        pool = labels.read_pool(run_dir)
        left = [] if labels.committed(batch, pool) else labels.missing(batch, labels.read_answers(run_dir, cycle))
        if not left:
            paused_path(run_dir).unlink(missing_ok=True)
            return
        waiting = labels.WaitingForLabels(run_dir, cycle, len(left), len(batch.items))
        if not pause:
            raise waiting
        attempt += 1
        given = _pause(run_dir, cycle, attempt, waiting)
        if given:
            try:
                report = label_files.import_rows(run_dir, [("resume input", k, v) for k, v in given.items()], cycle)
                print(f"galot: {'; '.join(report.lines())}")
            except GalotError as e:  # a typo in the UI form: say so and wait again
                print(f"galot: labels given when resuming were not used: {e}")


def _pause(run_dir: Path, cycle: int, attempt: int, waiting: labels.WaitingForLabels) -> dict[str, str]:
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.settings import PREFECT_API_URL

    ctx = FlowRunContext.get()
    url = PREFECT_API_URL.value()
    if ctx is None or not url:
        raise GalotError("pause_for_labels: pausing for labels needs a Prefect server (set PREFECT_API_URL); "
                         "without one, run without it and label between runs") from waiting
    atomic_write_json(paused_path(run_dir), {"cycle": cycle, "flow_run_id": str(ctx.flow_run.id), "api_url": url})
    print(f"galot: cycle {cycle} waits for {waiting.missing} labels: flow run paused; label with `galot label serve {run_dir}` "
          "(its done button resumes it) or resume it in the Prefect UI")
    try:
        given = pause_flow_run(wait_for_input=LabelsInput, timeout=pause_timeout_s(), poll_interval=pause_poll_s(),
                               key=f"labels-cycle-{cycle}-{attempt}")
    except FlowPauseTimeout:
        paused_path(run_dir).unlink(missing_ok=True)
        raise waiting from None
    return dict(given.labels) if given is not None else {}


def resume_paused(run_dir: str | Path, cycle: int) -> str | None:
    """Resume the flow run paused for ``cycle``'s labels; its id, or None when none is paused."""
    rec = read_paused(run_dir)
    if not rec or rec.get("cycle") != cycle:
        return None
    from uuid import UUID

    import httpx
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    answers = {a["image"]: a["answer"] for a in labels.read_answers(run_dir, cycle)}
    try:
        with temporary_settings({PREFECT_API_URL: rec["api_url"]}):
            resume_flow_run(UUID(rec["flow_run_id"]), run_input={"labels": answers})
    except (NotPausedError, ObjectNotFound, FlowPauseTimeout) as e:
        # Not paused any more (timed out, cancelled, deleted): forget it; the caller continues another way.
        print(f"galot: flow run {rec['flow_run_id']} is no longer paused ({e.__class__.__name__})")
        paused_path(run_dir).unlink(missing_ok=True)
        return None
    except (RuntimeError, httpx.HTTPError, OSError) as e:
        print(f"galot: could not resume flow run {rec['flow_run_id']} at {rec['api_url']} "
              f"({e.__class__.__name__}: {e})")
        return None
    return rec["flow_run_id"]


class Continuation:
    """What the labelling page's "done" does: resume the paused flow run, or continue in a ``galot run``.

    The ``galot run`` process goes on with the experiment (the cycle's TextOpt, generation,
    training, then the next cycles) until it finishes or stops at the next batch, which
    the page then shows. Its output goes to this process's terminal.
    """

    def __init__(self, run_dir: Path, command: list[str]) -> None:
        self.run_dir, self.command = run_dir, command
        self.proc = None
        self.last: str | None = None
        self._starting = threading.Lock()  # concurrent "done" requests of this page, one at a time

    def __call__(self, cycle: int) -> str:
        with self._starting:
            flow_run = resume_paused(self.run_dir, cycle)
            if flow_run:
                return f"cycle {cycle}: labels saved; resumed the paused Prefect flow run {flow_run}"
            return self._start(cycle)

    def _start(self, cycle: int) -> str:
        """Start ``galot run`` holding the run folder's lock, taken here and handed to it.

        Taking the lock before the process starts (and passing its descriptor down, see
        RunFolder.run_lock) is what makes "done" pressed on two pages, or twice, start at
        most one run: the second finds the lock held by the first run, from its first instant.
        """
        import subprocess

        fd = RunFolder(self.run_dir).try_run_lock()
        if fd is None:
            pid = f" (pid {self.proc.pid})" if self.proc is not None and self.proc.poll() is None else ""
            return f"cycle {cycle}: labels saved; the experiment is already running{pid}"
        try:
            self.proc = subprocess.Popen(self.command, pass_fds=(fd,), env={**os.environ, RUN_LOCK_ENV: str(fd)})
        finally:
            os.close(fd)  # the child's inherited copy keeps the lock for as long as it runs
        return f"cycle {cycle}: labels saved; continuing the experiment (galot run, pid {self.proc.pid})…"

    def activity(self) -> str | None:
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return f"the experiment is running (galot run, pid {self.proc.pid}); the next batch appears here"
        if code == labels.EXIT_WAITING:
            return None  # stopped at the next batch, which the page shows
        if code == 0:
            return "the experiment is complete: every cycle is done (see the terminal for the accuracy table)"
        return f"galot run stopped with exit status {code}; see the terminal, fix, and press done again"

    def wait(self) -> int | None:
        return self.proc.wait() if self.proc is not None else None
