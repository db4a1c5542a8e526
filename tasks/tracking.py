"""MLflow mirroring of an experiment: one MLflow run per run folder, per-cycle metrics by step.

The run folder stays the source of truth; MLflow is a view of it for comparing runs.
Logging is a catch-up: every completed cycle not yet logged to the current tracking URI
is logged (metrics with ``step = cycle``, the cycle's sample grid, the newest classifier),
so a cycle completed while the tracking server was down is logged on the next call.
Which MLflow run belongs to a folder, and which cycles it has, is kept in the folder's
``tracking.json``, keyed by tracking URI.

Only ``MlflowClient`` with explicit run ids is used: MLflow's fluent API keeps the
active run in global state and is not thread-safe, and tasks may run concurrently.

The classifier is logged as a real MLflow model at ``model/`` — ``mlflow.pytorch.load_model(
"runs:/<id>/model")`` and ``mlflow models predict`` use it — in MLflow's pickle-free ``pt2``
format (torch.export), preprocessing included: uint8 images (N, C, S, S) in, class
probabilities out, with a signature, an input example and the class names and image
format in its metadata (galot_core/predict.py). The safetensors file stays beside it
(``model/classifier.safetensors``, loaded by ``galot_core.checkpoint.load_classifier``).
Exporting takes seconds, so it happens once when a flow ends, not every cycle.

Run status: a flow that ends marks its MLflow run FINISHED (also when it stops to wait for
labels), FAILED on an error, KILLED on Ctrl-C; continuing the experiment reopens the same
run (RUNNING) and logs on into it.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from galot_core.config import Config
from galot_core.errors import GalotError
from galot_core.io import atomic_write_json, read_json
from galot_core.runfolder import RunFolder

DEFAULT_URI = "sqlite:///mlflow.db"
MODEL_PATH = "model"
_log = logging.getLogger(__name__)
# Set while a top-level flow owns the MLflow run: the galot-run flow's galot subflows leave it open.
_owner: contextvars.ContextVar[bool] = contextvars.ContextVar("galot_mlflow_owner", default=False)


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


def _flatten(cfg: Config) -> dict[str, str]:
    return {f"{section}.{key}": str(value) for section, values in cfg.to_dict().items()
            for key, value in values.items()}


def cycle_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numbers MLflow charts per cycle, from one row of the run's metrics.json."""
    out = {k: float(row[k]) for k in ("test_accuracy", "labelled", "generated", "epsilon") if row.get(k) is not None}
    if row.get("judged_accuracy") is not None:
        out["judged_accuracy"] = float(row["judged_accuracy"])
    out.update({f"seconds_{k}": float(v) for k, v in (row.get("seconds") or {}).items()})
    out.update({f"unet_calls_{k}": float(v) for k, v in (row.get("unet_calls") or {}).items()})
    return out


def _client_and_run(cfg: Config, run_dir: Path, state: dict[str, Any]):
    from mlflow import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    run_id = state.get("run_id")
    if run_id:
        try:
            info = client.get_run(run_id).info
        except Exception:  # the run was deleted or the database replaced: start a new run
            info = None
        if info is not None and info.lifecycle_stage == "active":
            if info.status != "RUNNING":  # the experiment goes on: reopen its run
                client.update_run(run_id, status="RUNNING")
            return client, run_id
    exp_id = _get_or_create_experiment(client, cfg.tracking.experiment)
    run_name = cfg.experiment.name
    if run_dir.parent.name.endswith("-baselines"):  # e.g. default-baselines/MarginSampling
        run_name = f"{run_dir.parent.name}/{run_name}"
    run = client.create_run(exp_id, run_name=run_name,
                            tags={"galot.run_dir": str(run_dir.resolve()), "galot.mode": cfg.experiment.mode})
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(cfg).items())]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    state.clear()
    state.update(run_id=run.info.run_id, logged_cycles=[])
    return client, run.info.run_id


def log_experiment(cfg: Config) -> dict[str, Any]:
    """Log every completed, not yet logged cycle of the experiment; returns the MLflow run id."""
    from mlflow.entities import Metric

    run_dir = cfg.run_dir
    run = RunFolder(run_dir)
    path = run.tracking_path
    everything = read_json(path) if path.exists() else {}
    uri = tracking_uri()
    state = everything.setdefault(redacted(uri), {})  # never write a token into the run folder
    client, run_id = _client_and_run(cfg, run_dir, state)
    rows = run.all_metrics()
    new = [r for r in rows if r["cycle"] not in state["logged_cycles"]]
    now = int(time.time() * 1000)
    for row in new:
        metrics = [Metric(k, v, now, row["cycle"]) for k, v in cycle_metrics(row).items()]
        client.log_batch(run_id, metrics=metrics)
        grid = run.grid_path(row["cycle"])
        if grid.exists():
            client.log_artifact(run_id, str(grid), artifact_path=f"grids/cycle_{row['cycle']:03d}")
        log_adapter(cfg, client, run_id, run, row["cycle"])
        state["logged_cycles"].append(row["cycle"])
    if new:
        if run.classifier_path.exists():
            client.log_artifact(run_id, str(run.classifier_path), artifact_path=MODEL_PATH)
        for file in (run.run_metrics_path, run.accuracy_csv_path, run.config_path):
            if file.exists():
                client.log_artifact(run_id, str(file))
    atomic_write_json(path, everything)
    return {"run_id": run_id, "tracking_uri": redacted(uri), "logged": [r["cycle"] for r in new]}


