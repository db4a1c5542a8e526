"""The judge: a classifier trained on the whole labelled pool, standing in for a human.

The paper checks pseudo-labels by human annotation (Section 4.4). Offline, the best
stand-in is the fully-supervised classifier — every pool image labelled — which also
gives the "fully supervised" reference of Figure 3. A generated image counts as correctly
pseudo-labelled when the judge assigns it the class it was prompted with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from galot_core.checkpoint import load_classifier, save_classifier
from galot_core.config import TrainConfig
from galot_core.data.base import Dataset
from galot_core.models import Classifier, build_model
from galot_core.train import fit, predict
from galot_core.transforms import Preprocess

JUDGE_TRAIN = TrainConfig(epochs=30, min_steps=0, batch_size=64, lr=0.05)


def preprocess_for(dataset: Dataset) -> Preprocess:
    return Preprocess(dataset.image_size, dataset.channels, dataset.mean, dataset.std)


def load_or_train_judge(dataset: Dataset, path: str | Path, arch: str = "small_cnn", seed: int = 0,
                        train_cfg: TrainConfig = JUDGE_TRAIN) -> Classifier:
    """The fully-supervised classifier for ``dataset``, trained once and cached at ``path``."""
    path = Path(path)
    if path.exists():
        return load_classifier(path)[0]
    torch.manual_seed(seed)
    model = build_model(arch, dataset.channels, dataset.num_classes, dropout=0.2)
    fit(model, dataset.pool.images, dataset.pool.labels, preprocess_for(dataset), train_cfg,
        natural=dataset.natural, seed=seed, progress=True, flip=dataset.auto_flip)
    save_classifier(model, path, arch=arch, in_channels=dataset.channels)
    return model


def judged_accuracy(judge: Classifier, images: torch.Tensor, prompted: torch.Tensor, dataset: Dataset) -> float:
    """Fraction of generated images (uint8 or [0, 1] float) the judge puts in their prompted class."""
    logits = predict(judge, images, preprocess_for(dataset))["logits"]
    return float((logits.argmax(1) == prompted).float().mean())
