"""Step 4 (Algorithm 1, line 10): a fresh classifier on the real labelled ∪ generated images."""

from __future__ import annotations

from typing import Any

import torch

from galot_core.checkpoint import save_classifier
from galot_core.context import Context
from galot_core.errors import GalotError
from galot_core.models import LossPredictionHead, build_model
from galot_core.train import fit


def training_set(ctx: Context, cycle: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real labelled images ∪ the generated images the cycle trains on, as uint8 and labels."""
    state = ctx.pool_state()
    d = ctx.dataset
    generated = [ctx.generated_images(c) for c in ctx.synthetic_cycles(cycle)]
    images = [d.pool.images[state.labelled_tensor()]] + [x for x, _ in generated]
    targets = [state.labels_tensor()] + [y for _, y in generated]
    if not generated:  # the same empty synthetic tensors the set always had
        images.append(torch.zeros((0, d.channels, d.image_size, d.image_size), dtype=torch.uint8))
        targets.append(torch.zeros(0, dtype=torch.int64))
    return torch.cat(images), torch.cat(targets)


def train_classifier(ctx: Context, cycle: int) -> dict[str, Any]:
    """Train the cycle's classifier from scratch (seeded per cycle); returns how it was trained."""
    done = ctx.folder.read_train_info(cycle)
    if done is not None:
        return done
    images, targets = training_set(ctx, cycle)
    if len(targets) == 0:
        raise GalotError(f"cycle {cycle}: nothing to train on — no labelled or generated images (every image "
                         "so far was answered skip?); raise al.budget_per_cycle or label more images")
    cfg, d = ctx.cfg, ctx.dataset
    seed = ctx.seed(cycle, 2)
    torch.manual_seed(seed)
    model = build_model(cfg.model.arch, d.channels, d.num_classes, cfg.model.dropout)
    head = LossPredictionHead(model.feature_dim) if cfg.al.strategy == "LossPrediction" else None
    result = fit(model, images, targets, ctx.preprocess, cfg.train, natural=d.natural, seed=seed, flip=d.auto_flip,
                 loss_head=head, progress=True)
    save_classifier(model, ctx.folder.model_path(cycle), arch=cfg.model.arch, in_channels=d.channels, loss_head=head)
    info = {"train_images": len(images), "steps": result.steps, "epochs": result.epochs,
            "final_loss": result.final_loss, "seconds": result.seconds}
    ctx.folder.write_train_info(cycle, info)
    return info
