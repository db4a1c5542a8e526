"""MLflow mirroring of an experiment: one MLflow run per run folder, per-cycle metrics by step.

The run folder stays the source of truth; MLflow is a view of it for comparing runs.
Logging is a catch-up: every completed cycle not yet logged to the current tracking URI
is logged (metrics with ``step = cycle``, the cycle's sample grid, the newest classifier),
so a cycle completed while the tracking server was down is logged on the next call.
Which MLflow run belongs to a folder, and which cycles it has, is kept in the folder's
``tracking.json``, keyed by tracking URI.

Only ``MlflowClient`` with explicit run ids is used: MLflow's fluent API keeps the
active run in global state and is not thread-safe, and tasks may run concurrently.

The classifier is logged as a safetensors file (``model/classifier.safetensors``) with
its architecture in the file's metadata; load it with
``galot_core.checkpoint.load_classifier`` — nothing is unpickled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from galot_core.config import config_from_dict
from galot_core.io import atomic_write_json, read_json

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def redacted(uri: str) -> str:
    """The URI without credentials (``https://user:token@host`` → ``https://***@host``), for logs and records."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1]))
    return uri


def _get_or_create_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    # A local SQLite store keeps artifacts beside the database (MLflow's default would be
    # ./mlruns in whatever folder the first run happened to start in).
    uri = tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        location = (db.parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def _flatten(cfg: dict[str, Any]) -> dict[str, str]:
    return {f"{section}.{key}": str(value) for section, values in cfg.items() for key, value in values.items()}


def cycle_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numbers MLflow charts per cycle, from one row of the run's metrics.json."""
    out = {k: float(row[k]) for k in ("test_accuracy", "labelled", "generated", "epsilon") if row.get(k) is not None}
    if row.get("judged_accuracy") is not None:
        out["judged_accuracy"] = float(row["judged_accuracy"])
    out.update({f"seconds_{k}": float(v) for k, v in (row.get("seconds") or {}).items()})
    out.update({f"unet_calls_{k}": float(v) for k, v in (row.get("unet_calls") or {}).items()})
    return out


def _client_and_run(cfg: dict[str, Any], run_dir: Path, state: dict[str, Any]):
    from mlflow import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    run_id = state.get("run_id")
    if run_id:
        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                return client, run_id
        except Exception:  # the run was deleted or the database replaced: start a new run
            pass
    exp_id = _get_or_create_experiment(client, cfg["tracking"]["experiment"])
    run_name = cfg["experiment"]["name"]
    if run_dir.parent.name.endswith("-baselines"):  # e.g. default-baselines/MarginSampling
        run_name = f"{run_dir.parent.name}/{run_name}"
    run = client.create_run(exp_id, run_name=run_name,
                            tags={"galot.run_dir": str(run_dir.resolve()), "galot.mode": cfg["experiment"]["mode"]})
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(cfg).items())]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    state.clear()
    state.update(run_id=run.info.run_id, logged_cycles=[])
    return client, run.info.run_id


def log_experiment(cfg: dict[str, Any]) -> dict[str, Any]:
    """Log every completed, not yet logged cycle of the experiment; returns the MLflow run id."""
    from mlflow.entities import Metric

    c = config_from_dict(cfg, source="flow parameters")
    run_dir = c.run_dir
    path = run_dir / "tracking.json"
    everything = read_json(path) if path.exists() else {}
    uri = tracking_uri()
    state = everything.setdefault(redacted(uri), {})  # never write a token into the run folder
    client, run_id = _client_and_run(cfg, run_dir, state)
    rows = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else []
    new = [r for r in rows if r["cycle"] not in state["logged_cycles"]]
    now = int(time.time() * 1000)
    for row in new:
        metrics = [Metric(k, v, now, row["cycle"]) for k, v in cycle_metrics(row).items()]
        client.log_batch(run_id, metrics=metrics)
        grid = run_dir / "cycles" / f"cycle_{row['cycle']:03d}" / "grid.png"
        if grid.exists():
            client.log_artifact(run_id, str(grid), artifact_path=f"grids/cycle_{row['cycle']:03d}")
        state["logged_cycles"].append(row["cycle"])
    if new:
        model = run_dir / "classifier.safetensors"
        if model.exists():
            client.log_artifact(run_id, str(model), artifact_path="model")
        for name in ("metrics.json", "accuracy.csv", "config.json"):
            if (run_dir / name).exists():
                client.log_artifact(run_id, str(run_dir / name))
    atomic_write_json(path, everything)
    return {"run_id": run_id, "tracking_uri": redacted(uri), "logged": [r["cycle"] for r in new]}


def log_transfer(cfg: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A transfer result as its own MLflow run, tagged with the experiment it reused."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=tracking_uri())
    exp_id = _get_or_create_experiment(client, cfg["tracking"]["experiment"])
    run = client.create_run(exp_id, run_name=f"{cfg['experiment']['name']}-transfer-{metrics['arch']}",
                            tags={"galot.transfer_of": cfg["experiment"]["name"], "galot.arch": metrics["arch"]})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, float(metrics[k]), now, 0) for k in ("test_accuracy", "real", "generated",
                                                                             "seconds", "unet_calls")],
                     params=[Param("arch", metrics["arch"])] + [Param(f"transfer.{k}", str(v))
                                                                for k, v in metrics["settings"]["transfer"].items()])
    if metrics.get("model") and Path(metrics["model"]).exists():
        client.log_artifact(run.info.run_id, metrics["model"], artifact_path="model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@task(name="track_experiment", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def track_experiment(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """MLflow catch-up for the experiment (no-op with ``tracking.mlflow: false``)."""
    return log_experiment(cfg) if cfg["tracking"]["mlflow"] else None


@task(name="track_transfer", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def track_transfer(cfg: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    return log_transfer(cfg, metrics) if cfg["tracking"]["mlflow"] else None
