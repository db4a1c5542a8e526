"""The Prefect way of waiting for labels: a flow run of a human-oracle experiment pauses with
Prefect's pause-with-input, and is resumed with labels (as the UI's Resume form does) or by
``resume_paused`` (what `galot label serve`'s done and `galot label import` call).

Runs in-process against a temporary Prefect API server (tests/conftest.py::prefect_api).
"""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from galot_core import labels
from galot_core.params_file import load_config
from tests.test_labels import human_params

pytestmark = pytest.mark.usefixtures("one_thread")


def flow_state(flow_run_id: str) -> str:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).state.type.value


def wait_until(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_paused_flow_run_resumes_with_labels(prefect_api, tmp_path, digit_folder, monkeypatch):
    from prefect.flow_runs import resume_flow_run

    from galot.flows.galot import galot_cycle
    from galot.flows.labelling import read_paused, resume_paused

    monkeypatch.setenv("GALOT_PAUSE_POLL_SECONDS", "1")
    folder, names, truth = digit_folder
    params = human_params(tmp_path, folder, names, "unused", mode="al", name="paused", cycles=1)
    run = tmp_path / "runs" / "paused"
    out: dict = {}

    def target():
        try:
            out["metrics"] = galot_cycle(load_config(params), pause_for_labels=True)
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_until(lambda: read_paused(run) is not None or "error" in out, 120, "the flow run to pause")
    assert "error" not in out, out.get("error")
    rec = read_paused(run)
    wait_until(lambda: flow_state(rec["flow_run_id"]) == "PAUSED", 60, "state Paused")
    assert rec["cycle"] == 1 and not (run / "cycles").exists()

    # Resumed from "the UI" with only some labels: they are kept, and the run pauses again.
    batch = labels.read_batch(run, 1)
    first = {it.image: truth[it.image] for it in batch.items[:4]}
    resume_flow_run(rec["flow_run_id"], run_input={"labels": first})
    wait_until(lambda: len(labels.read_answers(run, 1)) == 4, 60, "the labels given on resume")
    wait_until(lambda: flow_state(rec["flow_run_id"]) == "PAUSED", 60, "the second pause")
    assert thread.is_alive()

    # The rest from "the labelling page", then its done resumes the flow run, which finishes the cycle.
    for it in batch.items[4:]:
        labels.give(run, batch, it.index, truth[it.image])
    assert resume_paused(run, 1) == rec["flow_run_id"]
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert out["metrics"]["cycle"] == 1 and out["metrics"]["labelled"] == 6
    assert flow_state(rec["flow_run_id"]) == "COMPLETED" and read_paused(run) is None
    pool = yaml.safe_load((run / "pool.json").read_text())
    assert list(zip(pool["labelled"], pool["labels"])) == [(it.index, names.index(truth[it.image]))
                                                           for it in batch.items]
