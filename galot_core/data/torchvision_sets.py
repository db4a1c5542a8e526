"""CIFAR-10 and CIFAR-100 through torchvision, as in-memory :class:`Dataset` objects.

torchvision owns the file format, the download and the md5 checks; this module only
turns its arrays into galot's uint8 tensors and its class ids into prompt words, and
turns "not found" into a message that says how to provide the files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from galot_core.data.base import Dataset, ImageSet
from galot_core.errors import GalotError

# Per-channel statistics of the CIFAR training sets in [0, 1] units.
_STATS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_cifar(root: str | Path, num_classes: int, download: bool) -> Dataset:
    """Load CIFAR-``num_classes`` from ``root`` (train → pool, test → test).

    ``root`` is the folder that holds the extracted ``cifar-10-batches-py`` /
    ``cifar-100-python`` folder (pointing at that folder itself also works).
    """
    if num_classes not in _STATS:
        raise GalotError(f"data.num_classes: CIFAR comes with 10 or 100 classes, got {num_classes!r}; use 10 or 100")
    cls = CIFAR10 if num_classes == 10 else CIFAR100
    root = Path(root).expanduser()
    if root.name == cls.base_folder:
        root = root.parent
    title = f"CIFAR-{num_classes}"
    train = _open(cls, title, root, train=True, download=download)
    test = _open(cls, title, root, train=False, download=False)
    mean, std = _STATS[num_classes]
    return Dataset(
        name=f"cifar{num_classes}",
        pool=_to_imageset(train),
        test=_to_imageset(test),
        class_names=[name.replace("_", " ") for name in train.classes],
        natural=True,
        mean=mean,
        std=std,
    )


def _open(cls: type[CIFAR10], title: str, root: Path, *, train: bool, download: bool) -> CIFAR10:
    """Construct the torchvision dataset, turning missing files and failed downloads into GalotError."""
    where = f"'{root / cls.base_folder}'"
    try:
        return cls(str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "not found or corrupted"
        if (root / cls.base_folder).is_dir():
            raise GalotError(
                f"data.root: CIFAR files in {where} are incomplete or corrupted (md5 mismatch); set "
                "data.download: true to fetch a fresh copy, or extract the archive there again"
            ) from exc
        raise GalotError(
            f"data.root: no {title} data in {where}; set data.download: true "
            f"(on a machine with network) or place the extracted '{cls.base_folder}' folder under data.root"
        ) from exc
    except OSError as exc:  # URLError and friends: no network, proxy, disk full
        raise GalotError(
            f"data.download: downloading {title} into '{root}' failed ({' '.join(str(exc).split())}); "
            f"run on a machine with network or place the extracted '{cls.base_folder}' folder under data.root"
        ) from exc


def _to_imageset(split: CIFAR10) -> ImageSet:
    """torchvision's HWC numpy array and label list as uint8 NCHW and int64 tensors."""
    images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.as_tensor(split.targets, dtype=torch.int64))
