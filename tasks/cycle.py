"""The steps of one GALOT cycle (galot_core.steps) as Prefect tasks, one task per step function.

Thin on purpose: each task gets the experiment's :class:`~galot_core.config.Config` (a pydantic
model: Prefect shows it, Dask pickles it, nothing re-reads params.yaml), calls the step
function of the same name, and returns a small record — paths and numbers, never tensors
or models. :data:`TASKS` maps each step function to its task, which is how the flow's
executor (flows/galot.py) runs galot_core.cycle.run_cycle's steps as tasks.

Caching: the run folder is the cache. Every step skips work whose outputs are already on
disk, so a rerun after a crash continues where it stopped. Prefect's own result cache is
switched off (``NO_CACHE``): it would happily return a record for files that were since
deleted, and it keys on inputs that say nothing about the folder's contents.

Retries: only where a retry can help. Generation and TextOpt run the diffusion model on
an accelerator, where transient faults (a driver hiccup, a preempted device) happen; a
:class:`GalotError` is a mistake in the inputs and is never retried.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from galot_core import steps
from galot_core.config import Config
from galot_core.errors import GalotError
from galot_core.experiment import Experiment

_lock = threading.Lock()


@lru_cache(maxsize=4)
def _context(cfg: Config) -> Experiment:
    # One context per process and configuration: the dataset and the diffusion model are
    # loaded once and shared by the tasks of every cycle this process runs.
    return Experiment(cfg)


def context(cfg: Config) -> Experiment:
    with _lock:  # tasks in threads must share one context (and its one copy of the model)
        return _context(cfg)


def on_worker(cfg: Config) -> Config:
    """``cfg`` for this process: on the i-th worker of a local Dask cluster with several
    GPUs, the diffusion model goes to GPU i mod #GPUs (one worker per GPU)."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return cfg  # not on a Dask worker
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1 and isinstance(name, int) and cfg.t2i.device in ("auto", "cuda"):
        return cfg.model_copy(update={"t2i": cfg.t2i.model_copy(update={"device": f"cuda:{name % gpus}"})})
    return cfg


def transient(task_, task_run, state) -> bool:
    """Retry unless the failure is a :class:`GalotError` (bad input: retrying cannot help)."""
    return not isinstance(state.result(raise_on_failure=False), GalotError)


def _fan_out_task(step, letter: str):
    """The task for one part of a fanned-out step (a TextOpt group, a generation shard): it runs
    the diffusion model, so it is retried on transient faults, never on a GalotError."""

    @task(name=step.__name__, cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=transient,
          task_run_name=step.__name__ + "-c{cycle}-" + letter + "{key}")
    def run_part(cfg: Config, cycle: int, key: int) -> dict[str, Any]:
        return {"cycle": cycle, "part": key, "result": step(context(on_worker(cfg)), cycle, key)}

    run_part.__doc__ = step.__doc__
    return run_part


# Lines 6–8 for one group of classes, line 9 for one shard of images.
optimize_group = _fan_out_task(steps.optimize_group, "g")
generate_shard = _fan_out_task(steps.generate_shard, "s")


@task(name="select_real_batch", cache_policy=NO_CACHE)
def select_real_batch(cfg: Config, cycle: int) -> dict[str, Any]:
    """Line 5: the most informative unlabelled images by σ_AL, labelled by the oracle."""
    ctx = context(cfg)
    picked = steps.select_real_batch(ctx, cycle)
    return {"cycle": cycle, "selected": len(picked), "labelled": len(ctx.pool_state().labelled)}


@task(name="receive_labels", cache_policy=NO_CACHE)
def receive_labels(cfg: Config, cycle: int) -> dict[str, Any]:
    """The human oracle's answers for the batch, committed to the pool (raises WaitingForLabels until complete)."""
    return {"cycle": cycle, **steps.receive_labels(context(cfg), cycle)}


@task(name="adapt_generator", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=transient)
def adapt_generator(cfg: Config, cycle: int) -> dict[str, Any]:
    """gal.adapt: the generator fitted to the labelled images (an embedding per class or a LoRA)."""
    ctx = context(cfg)
    info = steps.adapt_generator(ctx, cycle)
    return {"cycle": cycle, "adapter": str(ctx.folder.adapter_path(cycle, cfg.gal.adapt)), **info}


@task(name="merge_embeddings", cache_policy=NO_CACHE)
def merge_embeddings(cfg: Config, cycle: int) -> dict[str, Any]:
    """Every class's optimised embedding in one file, the input of generation."""
    ctx = context(cfg)
    info = steps.merge_embeddings(ctx, cycle)
    return {"cycle": cycle, "embeddings": str(ctx.folder.embeddings_path(cycle)), **info}


@task(name="merge_generated", cache_policy=NO_CACHE)
def merge_generated(cfg: Config, cycle: int) -> dict[str, Any]:
    """The shards' images in the cycle's manifest (and the B_GAL kept of the candidates)."""
    ctx = context(cfg)
    n = steps.merge_generated(ctx, cycle)
    return {"cycle": cycle, "folder": str(ctx.folder.synthetic_dir(cycle)), "images": n}


@task(name="train_classifier", cache_policy=NO_CACHE)
def train_classifier(cfg: Config, cycle: int) -> dict[str, Any]:
    """Line 10: a fresh classifier on the real labelled ∪ generated images."""
    ctx = context(cfg)
    info = steps.train_classifier(ctx, cycle)
    return {"cycle": cycle, "model": str(ctx.folder.model_path(cycle)), **info}


@task(name="export_cycle", cache_policy=NO_CACHE)
def export_cycle(cfg: Config, cycle: int) -> dict[str, Any]:
    """The cycle's shard of the exported dataset, for DVC and the transfer flow."""
    return {"cycle": cycle, "dataset": str(steps.export_cycle(context(cfg), cycle))}


@task(name="evaluate_cycle", cache_policy=NO_CACHE)
def evaluate_cycle(cfg: Config, cycle: int, seconds: dict[str, float]) -> dict[str, Any]:
    """Test accuracy (and judged pseudo-label accuracy); writing the metrics completes the cycle."""
    return steps.evaluate_cycle(context(cfg), cycle, seconds)


# Each step function of galot_core.steps and the task that runs it.
TASKS = {getattr(steps, t.name): t for t in (select_real_batch, receive_labels, adapt_generator, optimize_group,
                                             merge_embeddings, generate_shard, merge_generated, train_classifier,
                                             export_cycle, evaluate_cycle)}
