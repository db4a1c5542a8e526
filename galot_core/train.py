"""Training and evaluation of a classifier: one loop that fits on a screen.

As in the paper (and deepALplus), the classifier is retrained from scratch every cycle
on everything labelled so far plus the cycle's generated images: SGD with momentum and
weight decay, a cosine learning-rate schedule, crop (+ flip for natural images whose
classes survive a mirror: never by default for a user's own folder) augmentation. The paper's 300 epochs are GPU-sized; ``train.epochs`` scales that down,
and ``train.min_steps`` keeps the first cycles (a few dozen labels) from ending after a
handful of SGD steps. Everything is seeded: the same inputs and seed give the same model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from galot_core.config import TrainConfig
from galot_core.devices import resolve_device
from galot_core.faults import failpoint
from galot_core.models import Classifier, LossPredictionHead, loss_prediction_loss, mc_dropout
from galot_core.transforms import Preprocess, augment


def auto_augment(natural: bool, flip: bool | None = None) -> str:
    """What ``train.augment: auto`` means for a dataset: crop, plus flips where they keep the class."""
    return "crop+flip" if (natural if flip is None else flip) else "crop"


@dataclass
class FitResult:
    steps: int
    epochs: float
    final_loss: float
    seconds: float


def fit(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Preprocess,
    cfg: TrainConfig,
    *,
    natural: bool,
    seed: int,
    loss_head: LossPredictionHead | None = None,
    progress: bool = False,
    flip: bool | None = None,
) -> FitResult:
    """Train ``model`` in place on uint8 ``images`` (N, C, H, W) and ``labels`` (N,).

    ``flip``: whether ``train.augment: auto`` includes horizontal flips (default: ``natural``;
    pass the dataset's ``auto_flip``, which is off for a user's folder)."""
    if len(images) < 2:
        raise ValueError("need at least 2 training images")
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    preprocess.to(device)
    opt = _optimizer(model, loss_head, cfg, device)

    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    mode = cfg.augment if cfg.augment != "auto" else auto_augment(natural, flip)
    crop, flip = mode in ("crop", "crop+flip"), mode == "crop+flip"
    pad = max(1, images.shape[-1] // 8) if natural else max(1, images.shape[-1] // 14)

    start, step, loss_value = time.perf_counter(), 0, float("nan")
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, leave=False)
    while step < total:
        order = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # batch norm cannot train on a single image
                continue
            x = augment(images[idx], crop=crop, flip=flip, generator=g, pad=pad)
            x, y = preprocess(x.to(device)), labels[idx].to(device)
            loss = _batch_loss(model, loss_head, x, y, late=step > 0.6 * total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_value = float(loss.detach())
            bar.update(1)
            failpoint("train.step")
            if step >= total:
                break
    bar.close()
    model.eval()
    return FitResult(steps=step, epochs=step / steps_per_epoch, final_loss=loss_value,
                     seconds=time.perf_counter() - start)


def _optimizer(model: Classifier, loss_head: LossPredictionHead | None, cfg: TrainConfig,
               device: torch.device) -> torch.optim.SGD:
    """SGD over the classifier's parameters and, when there is one, the loss-prediction head's
    (moved to ``device`` and put in train mode here)."""
    params = list(model.parameters()) + (list(loss_head.parameters()) if loss_head is not None else [])
    if loss_head is not None:
        loss_head.to(device).train()
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _batch_loss(model: Classifier, loss_head: LossPredictionHead | None, x: torch.Tensor, y: torch.Tensor,
                *, late: bool) -> torch.Tensor:
    """Mean cross-entropy of one batch, plus the loss-prediction ranking loss when there is a head."""
    feats = model.embed(x)
    per_sample = F.cross_entropy(model.classify(feats), y, reduction="none")
    loss = per_sample.mean()
    if loss_head is not None:
        # As in Learning Loss: stop the ranking loss from shaping the features late in training.
        f = feats.detach() if late else feats
        loss = loss + loss_prediction_loss(loss_head(f), per_sample)
    return loss


@torch.no_grad()
def predict(
    model: Classifier,
    images: torch.Tensor,
    preprocess: Preprocess,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    mc_samples: int = 0,
    loss_head: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Model outputs on ``images``, in batches, on the CPU.

    Returns ``logits`` (N, C), ``probs`` (N, C) and ``features`` (N, D); with
    ``mc_samples`` > 0 also ``mc_probs`` (T, N, C) from Monte-Carlo dropout, and with a
    ``loss_head`` the predicted losses ``pred_loss`` (N,).
    """
    device = torch.device(device)
    model.to(device).eval()
    preprocess.to(device)
    out: dict[str, list[torch.Tensor]] = {"logits": [], "features": [], "mc_probs": [], "pred_loss": []}
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i:i + batch_size].to(device))
        feats = model.embed(x)
        out["features"].append(feats.cpu())
        out["logits"].append(model.classify(feats).cpu())
        if loss_head is not None:
            out["pred_loss"].append(loss_head.to(device).eval()(feats).cpu())
        if mc_samples:
            with mc_dropout(model):
                out["mc_probs"].append(torch.stack([model.classify(feats).softmax(1).cpu() for _ in range(mc_samples)]))
    result = {"logits": torch.cat(out["logits"]), "features": torch.cat(out["features"])}
    result["probs"] = result["logits"].softmax(1)
    if mc_samples:
        result["mc_probs"] = torch.cat(out["mc_probs"], dim=1)
    if loss_head is not None:
        result["pred_loss"] = torch.cat(out["pred_loss"])
    return result


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, preprocess: Preprocess, *,
             device: torch.device | str = "cpu", batch_size: int = 512) -> float:
    logits = predict(model, images, preprocess, device=device, batch_size=batch_size)["logits"]
    return float((logits.argmax(1) == labels).float().mean())
