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

All three take the experiment's parameters as one typed :class:`~galot_core.config.Config`
(the schema of params.yaml; the Prefect UI renders it as a form with each key's type, range,
choices and help), plus optional ``section.key=value`` overrides applied to it (as the CLI's
``--set`` and ``dvc exp run -S``). Without a config they read ``params.yaml`` in the working
directory. Without a Prefect server they run in Prefect's ephemeral mode (that is how the
CLI, ``dvc repro`` and the tests call them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from galot_core.config import ARCHITECTURES, Config, RunnerConfig, updated
from galot_core.params_file import load_config, with_overrides
from galot_core.context import Context, describe
from galot_core.cycle import next_cycle, run_cycle
from galot_core.errors import GalotError
from galot_core.runfolder import RunFolder
from galot_core.steps import export_cycle
from galot_core.steps.evaluate import write_summary
from galot.flows.labelling import wait_for_labels
from galot.tasks.cycle import TASKS, context
from galot.tasks.tracking import track_experiment, track_transfer, tracked_run
from galot.tasks.tracking_check import check_tracking
from galot.tasks.transfer import train_transfer

TABLE_COLUMNS = ("cycle", "labelled", "generated", "epsilon", "test_accuracy", "judged_accuracy")


def _artifact_key(name: str, what: str) -> str:
    # Prefect artifact keys: lowercase letters, numbers and dashes only.
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "experiment"
    return f"galot-{slug}-{what}"[:100]


