"""Train another architecture on a finished experiment's data — no text-to-image calls (paper §4.3).

The generated set is built once, for the experiment's own classifier, and is then an
ordinary labelled dataset: VGG, DenseNet or MobileNet train on the same real selections
plus the same synthetic images, read from the exported shards (``galot_core.export``).
Nothing here imports or loads a diffusion model, which is what makes a transfer cheap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from galot_core import export
from galot_core.checkpoint import save_classifier
from galot_core.config import Config
from galot_core.data import Dataset, load_dataset
from galot_core.errors import GalotError
from galot_core.io import atomic_write_json, read_json
from galot_core.models import build_model
from galot_core.devices import resolve_device
from galot_core.train import accuracy, fit
from galot_core.transforms import Preprocess


def transfer_dir(cfg: Config, arch: str) -> Path:
    return cfg.run_dir / "transfer" / arch


def transfer(cfg: Config, arch: str, dataset: Dataset | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``arch`` on the experiment's exported dataset and test it; resumable by its metrics file.

    Training follows ``train`` with epochs, minimum steps, learning rate and seed from
    ``transfer``; a result computed with other transfer settings is recomputed.
    """
    out = transfer_dir(cfg, arch)
    settings = {"arch": arch, "transfer": cfg.to_dict()["transfer"], "train": cfg.to_dict()["train"]}
    settings["transfer"].pop("archs")
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        done = read_json(metrics_path)
        if done.get("settings") == settings:
            return done
    dataset = dataset or load_dataset(cfg.data)
    source = cfg.run_dir / "dataset"
    images, labels, counts = export.load_training_set(source, dataset)
    if len(labels) == 0:
        raise GalotError(f"{source}: the experiment has no labelled or generated images yet; run a cycle first")
    t, tc = cfg.transfer, cfg.train
    train_cfg = tc.model_copy(update={"epochs": t.epochs, "min_steps": t.min_steps, "lr": t.lr})
    torch.manual_seed(t.seed)
    model = build_model(arch, dataset.channels, dataset.num_classes, cfg.model.dropout)
    preprocess = Preprocess(dataset.image_size, dataset.channels, dataset.mean, dataset.std)
    start = time.perf_counter()
    result = fit(model, images, labels, preprocess, train_cfg, natural=dataset.natural, seed=t.seed, progress=progress,
                 flip=dataset.auto_flip)
    acc = accuracy(model, dataset.test.images, dataset.test.labels, preprocess,
                   device=resolve_device(tc.device), batch_size=tc.eval_batch_size) if len(dataset.test) else None
    save_classifier(model, out / "model.safetensors", arch=arch, in_channels=dataset.channels)
    metrics = {"arch": arch, "test_accuracy": acc, "real": counts["real"], "generated": counts["generated"],
               "steps": result.steps, "seconds": round(time.perf_counter() - start, 3), "unet_calls": 0,
               "settings": settings}
    atomic_write_json(metrics_path, metrics)
    return metrics