def log_adapter(cfg: Config, client, run_id: str, run: RunFolder, cycle: int) -> None:
    """gal.adapt: the cycle's fit as an artifact and its loss curve (one series per cycle, by step)."""
    from mlflow.entities import Metric

    kind = cfg.gal.adapt
    fit = run.read_adapter(cycle, kind) if kind != "none" else None
    if fit is None:
        return
    now = int(time.time() * 1000)
    losses = [Metric(f"adapt_loss_cycle_{cycle:03d}", float(v), now, k) for k, v in enumerate(fit[1]["losses"])]
    for i in range(0, len(losses), 1000):
        client.log_batch(run_id, metrics=losses[i:i + 1000])
    client.log_artifact(run_id, str(run.adapter_path(cycle, kind)), artifact_path=f"adapters/cycle_{cycle:03d}")


def log_model(cfg: Config, client, run_id: str, run_dir: Path) -> str | None:
    """The run's newest classifier as an MLflow pytorch model at ``model/`` (pt2, no pickle);
    returns the classifier's SHA-256, or None when there is none yet."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from galot_core.checkpoint import load_classifier
    from galot_core.predict import ModelCard, Predictor
    from galot.tasks.cycle import context

    weights = RunFolder(run_dir).classifier_path
    if not weights.exists():
        return None
    card = ModelCard.of(context(cfg).dataset)
    model, _, _ = load_classifier(weights)
    shape = (card.channels, card.image_size, card.image_size)
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape))]),
                               Schema([TensorSpec(np.dtype(np.float32), (-1, len(card.class_names)))]))
    # Two blank images: a batch of 2 keeps the batch dimension dynamic in torch.export, and
    # no user image ends up in the tracking store.
    example = np.zeros((2, *shape), dtype=np.uint8)
    import torch

    # Stated, not inferred: MLflow's inference reloads the model in a subprocess (slow); loading a
    # pt2 model needs only these two.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_PATH
        mlflow.pytorch.save_model(Predictor(model, card), str(folder), serialization_format="pt2",
                                  signature=signature, input_example=example, pip_requirements=requirements,
                                  metadata={"galot": {**card.to_dict(), "arch": cfg.model.arch,
                                                      "input": "uint8 images (N, C, S, S)",
                                                      "output": "class probabilities (N, K)"}})
        shutil.copy(weights, folder / "classifier.safetensors")
        client.log_artifacts(run_id, str(folder), artifact_path=MODEL_PATH)
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def finish_experiment(cfg: Config, status: str) -> str | None:
    """End the experiment's MLflow run with ``status``; on FINISHED first log its classifier as a model."""
    run = RunFolder(cfg.run_dir)
    path = run.tracking_path
    everything = read_json(path) if path.exists() else {}
    state = everything.get(redacted(tracking_uri()), {})
    if not state.get("run_id"):
        return None  # nothing was logged yet
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    run_id = state["run_id"]
    weights = run.classifier_path
    if status == "FINISHED" and weights.exists() and \
            state.get("model_sha256") != hashlib.sha256(weights.read_bytes()).hexdigest():
        state["model_sha256"] = log_model(cfg, client, run_id, cfg.run_dir)
        atomic_write_json(path, everything)
    client.set_terminated(run_id, status)
    return run_id


@contextmanager
def tracked_run(cfg: Config) -> Iterator[None]:
    """Around a top-level flow: its MLflow run ends FINISHED, FAILED or KILLED with it (nested
    flows leave that to the outermost). A tracking failure here never hides the flow's own error."""
    from galot_core.labels import WaitingForLabels

    if not cfg.tracking.mlflow or _owner.get():
        yield
        return
    token = _owner.set(True)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except WaitingForLabels:
        status = "FINISHED"  # a planned stop: the run reopens when the experiment continues
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _owner.reset(token)
        try:
            finish_experiment(cfg, status)
        except Exception as e:  # noqa: BLE001
            _log.warning("MLflow: could not end the run as %s (%s)", status, e)


def load_logged_model(uri: str):
    """An MLflow model galot logged (``runs:/<id>/model``, ``models:/...`` or a local folder) and its card."""
    import mlflow.pytorch
    from mlflow.models import Model

    from galot_core.predict import ModelCard

    try:
        meta = Model.load(uri).metadata or {}
        module = mlflow.pytorch.load_model(uri)
    except Exception as e:  # noqa: BLE001  (MLflow raises many types for a wrong URI)
        raise GalotError(f"RUN_OR_MODEL: cannot load the MLflow model '{uri}' ({str(e).splitlines()[0][:200]}); "
                         "check the run id and MLFLOW_TRACKING_URI") from None
    if "galot" not in meta:
        raise GalotError(f"RUN_OR_MODEL: '{uri}' is not a galot classifier (no galot metadata in its MLmodel)")
    return module, ModelCard.from_dict(meta["galot"])


def log_transfer(cfg: Config, metrics: dict[str, Any]) -> str:
    """A transfer result as its own MLflow run, tagged with the experiment it reused."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=tracking_uri())
    exp_id = _get_or_create_experiment(client, cfg.tracking.experiment)
    run = client.create_run(exp_id, run_name=f"{cfg.experiment.name}-transfer-{metrics['arch']}",
                            tags={"galot.transfer_of": cfg.experiment.name, "galot.arch": metrics["arch"]})
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
def track_experiment(cfg: Config) -> dict[str, Any] | None:
    """MLflow catch-up for the experiment (no-op with ``tracking.mlflow: false``)."""
    return log_experiment(cfg) if cfg.tracking.mlflow else None


@task(name="track_transfer", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def track_transfer(cfg: Config, metrics: dict[str, Any]) -> str | None:
    return log_transfer(cfg, metrics) if cfg.tracking.mlflow else None
