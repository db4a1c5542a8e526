"""An experiment as one object: the context every flow, the CLI, the tests and notebooks build.

The cycle itself is :func:`galot_core.cycle.run_cycle` (Algorithm 1, five steps in
:mod:`galot_core.steps`) over a run folder (:mod:`galot_core.runfolder`); an
:class:`Experiment` is a :class:`~galot_core.context.Context` whose methods call those
functions, nothing more. Modes (``experiment.mode``): ``al`` — real labels only (the AL
baselines); ``gal`` — generated images only, zero labels (the paper's "Baseline GAL");
``al+gal`` — GALOT, real labels ∪ generated images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from galot_core import cycle as cycles
from galot_core import steps
from galot_core.config import Config, config_from_dict, updated
from galot_core.context import DEFAULT_T2I, Context, check_same_experiment, cycle_seed
from galot_core.errors import GalotError
from galot_core.steps import embeddings, evaluate, generate, train
from galot_core.steps.evaluate import CSV_COLUMNS, CycleMetrics

__all__ = ["Experiment", "CycleMetrics", "CSV_COLUMNS", "DEFAULT_T2I", "cycle_seed", "replace_if_changed",
           "baselines_dir", "baseline_config"]


class Experiment(Context):
    """A run folder and the steps that advance it (each method is one call of galot_core.steps/cycle)."""

    def cycle_dir(self, cycle: int) -> Path:
        return self.folder.cycle_dir(cycle)

    def completed_cycles(self) -> int:
        return self.folder.completed_cycles()

    def all_metrics(self) -> list[dict[str, Any]]:
        return self.folder.all_metrics()

    def run_cycle(self, cycle: int | None = None) -> CycleMetrics:
        """Advance the experiment by one cycle (the next incomplete one by default)."""
        self.start()
        m = cycles.run_cycle(self, cycle or cycles.next_cycle(self))
        return CycleMetrics(**{k: v for k, v in m.items() if k != "grid"})

    def run(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return cycles.run(self)

    def select(self, cycle: int) -> list[int]:
        return steps.select_real_batch(self, cycle)

    def adapt(self, cycle: int) -> dict[str, Any]:
        """gal.adapt: fit the generator to the labelled images (nothing with gal.adapt: none)."""
        return steps.adapt_generator(self, cycle)

    def optimize_embeddings(self, cycle: int) -> dict[str, float]:
        """Lines 6–8 for every group of classes, in this process."""
        if not self.folder.embeddings_path(cycle).exists():
            cycles.InProcess().each(steps.optimize_group, self, cycle, list(range(len(steps.textopt_groups(self)))))
        return steps.merge_embeddings(self, cycle)

    def generate(self, cycle: int) -> int:
        """Line 9 for every shard, in this process; returns the number of images kept."""
        cycles.InProcess().each(steps.generate_shard, self, cycle, steps.generation_shards(self, cycle))
        return steps.merge_generated(self, cycle)

    def train(self, cycle: int) -> dict[str, float]:
        return steps.train_classifier(self, cycle)

    def training_set(self, cycle: int) -> tuple[torch.Tensor, torch.Tensor]:
        return train.training_set(self, cycle)

    def export(self, cycle: int) -> Path:
        return steps.export_cycle(self, cycle)

    def unet_calls(self, cycle: int) -> dict[str, int]:
        return evaluate.unet_calls(self, cycle)

    def sample_grid(self, cycle: int, per_class: int = 8) -> Path | None:
        return evaluate.sample_grid(self, cycle, per_class)

    def write_summary(self) -> None:
        evaluate.write_summary(self)

    def alpha(self, eps: torch.Tensor, s_star: torch.Tensor) -> torch.Tensor:
        return embeddings.alpha(self, eps, s_star)

    def conditioning(self, cycle: int, items: list[tuple[int, int]], s: torch.Tensor) -> torch.Tensor:
        return generate.conditioning(self, cycle, items, s)


def replace_if_changed(cfg: Config) -> Path | None:
    """Move aside a run folder started with incompatible parameters, so ``cfg`` starts afresh.

    For pipelines (``dvc repro``, ``dvc exp run -S``) where a changed parameter means a new
    result, not a mistake. Nothing is deleted: the old folder goes to
    ``<runs_dir>/.replaced/<name>-<UTC time>``; its labels may have cost money.
    """
    ctx = Context(cfg)
    started = ctx.folder.read_config()
    if started is None:
        return None
    try:
        check_same_experiment(config_from_dict(started, source=str(ctx.folder.config_path)), cfg, cfg.run_dir)
        return None
    except GalotError:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = Path(cfg.experiment.runs_dir) / ".replaced" / f"{cfg.experiment.name}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        cfg.run_dir.rename(dest)
        return dest


def baselines_dir(cfg: Config) -> Path:
    """Where an experiment's AL baselines live: ``<runs_dir>/<name>-baselines/<strategy>/``."""
    return Path(cfg.experiment.runs_dir) / f"{cfg.experiment.name}-baselines"


def baseline_config(cfg: Config, strategy: str) -> Config:
    """The AL-only run that GALOT is compared with: same data, budgets, model and training."""
    # gal.* cannot influence an AL-only run; gal.adapt (which needs generation) is reset first.
    cfg = updated(updated(cfg, "gal", adapt="none"), "al", strategy=strategy)
    return updated(cfg, "experiment", runs_dir=str(baselines_dir(cfg)), name=strategy, mode="al")
