"""One GALOT cycle, Algorithm 1 lines 5–10, in order: the only place the steps are sequenced.

:func:`run_cycle` reads top to bottom like the algorithm. *Where* each step runs is the
:class:`Executor`'s business: :class:`InProcess` calls the step functions here (tests,
benchmarks, the Python API), ``flows.galot`` passes one that runs each step as a Prefect
task and fans TextOpt groups and generation shards out over its task runner (threads or
Dask). Either way the steps, their order and their results are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from galot_core.context import Context
from galot_core.errors import GalotError
from galot_core.steps import (adapt_generator, evaluate_cycle, export_cycle, generate_shard, generation_shards, merge_embeddings,
                              merge_generated, optimize_group, receive_labels, select_real_batch, textopt_groups,
                              train_classifier)

Step = Callable[..., Any]


class Executor(Protocol):
    def one(self, step: Step, ctx: Context, cycle: int, *args: Any) -> Any:
        """Run ``step(ctx, cycle, *args)`` and return its result."""

    def each(self, step: Step, ctx: Context, cycle: int, keys: list[int]) -> list[Any]:
        """Run ``step(ctx, cycle, key)`` for every key, in any order or in parallel; all results."""

    def wait_for_labels(self, ctx: Context, cycle: int) -> None:
        """Return once a person has labelled the cycle's batch (or raise WaitingForLabels)."""


class InProcess:
    """Every step in this process, one after the other."""

    def one(self, step: Step, ctx: Context, cycle: int, *args: Any) -> Any:
        return step(ctx, cycle, *args)

    def each(self, step: Step, ctx: Context, cycle: int, keys: list[int]) -> list[Any]:
        return [step(ctx, cycle, key) for key in keys]

    def wait_for_labels(self, ctx: Context, cycle: int) -> None:
        pass  # receive_labels raises WaitingForLabels while answers are missing


@contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t, 3)


def next_cycle(ctx: Context) -> int:
    """The first incomplete cycle; a one-line error when all ``experiment.cycles`` are complete."""
    cycle = ctx.folder.completed_cycles() + 1
    if cycle > ctx.cfg.experiment.cycles:
        raise GalotError(f"experiment.cycles: all {ctx.cfg.experiment.cycles} cycles of '{ctx.cfg.experiment.name}' "
                         "are complete; raise experiment.cycles to go on")
    return cycle


def run_cycle(ctx: Context, cycle: int, do: Executor | None = None) -> dict[str, Any]:
    """Advance the experiment by cycle ``cycle``; returns its metrics (see steps.evaluate.CycleMetrics).

    The cycle holds the run lock (RunFolder.run_lock) from its first step to its metrics,
    whoever called it — the CLI, a flow function, a Prefect deployment's flow run, the Python
    API — so two processes never advance one run folder at once; the second is refused in one
    line. The merge steps run here, in the process holding it; fanned-out parts (on Dask
    workers) write only their own part files, and the lock is held while they run.
    """
    with ctx.folder.run_lock():
        return _run_cycle(ctx, cycle, do or InProcess())


def _run_cycle(ctx: Context, cycle: int, do: Executor) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    # 1. Select the real batch by σ_AL; the oracle labels it (line 5).
    with timed(seconds, "select"):
        do.one(select_real_batch, ctx, cycle)
    if ctx.human_oracle:
        do.wait_for_labels(ctx, cycle)  # waiting for a person is not work: not timed
        with timed(seconds, "labels"):
            do.one(receive_labels, ctx, cycle)
    if ctx.uses_generation:
        # 2a. Adapt the generator to the labelled images (gal.adapt; none = the paper).
        if ctx.cfg.gal.adapt != "none":
            with timed(seconds, "adapt"):
                do.one(adapt_generator, ctx, cycle)
        # 2. Optimise the text embeddings s* → s by TextOpt, per group of classes (lines 6–8).
        with timed(seconds, "textopt"):
            if not ctx.folder.embeddings_path(cycle).exists():
                do.each(optimize_group, ctx, cycle, list(range(len(textopt_groups(ctx)))))
            do.one(merge_embeddings, ctx, cycle)
        # 3. Generate B_GAL images from s, per shard, pseudo-labelled by their class (line 9).
        with timed(seconds, "generate"):
            do.each(generate_shard, ctx, cycle, generation_shards(ctx, cycle))
            do.one(merge_generated, ctx, cycle)
    # 4. Train a fresh classifier on the labelled ∪ generated images (line 10).
    with timed(seconds, "train"):
        do.one(train_classifier, ctx, cycle)
    with timed(seconds, "export"):
        do.one(export_cycle, ctx, cycle)
    # 5. Evaluate it; its metrics mark the cycle complete.
    return do.one(evaluate_cycle, ctx, cycle, seconds)


def run(ctx: Context, do: Executor | None = None) -> list[dict[str, Any]]:
    """Every remaining cycle of the experiment; returns all cycles' metrics."""
    ctx.check()  # parameters that cannot work are refused before the lock makes the run folder
    with ctx.folder.run_lock():  # from the config it writes to the last cycle's metrics
        ctx.start()
        while ctx.folder.completed_cycles() < ctx.cfg.experiment.cycles:
            run_cycle(ctx, next_cycle(ctx), do)
        return ctx.folder.all_metrics()
