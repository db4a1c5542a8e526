"""The ``galot`` flows: one cycle of an experiment, N cycles, and a transfer to other architectures.

``galot`` (deployment ``galot/cycle``) advances a named experiment by one cycle — Algorithm
1, lines 5–10 — from whatever its run folder holds: the labelled pool, the cycle index and
the synthetic sets so far. Modes: ``al`` (real labels only, the AL baselines), ``gal``
(generated only, zero labels) and ``al+gal`` (GALOT). Run it as often as you like; each
run does one more cycle, and a run killed half-way is finished by the next.

``galot-run`` runs cycles until ``experiment.cycles`` are complete, each as a ``galot``
subflow. ``galot-transfer`` trains other architectures on a finished experiment's real
selections and cached synthetic images, without loading the diffusion model.

With ``experiment.oracle: human`` a cycle waits for a person's labels after selecting its
batch: ``pause_for_labels`` chooses between stopping the flow (resumable; the CLI's
default) and pausing the flow run until it is resumed with the labels (flows/labelling.py).

All three take the path of a ``params.yaml`` plus ``section.key=value`` overrides, the
same inputs as the CLI and ``dvc exp run -S``. Without a Prefect server they run in
Prefect's ephemeral mode (that is how the CLI, ``dvc repro`` and the tests call them).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from galot_core.config import ARCHITECTURES, load_config
from galot_core.errors import GalotError
from galot.flows.labelling import wait_for_labels
from galot.tasks import cycle as steps
from galot.tasks.tracking import track_experiment, track_transfer, tracked_run
from galot.tasks.transfer import train_transfer

TABLE_COLUMNS = ("cycle", "labelled", "generated", "epsilon", "test_accuracy", "judged_accuracy")


def _artifact_key(name: str, what: str) -> str:
    # Prefect artifact keys: lowercase letters, numbers and dashes only.
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "experiment"
    return f"galot-{slug}-{what}"[:100]


def _acc(value: float | None) -> str:
    return "n/a (no labelled test set)" if value is None else f"{value:.4f}"


def _summary_markdown(cfg_dict: dict[str, Any], rows: list[dict[str, Any]], last: dict[str, Any]) -> str:
    e = cfg_dict["experiment"]
    lines = [f"# {e['name']}: cycle {last['cycle']} of {e['cycles']} ({e['mode']}, {cfg_dict['data']['dataset']})",
             "", f"- test accuracy **{_acc(last['test_accuracy'])}** with |L| = {last['labelled']} real labels"
             f" and |G| = {last['generated']} generated images (ε = {last['epsilon']:.3f})"]
    if last.get("judged_accuracy") is not None:
        lines.append(f"- judged pseudo-label accuracy of this cycle's images: {last['judged_accuracy']:.3f}")
    lines.append("- seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in last["seconds"].items()))
    if last.get("unet_calls"):
        lines.append("- UNet calls: " + ", ".join(f"{k} {v}" for k, v in last["unet_calls"].items()))
    lines += ["", "| cycle | labelled | generated | ε | test accuracy |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['cycle']} | {r['labelled']} | {r['generated']} | {r['epsilon']:.3f} | {_acc(r['test_accuracy'])} |"
              for r in rows]
    return "\n".join(lines)


def run_one_cycle(cfg: dict[str, Any], pause_for_labels: bool = False) -> dict[str, Any]:
    """Select → (labels) → (TextOpt → generate) → train → export → evaluate, timing each step."""
    exp = steps.experiment(cfg)
    exp.start()
    cycle = exp.completed_cycles() + 1
    if cycle > exp.cfg.experiment.cycles:
        raise GalotError(f"experiment.cycles: all {exp.cfg.experiment.cycles} cycles of '{exp.cfg.experiment.name}' "
                         "are complete; raise experiment.cycles to go on")
    seconds: dict[str, float] = {}

    def timed(name: str, task_, *args):
        t = time.perf_counter()
        out = task_(*args)
        seconds[name] = round(time.perf_counter() - t, 3)
        return out

    timed("select", steps.select_real_batch, cfg, cycle)
    if exp.human_oracle:
        # Waiting for a person is not work: it is not timed, and the labels step then only commits.
        wait_for_labels(exp.dir, cycle, pause_for_labels)
        timed("labels", steps.receive_labels, cfg, cycle)
    if exp.uses_generation:
        seconds.update(diffusion_steps.with_options(task_runner=task_runner(cfg))(cfg, cycle))
    timed("train", steps.train, cfg, cycle)
    timed("export", steps.export_dataset, cfg, cycle)
    metrics = steps.evaluate(cfg, cycle, seconds)
    rows = exp.all_metrics()
    create_table_artifact([{k: r.get(k) for k in TABLE_COLUMNS} for r in rows],
                          key=_artifact_key(exp.cfg.experiment.name, "accuracy"),
                          description=f"Accuracy by cycle of experiment '{exp.cfg.experiment.name}'")
    create_markdown_artifact(_summary_markdown(cfg, rows, metrics), key=_artifact_key(exp.cfg.experiment.name, "summary"),
                             description="Latest cycle")
    track_experiment(cfg)
    return metrics


_NO_DASK = ("runner.task_runner: dask needs the prefect-dask package; pip install prefect-dask, "
            "or use runner.task_runner: thread")


def _local_cluster_kwargs(runner: dict[str, Any]) -> dict[str, Any]:
    """A local cluster of single-threaded worker processes: runner.dask_workers, 0 = one per visible GPU."""
    import torch

    workers = runner["dask_workers"] or max(1, torch.cuda.device_count())
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def task_runner(cfg: dict[str, Any]) -> TaskRunner:
    """``runner.task_runner``: threads in this process, or prefect-dask on a local or existing Dask cluster."""
    r = cfg["runner"]
    if r["task_runner"] == "thread":
        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise GalotError(_NO_DASK) from None
    if r["dask_address"]:
        return DaskTaskRunner(address=r["dask_address"])
    return DaskTaskRunner(cluster_kwargs=_local_cluster_kwargs(r))


@contextmanager
def local_dask_cluster(cfg: dict[str, Any]) -> Iterator[str | None]:
    """A local Dask cluster for ``runner.task_runner: dask`` without ``dask_address``, else nothing."""
    r = cfg["runner"]
    if r["task_runner"] != "dask" or r["dask_address"]:
        yield None
        return
    try:
        from distributed import LocalCluster
    except ImportError:
        raise GalotError(_NO_DASK) from None
    with LocalCluster(**_local_cluster_kwargs(r)) as cluster:
        yield cluster.scheduler_address


def _absolute(cfg: dict[str, Any]) -> dict[str, Any]:
    """Paths that exist here made absolute, for Dask workers that run in another directory (a
    shared filesystem mounted at the same path on every worker is assumed)."""
    out = {k: dict(v) for k, v in cfg.items()}
    out["experiment"]["runs_dir"] = str(Path(out["experiment"]["runs_dir"]).resolve())
    for section, key in (("experiment", "judge"), ("t2i", "model"), ("data", "root")):
        value = out[section].get(key)
        if value and Path(value).exists():  # a hub id such as stabilityai/... stays as it is
            out[section][key] = str(Path(value).resolve())
    return out


@flow(name="galot-diffusion", log_prints=True)
def diffusion_steps(cfg: dict[str, Any], cycle: int) -> dict[str, float]:
    """Lines 6–9 fanned out: TextOpt per group of classes, then generation per shard, each a task
    the configured task runner places; the merges run here. Returns seconds per stage."""
    exp = steps.experiment(cfg)
    remote = _absolute(cfg) if cfg["runner"]["task_runner"] == "dask" else cfg
    seconds = {}
    t = time.perf_counter()
    if not (exp.cycle_dir(cycle) / "embeddings.safetensors").exists():
        futures = [steps.optimize_embeddings.submit(remote, cycle, g) for g in range(len(exp.textopt_groups()))]
        [f.result() for f in futures]
    steps.merge_embeddings(cfg, cycle)
    seconds["textopt"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    futures = [steps.generate_images.submit(remote, cycle, k) for k in exp.generation_shards(cycle)]
    [f.result() for f in futures]
    steps.merge_generated(cfg, cycle)
    seconds["generate"] = round(time.perf_counter() - t, 3)
    return seconds


@flow(name="galot", log_prints=True)
def galot_cycle(params: str | None = "params.yaml", overrides: list[str] | None = None,
                pause_for_labels: bool = False) -> dict[str, Any]:
    """Advance the experiment named in ``params`` by one active-learning cycle.

    ``pause_for_labels``: with a human oracle, pause this flow run until the batch is labelled
    (needs a Prefect server) instead of stopping with "waits for labels"."""
    cfg = load_config(params, overrides or [])
    with tracked_run(cfg.to_dict()):  # the MLflow run ends with this flow, unless galot-run owns it
        return run_one_cycle(cfg.to_dict(), pause_for_labels)


@flow(name="galot-run", log_prints=True)
def galot_run(params: str | None = "params.yaml", overrides: list[str] | None = None,
              pause_for_labels: bool = False) -> list[dict[str, Any]]:
    """Run the experiment's remaining cycles, one ``galot`` subflow each; returns every cycle's metrics."""
    cfg = load_config(params, overrides or [])
    with tracked_run(cfg.to_dict()):  # FINISHED (classifier logged as an MLflow model), FAILED or KILLED
        return _run_cycles(cfg, params, overrides, pause_for_labels)


def _run_cycles(cfg, params: str, overrides: list[str] | None, pause_for_labels: bool) -> list[dict[str, Any]]:
    exp = steps.experiment(cfg.to_dict())
    exp.start()
    if exp.completed_cycles() < cfg.experiment.cycles:
        with local_dask_cluster(cfg.to_dict()) as address:
            # One cluster for every cycle, so its workers keep the diffusion model loaded.
            extra = [f"runner.dask_address={address}"] if address else []
            for _ in range(exp.completed_cycles(), cfg.experiment.cycles):
                galot_cycle(params, [*(overrides or []), *extra], pause_for_labels)
    if exp.completed_cycles():
        # The deliverables (exported dataset, summary, classifier copy) exist even when every
        # cycle was already done, e.g. after `dvc repro` removed them to rerun the stage.
        steps.export_dataset(cfg.to_dict(), exp.completed_cycles())
        exp.write_summary()
    track_experiment(cfg.to_dict())  # catch up cycles completed by an earlier, interrupted run
    return exp.all_metrics()


@flow(name="galot-transfer", log_prints=True)
def galot_transfer(params: str | None = "params.yaml", overrides: list[str] | None = None,
                   archs: list[str] | None = None) -> list[dict[str, Any]]:
    """Train ``archs`` (default ``transfer.archs``) on the experiment's cached real + synthetic data."""
    cfg = load_config(params, overrides or [])
    d = cfg.to_dict()
    results = []
    for arch in archs or list(cfg.transfer.archs):
        if arch not in ARCHITECTURES:
            raise GalotError(f"--arch: unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
        metrics = train_transfer(d, arch)
        track_transfer(d, metrics)
        results.append(metrics)
    create_table_artifact([{k: r[k] for k in ("arch", "test_accuracy", "real", "generated", "unet_calls")}
                           for r in results], key=_artifact_key(cfg.experiment.name, "transfer"),
                          description="Architectures trained on the cached dataset")
    return results
