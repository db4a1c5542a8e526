"""Step 1 (Algorithm 1, line 5): select the real batch by σ_AL and have the oracle label it."""

from __future__ import annotations

import torch

from galot_core import acquisition
from galot_core import labels as labelling
from galot_core.context import Context
from galot_core.errors import GalotError
from galot_core.faults import failpoint


def select_real_batch(ctx: Context, cycle: int) -> list[int]:
    """Rank the unlabelled pool by σ_AL with the last cycle's classifier and label the top B_AL.

    The simulated oracle reads the labels from the dataset and commits them to pool.json;
    the human oracle writes the batch to ``labels/`` for :func:`receive_labels`. Resumes:
    a batch already selected for ``cycle`` is returned as it is, never selected again.
    """
    state = ctx.pool_state()
    already = [i for i, c in zip(state.labelled, state.cycles) if c == cycle]
    if already or ctx.cfg.experiment.mode == "gal":
        return already
    if ctx.human_oracle and (batch := labelling.read_batch(ctx.dir, cycle)) is not None:
        return batch.indices  # selected before a stop for labels
    n, unlabelled = ctx.cfg.al.budget_per_cycle, state.unlabelled_tensor()
    if n > len(unlabelled):
        raise GalotError(f"al.budget_per_cycle: {n} images asked in cycle {cycle} but only "
                         f"{len(unlabelled)} remain unlabelled; lower al.budget_per_cycle or experiment.cycles")
    model, head = ctx.load_model(cycle - 1) or (None, None)
    picked = [int(i) for i in acquisition.select(
        ctx.cfg.al.strategy, n, model=model, images=ctx.dataset.pool.images, unlabelled=unlabelled,
        labelled=state.labelled_tensor(), preprocess=ctx.preprocess, device=ctx.device,
        batch_size=ctx.cfg.train.eval_batch_size, mc_samples=ctx.cfg.al.mc_samples,
        generator=torch.Generator().manual_seed(ctx.seed(cycle, 1)), loss_head=head)]
    if ctx.human_oracle:
        labelling.write_batch(ctx.dir, cycle, picked, ctx.dataset)
    else:
        state.add(picked, ctx.dataset.pool.labels[picked], cycle)
        ctx.folder.write_pool(state)
    failpoint("select.after_save")
    return picked


def receive_labels(ctx: Context, cycle: int) -> dict[str, int]:
    """The human oracle's answers for the cycle's batch, committed to ``pool.json`` in one write.

    Raises :class:`galot_core.labels.WaitingForLabels` while any image of the batch has no
    answer. "skip" answers leave the pool (never offered again) and are not labels.
    """
    if not ctx.human_oracle:
        return {}
    batch = labelling.read_batch(ctx.dir, cycle)
    if batch is None:
        raise GalotError(f"{ctx.folder.label_batch_path(cycle)}: cycle {cycle} has no selected batch; run its "
                         "select step first")
    with ctx.folder.labels_lock():  # no answer can change between reading and committing them
        state = ctx.pool_state()
        answers = labelling.read_answers(ctx.dir, cycle)
        if not labelling.committed(batch, {"labelled": state.labelled, "removed": state.removed}):
            left = labelling.missing(batch, answers)
            if left:
                raise labelling.WaitingForLabels(ctx.dir, cycle, len(left), len(batch.items))
            picked, classes, skipped = labelling.split_answers(batch, answers)
            state.add(picked, classes, cycle)
            state.remove(skipped)
            ctx.folder.write_pool(state)
    skipped = sum(1 for a in answers if a["answer"] == labelling.SKIP)
    return {"labelled": len(batch.items) - skipped, "skipped": skipped}