def _summary_markdown(cfg: Config, rows: list[dict[str, Any]], last: dict[str, Any]) -> str:
    e = cfg.experiment
    lines = [f"# {e.name}: cycle {last['cycle']} of {e.cycles} ({e.mode}, {cfg.data.dataset})",
             "", f"- test accuracy **{describe(last['test_accuracy'])}** with |L| = {last['labelled']} real labels"
             f" and |G| = {last['generated']} generated images (ε = {last['epsilon']:.3f})"]
    if last.get("judged_accuracy") is not None:
        lines.append(f"- judged pseudo-label accuracy of this cycle's images: {last['judged_accuracy']:.3f}")
    lines.append("- seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in last["seconds"].items()))
    if last.get("unet_calls"):
        lines.append("- UNet calls: " + ", ".join(f"{k} {v}" for k, v in last["unet_calls"].items()))
    lines += ["", "| cycle | labelled | generated | ε | test accuracy |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['cycle']} | {r['labelled']} | {r['generated']} | {r['epsilon']:.3f} | {describe(r['test_accuracy'])} |"
              for r in rows]
    return "\n".join(lines)


class PrefectSteps:
    """The executor galot_core.cycle.run_cycle gets in a flow: every step a Prefect task
    (tasks/cycle.py), fan-outs a ``galot-fanout`` subflow on the configured task runner."""

    def __init__(self, cfg: Config, pause_for_labels: bool) -> None:
        self.cfg, self.pause_for_labels = cfg, pause_for_labels

    def one(self, step, ctx: Context, cycle: int, *args: Any) -> Any:
        return TASKS[step](self.cfg, cycle, *args)

    def each(self, step, ctx: Context, cycle: int, keys: list[int]) -> list[Any]:
        remote = _absolute(self.cfg) if self.cfg.runner.task_runner == "dask" else self.cfg
        return fan_out.with_options(task_runner=task_runner(self.cfg))(step.__name__, remote, cycle, keys)

    def wait_for_labels(self, ctx: Context, cycle: int) -> None:
        wait_for_labels(ctx.dir, cycle, self.pause_for_labels)


@flow(name="galot-fanout", log_prints=True)
def fan_out(step: str, cfg: Config, cycle: int, keys: list[int]) -> list[Any]:
    """One task per TextOpt group or generation shard, placed by the task runner; all their records."""
    task_ = next(t for fn, t in TASKS.items() if fn.__name__ == step)
    return [f.result() for f in [task_.submit(cfg, cycle, k) for k in keys]]


def run_one_cycle(cfg: Config, pause_for_labels: bool = False) -> dict[str, Any]:
    """The experiment's next cycle (galot_core.cycle.run_cycle, steps as tasks), then its artifacts."""
    ctx = context(cfg)
    ctx.start()
    metrics = run_cycle(ctx, next_cycle(ctx), PrefectSteps(cfg, pause_for_labels))
    rows, name = ctx.folder.all_metrics(), cfg.experiment.name
    create_table_artifact([{k: r.get(k) for k in TABLE_COLUMNS} for r in rows], key=_artifact_key(name, "accuracy"),
                          description=f"Accuracy by cycle of experiment '{name}'")
    create_markdown_artifact(_summary_markdown(cfg, rows, metrics), key=_artifact_key(name, "summary"),
                             description="Latest cycle")
    track_experiment(cfg)
    return metrics


_NO_DASK = ("runner.task_runner: dask needs the prefect-dask package; pip install prefect-dask, "
            "or use runner.task_runner: thread")


def _local_cluster_kwargs(runner: RunnerConfig) -> dict[str, Any]:
    """A local cluster of single-threaded worker processes: runner.dask_workers, 0 = one per visible GPU."""
    import torch

    workers = runner.dask_workers or max(1, torch.cuda.device_count())
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def task_runner(cfg: Config) -> TaskRunner:
    """``runner.task_runner``: threads in this process, or prefect-dask on a local or existing Dask cluster."""
    r = cfg.runner
    if r.task_runner == "thread":
        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise GalotError(_NO_DASK) from None
    if r.dask_address:
        return DaskTaskRunner(address=r.dask_address)
    return DaskTaskRunner(cluster_kwargs=_local_cluster_kwargs(r))


@contextmanager
def local_dask_cluster(cfg: Config) -> Iterator[str | None]:
    """A local Dask cluster for ``runner.task_runner: dask`` without ``dask_address``, else nothing."""
    r = cfg.runner
    if r.task_runner != "dask" or r.dask_address:
        yield None
        return
    try:
        from distributed import LocalCluster
    except ImportError:
        raise GalotError(_NO_DASK) from None
    with LocalCluster(**_local_cluster_kwargs(r)) as cluster:
        yield cluster.scheduler_address


def _absolute(cfg: Config) -> Config:
    """Paths that exist here made absolute, for Dask workers that run in another directory (a
    shared filesystem mounted at the same path on every worker is assumed)."""
    cfg = updated(cfg, "experiment", runs_dir=str(Path(cfg.experiment.runs_dir).resolve()))
    for section, key in (("experiment", "judge"), ("t2i", "model"), ("data", "root")):
        value = getattr(getattr(cfg, section), key)
        if value and Path(value).exists():  # a hub id such as stabilityai/... stays as it is
            cfg = updated(cfg, section, **{key: str(Path(value).resolve())})
    return cfg


def parameters(config: Config | None, overrides: list[str] | None) -> Config:
    """A flow's parameters: ``config`` (else the working directory's params.yaml) with ``overrides``."""
    return with_overrides(config if config is not None else load_config("params.yaml"), list(overrides or []))


@flow(name="galot", log_prints=True)
def galot_cycle(config: Config | None = None, overrides: list[str] | None = None,
                pause_for_labels: bool = False) -> dict[str, Any]:
    """Advance the experiment of ``config`` by one active-learning cycle.

    ``pause_for_labels``: with a human oracle, pause this flow run until the batch is labelled
    (needs a Prefect server) instead of stopping with "waits for labels"."""
    cfg = parameters(config, overrides)
    check_tracking(cfg)  # MLFLOW_TRACKING_URI refused now, in seconds, not after the cycle's work
    # The run lock before the MLflow run: a flow refused because another process is advancing
    # the experiment must not end that process's MLflow run as FAILED.
    # The MLflow run ends with this flow, unless galot-run owns it.
    with RunFolder(cfg.run_dir).run_lock(), tracked_run(cfg):
        return run_one_cycle(cfg, pause_for_labels)


@flow(name="galot-run", log_prints=True)
def galot_run(config: Config | None = None, overrides: list[str] | None = None,
              pause_for_labels: bool = False) -> list[dict[str, Any]]:
    """Run the experiment's remaining cycles, one ``galot`` subflow each; returns every cycle's metrics."""
    cfg = parameters(config, overrides)
    check_tracking(cfg)  # before the lock and any cycle: an unusable tracking URI is one line
    # Every cycle and the deliverables under one run lock (as galot_cycle), taken before the MLflow
    # run, which ends FINISHED (classifier logged as an MLflow model), FAILED or KILLED.
    with RunFolder(cfg.run_dir).run_lock(), tracked_run(cfg):
        return _run_cycles(cfg, pause_for_labels)


def _run_cycles(cfg: Config, pause_for_labels: bool) -> list[dict[str, Any]]:
    ctx = context(cfg)
    ctx.start()
    if ctx.folder.completed_cycles() < cfg.experiment.cycles:
        with local_dask_cluster(cfg) as address:
            # One cluster for every cycle, so its workers keep the diffusion model loaded.
            each = updated(cfg, "runner", dask_address=address) if address else cfg
            for _ in range(ctx.folder.completed_cycles(), cfg.experiment.cycles):
                galot_cycle(each, pause_for_labels=pause_for_labels)
    if ctx.folder.completed_cycles():
        # The deliverables (exported dataset, summary, classifier copy) exist even when every
        # cycle was already done, e.g. after `dvc repro` removed them to rerun the stage.
        export_cycle(ctx, ctx.folder.completed_cycles())
        write_summary(ctx)
    track_experiment(cfg)  # catch up cycles completed by an earlier, interrupted run
    return ctx.folder.all_metrics()


@flow(name="galot-transfer", log_prints=True)
def galot_transfer(config: Config | None = None, overrides: list[str] | None = None,
                   archs: list[str] | None = None) -> list[dict[str, Any]]:
    """Train ``archs`` (default ``transfer.archs``) on the experiment's cached real + synthetic data."""
    cfg = parameters(config, overrides)
    check_tracking(cfg)
    results = []
    for arch in archs or list(cfg.transfer.archs):
        if arch not in ARCHITECTURES:
            raise GalotError(f"--arch: unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
        metrics = train_transfer(cfg, arch)
        track_transfer(cfg, metrics)
        results.append(metrics)
    create_table_artifact([{k: r[k] for k in ("arch", "test_accuracy", "real", "generated", "unet_calls")}
                           for r in results], key=_artifact_key(cfg.experiment.name, "transfer"),
                          description="Architectures trained on the cached dataset")
    return results
