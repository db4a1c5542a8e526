"""``fashion_mnist``: the second embedded world — 70,000 real Fashion-MNIST photos of clothing.

``mnist5k`` is saturated (97 % with 200 labels against 98 % fully supervised), so no variant of
GALOT can show an effect there. Fashion-MNIST (Zalando, MIT licence) has headroom: 28×28 grey
product photos in 10 classes, several of which a small CNN confuses (shirt, t-shirt, pullover,
coat). It reaches this machine offline through Debian's ``dataset-fashion-mnist`` package, which
installs the four IDX files under ``/usr/share/datasets/fashion-mnist/``; ``data.root`` may name
any folder holding the same four files (a user's own copy). They are read with numpy and gzip.

The split is fixed by a seed that no experiment parameter changes, stratified by class and
disjoint:

* ``t2i_train`` (2,000 per class, from the 60k training images) — only for pretraining this
  world's galot-mini;
* ``pool`` (500 per class, from the remaining training images) — the AL pool;
* ``val`` (200 per class, from the remaining training images) — for choosing methods and
  settings (never the test set);
* ``test`` — the official 10,000 test images.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from galot_core.data.base import Dataset, ImageSet
from galot_core.errors import GalotError

# The words a person would put into a prompt (Zalando's names: "T-shirt/top", "Trouser", …).
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SPLIT_SEED = 20261202
PER_CLASS = {"t2i_train": 2000, "pool": 500, "val": 200}  # drawn from the training images, in this order

# Captions for pretraining this world's galot-mini: templates × words (synonyms per class).
# The paper's template "a realistic photo of a {label}" is deliberately not among them, as for
# the digits: GALOT's prompts then test zero-shot generalisation through the text encoder.
CAPTION_TEMPLATES = (
    "{w}",
    "a photo of a {w}",
    "a product photo of a {w}",
    "a grayscale picture of a {w}",
    "an image of a {w}",
    "a {w} on a black background",
    "a small photo of a {w}",
    "a catalogue image of a {w}",
    "a picture showing a {w}",
    "a {w}, front view",
    "clothing: {w}",
    "a low resolution photo of a {w}",
)
SYNONYMS = (
    ("t-shirt", "top", "tee"),
    ("trouser", "trousers", "pants"),
    ("pullover", "sweater", "jumper"),
    ("dress", "summer dress", "gown"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "sandals", "summer shoe"),
    ("shirt", "button-up shirt", "blouse"),
    ("sneaker", "sneakers", "trainer"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape (uint8 data only)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise GalotError(f"data.root: {path} is not an IDX file of unsigned bytes; use the Fashion-MNIST files "
                         "from `apt-get install dataset-fashion-mnist`")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise GalotError(f"data.root: {path} is truncated or has trailing bytes (header says {shape}); "
                         "reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_root(root: str | None) -> Path:
    """The folder holding the four IDX files: ``data.root`` if it has them, else Debian's."""
    names = [n for pair in FILES.values() for n in pair]
    candidates = [Path(root)] if root else []
    candidates.append(Path(DEBIAN_ROOT))
    for c in candidates:
        if all((c / n).is_file() for n in names):
            return c
    raise GalotError(f"data.root: the Fashion-MNIST files ({', '.join(names)}) are in neither "
                     f"{' nor '.join(str(c) for c in candidates)}; run `apt-get install dataset-fashion-mnist` "
                     "(as root) or set data.root to a folder holding them")


def _load(root: Path, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = (read_idx(root / name) for name in FILES[part])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or (labels.size and labels.max() > 9):
        raise GalotError(f"data.root: {root} does not hold Fashion-MNIST's {part} files (images {images.shape}, "
                         f"labels {labels.shape}); use the files of `apt-get install dataset-fashion-mnist`")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def split_indices(labels: torch.Tensor, per_class: dict[str, int] = PER_CLASS) -> dict[str, torch.Tensor]:
    """Deterministic stratified split of the training images: per class, one fixed permutation cut in order."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in per_class}
    for c in range(len(CLASS_NAMES)):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if len(idx) < sum(per_class.values()):
            raise GalotError(f"data.root: class '{CLASS_NAMES[c]}' has {len(idx)} training images, fewer than the "
                             f"{sum(per_class.values())} the split needs; use the full Fashion-MNIST files")
        start = 0
        for name, count in per_class.items():
            parts[name].append(idx[start:start + count])
            start += count
    return {name: torch.sort(torch.cat(chunks)).values for name, chunks in parts.items()}


def captions() -> list[list[str]]:
    """Pretraining captions per class: every template with every synonym of the class."""
    return [[t.format(w=w) for t in CAPTION_TEMPLATES for w in words] for words in SYNONYMS]


def load_fashion_mnist(root: str | None = None) -> Dataset:
    folder = find_root(root)
    train_x, train_y = _load(folder, "train")
    test_x, test_y = _load(folder, "test")
    split = split_indices(train_y)
    part = {name: ImageSet(train_x[idx], train_y[idx]) for name, idx in split.items()}
    return Dataset(
        name="fashion_mnist",
        pool=part["pool"],
        test=ImageSet(test_x, test_y),
        class_names=list(CLASS_NAMES),
        natural=True,  # clothing is left/right symmetric: crop + flip
        t2i_train=part["t2i_train"],
        val=part["val"],
        t2i_captions=captions(),
        mean=(0.2860,),
        std=(0.3530,),
        root=str(folder),
    )
