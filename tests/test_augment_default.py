"""A user's folder is not flipped by default: digits written to PNGs stay unmirrored.

`train.augment: auto` used to mean crop+flip for every imagefolder/folder dataset; on a
folder of handwritten digits (not flip-invariant) that cost 16 points of accuracy at 100
labels. Now flips need `train.augment: crop+flip`; built-in natural-image sets keep them.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from galot_core import train as train_mod
from galot_core.config import TrainConfig
from galot_core.data.base import Dataset
from galot_core.models import build_model
from galot_core.transforms import Preprocess


@pytest.fixture(scope="module")
def digit_imagefolder(tmp_path_factory, mnist5k):
    """An imagefolder of real digits: root/<class>/<k>.png, 8 per class."""
    root = tmp_path_factory.mktemp("digit-imagefolder")
    for c, name in enumerate(mnist5k.class_names):
        for k, i in enumerate((mnist5k.pool.labels == c).nonzero().flatten()[:8].tolist()):
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(mnist5k.pool.images[i, 0].numpy()).save(root / name / f"{k}.png")
    return root


def _flips_used(monkeypatch, dataset: Dataset, augment: str) -> set[bool]:
    """Train a few steps the way galot does and record every flip decision."""
    seen: set[bool] = set()
    real = train_mod.augment

    def spy(images, *, crop, flip, generator, pad):
        seen.add(flip)
        return real(images, crop=crop, flip=flip, generator=generator, pad=pad)

    monkeypatch.setattr(train_mod, "augment", spy)
    model = build_model("small_cnn", dataset.channels, dataset.num_classes, 0.2)
    pre = Preprocess(dataset.image_size, dataset.channels, dataset.mean, dataset.std)
    cfg = TrainConfig(epochs=1, min_steps=2, batch_size=16, device="cpu", augment=augment)
    train_mod.fit(model, dataset.pool.images, dataset.pool.labels, pre, cfg, natural=dataset.natural, seed=0,
                  flip=dataset.auto_flip)
    return seen


@pytest.mark.parametrize("dataset_kind", ["imagefolder", "folder"])
def test_default_does_not_flip_a_users_digit_folder(monkeypatch, tmp_path, one_thread, digit_imagefolder,
                                                    dataset_kind):
    import yaml

    from galot_core.params_file import load_config
    from galot_core.data import load_dataset

    data = {"dataset": dataset_kind, "root": str(digit_imagefolder)}
    if dataset_kind == "folder":
        data["classes"] = sorted(p.name for p in digit_imagefolder.iterdir())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data, "experiment": {"oracle": "human"}}))
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.train.augment == "auto"  # the default
    dataset = load_dataset(cfg.data)
    if dataset_kind == "folder":  # unlabelled: give the test its labels so fit can run
        dataset.pool.labels[:] = torch.arange(len(dataset.pool)) % dataset.num_classes
    assert dataset.natural and not dataset.auto_flip
    assert _flips_used(monkeypatch, dataset, "auto") == {False}
    # Asked for explicitly, flips happen (so the spy above can see them).
    assert _flips_used(monkeypatch, dataset, "crop+flip") == {True}


def test_builtin_sets_keep_their_defaults(monkeypatch, one_thread, tiny_digits):
    assert not tiny_digits.auto_flip and _flips_used(monkeypatch, tiny_digits, "auto") == {False}
    photos = Dataset("photos", tiny_digits.pool, tiny_digits.test, list(tiny_digits.class_names), natural=True)
    assert photos.auto_flip and _flips_used(monkeypatch, photos, "auto") == {True}
    assert train_mod.auto_augment(True, False) == "crop" and train_mod.auto_augment(True) == "crop+flip"
