"""The steps of one GALOT cycle (Algorithm 1, lines 5–10) as Prefect tasks.

Thin on purpose: each task rebuilds the experiment from its parameters (a plain dict, so
Prefect can hash and show it), calls one step of :class:`galot_core.experiment.Experiment`,
and returns a small record — paths and numbers, never tensors or models.

Caching: the run folder is the cache. Every step skips work whose outputs are already on
disk, so a rerun after a crash continues where it stopped. Prefect's own result cache is
switched off (``NO_CACHE``): it would happily return a record for files that were since
deleted, and it keys on inputs that say nothing about the folder's contents.

Retries: only where a retry can help. Generation and TextOpt run the diffusion model on
an accelerator, where transient faults (a driver hiccup, a preempted device) happen; a
:class:`GalotError` is a mistake in the inputs and is never retried.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from galot_core.config import config_from_dict
from galot_core.errors import GalotError
from galot_core.experiment import Experiment


_lock = threading.Lock()


@lru_cache(maxsize=4)
def _experiment(cfg_json: str) -> Experiment:
    # One Experiment per process and configuration: the dataset and the diffusion model
    # are loaded once and shared by the tasks of every cycle this process runs.
    return Experiment(config_from_dict(json.loads(cfg_json), source="flow parameters"))


def experiment(cfg: dict[str, Any]) -> Experiment:
    with _lock:  # tasks in threads must share one Experiment (and its one copy of the model)
        return _experiment(json.dumps(cfg, sort_keys=True))


def on_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` for this process: on the i-th worker of a local Dask cluster with several
    GPUs, the diffusion model goes to GPU i mod #GPUs (one worker per GPU)."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return cfg  # not on a Dask worker
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1 and isinstance(name, int) and cfg["t2i"]["device"] in ("auto", "cuda"):
        return {**cfg, "t2i": {**cfg["t2i"], "device": f"cuda:{name % gpus}"}}
    return cfg


def transient(task_, task_run, state) -> bool:
    """Retry unless the failure is a :class:`GalotError` (bad input: retrying cannot help)."""
    return not isinstance(state.result(raise_on_failure=False), GalotError)


@task(name="select_real_batch", cache_policy=NO_CACHE)
def select_real_batch(cfg: dict[str, Any], cycle: int) -> dict[str, Any]:
    """Line 5: the most informative unlabelled images by σ_AL, labelled by the oracle."""
    exp = experiment(cfg)
    picked = exp.select(cycle)
    return {"cycle": cycle, "selected": len(picked), "labelled": len(exp.pool_state().labelled)}


@task(name="receive_labels", cache_policy=NO_CACHE)
def receive_labels(cfg: dict[str, Any], cycle: int) -> dict[str, Any]:
    """The human oracle's answers for the batch, committed to the pool (raises WaitingForLabels until complete)."""
    exp = experiment(cfg)
    return {"cycle": cycle, **exp.receive_labels(cycle)}


@task(name="optimize_embeddings", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      retry_condition_fn=transient, task_run_name="optimize_embeddings-c{cycle}-g{group}")
def optimize_embeddings(cfg: dict[str, Any], cycle: int, group: int) -> dict[str, Any]:
    """Lines 6–8 for one group of classes: TextOpt, PGD on their text embeddings against the last classifier."""
    experiment(on_worker(cfg)).optimize_group(cycle, group)
    return {"cycle": cycle, "group": group}


@task(name="merge_embeddings", cache_policy=NO_CACHE)
def merge_embeddings(cfg: dict[str, Any], cycle: int) -> dict[str, Any]:
    """Every class's optimised embedding in one file, the input of generation."""
    exp = experiment(cfg)
    info = exp.merge_embeddings(cycle)
    return {"cycle": cycle, "embeddings": str(exp.cycle_dir(cycle) / "embeddings.safetensors"), **info}


@task(name="generate_images", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      retry_condition_fn=transient, task_run_name="generate_images-c{cycle}-s{shard}")
def generate_images(cfg: dict[str, Any], cycle: int, shard: int) -> dict[str, Any]:
    """Line 9 for one shard: its images from the optimised embeddings, to disk."""
    return {"cycle": cycle, "shard": shard, "images": experiment(on_worker(cfg)).generate_shard(cycle, shard)}


@task(name="merge_generated", cache_policy=NO_CACHE)
def merge_generated(cfg: dict[str, Any], cycle: int) -> dict[str, Any]:
    """The shards' images in the cycle's manifest."""
    from galot_core import synthetic

    exp = experiment(cfg)
    n = exp.merge_generated(cycle)
    return {"cycle": cycle, "folder": str(synthetic.cycle_folder(exp.dir, cycle)), "images": n}


@task(name="train", cache_policy=NO_CACHE)
def train(cfg: dict[str, Any], cycle: int) -> dict[str, Any]:
    """Line 10: a fresh classifier on the real labelled ∪ generated images."""
    exp = experiment(cfg)
    info = exp.train(cycle)
    return {"cycle": cycle, "model": str(exp.cycle_dir(cycle) / "model.safetensors"), **info}


@task(name="export_dataset", cache_policy=NO_CACHE)
def export_dataset(cfg: dict[str, Any], cycle: int) -> dict[str, Any]:
    """Pack real selections + synthetic shards for DVC and the transfer flow."""
    exp = experiment(cfg)
    return {"cycle": cycle, "dataset": str(exp.export(cycle))}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: dict[str, Any], cycle: int, seconds: dict[str, float]) -> dict[str, Any]:
    """Test accuracy (and judged pseudo-label accuracy); writing the metrics completes the cycle."""
    exp = experiment(cfg)
    metrics = exp.evaluate(cycle, seconds).to_dict()
    grid = exp.sample_grid(cycle)
    return {**metrics, "grid": str(grid) if grid else None}
