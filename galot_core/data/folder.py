"""An unlabelled folder of images plus a list of class names: the real user's starting point.

``data.dataset: folder`` reads every image under ``data.root`` (recursively, sorted,
hidden names skipped) into the AL pool with *unknown* labels (``-1``): nobody has said
what they show yet. The class names come from ``data.classes``; they are all that GAL and
TextOpt need (prompts), and the labels of the selected images come from a person
(``experiment.oracle: human``, galot_core/labels.py).

There is no ground truth to test against, so the test split is empty and test accuracy
is reported as unavailable — never estimated from the pool. A person who wants a number
can label a held-out set once and point ``data.test_root`` at it: one sub-folder per
class, named like the class (``_`` or ``-`` for spaces is fine).

Each pool image keeps its path relative to ``data.root`` (``Dataset.pool_files``); that
is the id a person sees in ``galot label export`` and uses in ``galot label import``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from galot_core.data.base import Dataset, ImageSet
from galot_core.data.imagefolder import (OnBadImage, _hidden, _size_and_mode, _visible_dirs, channel_stats,
                                         decode_images)
from galot_core.errors import GalotError, show_names
from galot_core.images import DEFAULT_MAX_PIXELS
from galot_core.names import check_class_names, name_key

_FIX_BAD = "remove or replace the file, or set data.on_bad_image: skip"


def load_folder(root: str | Path, classes: list[str] | tuple[str, ...], *, image_size: int | None = None,
                test_root: str | Path | None = None, on_bad_image: OnBadImage = "skip",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Every image under ``root`` as an unlabelled pool; the test split from ``test_root`` or empty."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GalotError(f"data.root: folder '{root}' does not exist; point data.root at the folder of your images")
    check_class_names("data.classes", classes)
    names = [" ".join(c.split()) for c in classes]
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root)))
    if not files:
        raise GalotError(f"data.root: '{root}' holds no files; put the images to label there")
    size, mode = _size_and_mode(files, image_size, None, max_pixels)
    images, kept = decode_images(files, size, mode, on_bad_image, fix=_FIX_BAD, max_pixels=max_pixels)
    if not kept:
        raise GalotError(f"data.root: no readable images in '{root}'; add image files (PNG, JPEG, ...)")
    pool = ImageSet(images, torch.full((len(kept),), -1, dtype=torch.int64))
    pool_files = tuple(files[i].relative_to(root).as_posix() for i in kept)
    test = _test_set(Path(test_root).expanduser(), names, size, mode, on_bad_image, max_pixels) if test_root else \
        ImageSet(torch.empty((0, len(mode), *size), dtype=torch.uint8), torch.empty((0,), dtype=torch.int64))
    mean, std = channel_stats(pool.images)
    # A user's folder may hold digits, text or left/right classes: no flips unless asked for.
    return Dataset(root.name or "folder", pool, test, names, natural=True, mean=mean, std=std,
                   pool_files=pool_files, root=str(root.resolve()), flip_invariant=False)


def _test_set(test_root: Path, names: list[str], size: tuple[int, int], mode: str,
              on_bad_image: OnBadImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """A labelled test set: ``test_root/<class>/*``, folder names matched to ``data.classes``."""
    if not test_root.is_dir():
        raise GalotError(f"data.test_root: folder '{test_root}' does not exist; point it at a folder with one "
                         "sub-folder per class, or remove data.test_root")
    by_name = {name_key(n): i for i, n in enumerate(names)}
    files: list[Path] = []
    labels: list[int] = []
    for folder in _visible_dirs(test_root):
        key = name_key(folder.name.replace("_", " ").replace("-", " "))
        if key not in by_name:
            raise GalotError(f"data.test_root: sub-folder '{folder.name}' is not one of data.classes "
                             f"({show_names(names)}); rename or remove it")
        found = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder)))
        files += found
        labels += [by_name[key]] * len(found)
    if not files:
        raise GalotError(f"data.test_root: '{test_root}' has no images in class sub-folders; add some or remove "
                         "data.test_root")
    images, kept = decode_images(files, size, mode, on_bad_image, fix=_FIX_BAD, max_pixels=max_pixels)
    return ImageSet(images, torch.tensor([labels[i] for i in kept], dtype=torch.int64))
