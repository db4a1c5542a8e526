"""Tiny ImageNet (200 classes, 64×64) from its standard extracted ``tiny-imagenet-200`` folder.

The official test split ships without labels, so the labelled validation split is the
held-out test here and the training split is the pool. Class ids are WordNet ids
("n01443537"); prompts need words, so the first synonym in ``words.txt`` names a class.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from galot_core.data.base import Dataset, ImageSet
from galot_core.data.imagefolder import decode_images
from galot_core.errors import GalotError, show_names

FOLDER = "tiny-imagenet-200"
NATIVE_SIZE = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_tinyimagenet(root: str | Path, image_size: int | None = None) -> Dataset:
    """Load Tiny ImageNet from ``root`` (the ``tiny-imagenet-200`` folder or its parent).

    ``image_size`` resizes every image (e.g. 32 for a faster run); None keeps 64×64.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise GalotError(f"data.image_size: must be a positive integer or unset, got {image_size!r}")
    base = _base_folder(Path(root).expanduser())
    wnids = _read_lines(base / "wnids.txt")
    names = _class_names(base / "words.txt", wnids)
    index = {wnid: label for label, wnid in enumerate(wnids)}
    size = image_size or NATIVE_SIZE
    pool = _decode(*_train_files(base, wnids), size)
    test = _decode(*_val_files(base, index), size)
    return Dataset("tinyimagenet", pool, test, names, natural=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _base_folder(root: Path) -> Path:
    base = root / FOLDER if (root / FOLDER).is_dir() else root
    if not (base / "wnids.txt").is_file():
        raise GalotError(
            f"data.root: no Tiny ImageNet in '{root}' (wnids.txt not found); point data.root at the extracted "
            f"'{FOLDER}' folder or its parent"
        )
    return base


def _read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a required text file."""
    if not path.is_file():
        raise GalotError(f"data.root: Tiny ImageNet file '{path}' is missing; extract the full '{FOLDER}' archive")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _class_names(words_file: Path, wnids: list[str]) -> list[str]:
    """First synonym per wnid ("goldfish, Carassius auratus" → "goldfish").

    Where two classes share a first synonym the full synonym list names them, so no two
    classes ever get the same prompt.
    """
    words = dict(line.split("\t", 1) for line in _read_lines(words_file) if "\t" in line)
    missing = [wnid for wnid in wnids if wnid not in words]
    if missing:
        raise GalotError(
            f"data.root: '{words_file}' has no entry for {show_names(missing)}; extract the full '{FOLDER}' archive"
        )
    first = [words[wnid].split(",")[0].strip() for wnid in wnids]
    counts = Counter(first)
    return [name if counts[name] == 1 else words[wnid].strip() for name, wnid in zip(first, wnids)]


def _train_files(base: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images_dir = base / "train" / wnid / "images"
        found = sorted(images_dir.glob("*.JPEG")) if images_dir.is_dir() else []
        if not found:
            raise GalotError(
                f"data.root: Tiny ImageNet folder '{images_dir}' is missing or empty; "
                f"extract the full '{FOLDER}' archive"
            )
        files += found
        labels += [label] * len(found)
    return files, labels


def _val_files(base: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Validation images and labels from ``val_annotations.txt`` (file<TAB>wnid<TAB>box)."""
    annotations = base / "val" / "val_annotations.txt"
    files: list[Path] = []
    labels: list[int] = []
    for line in _read_lines(annotations):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise GalotError(
                f"data.root: unexpected line in '{annotations}': {line!r}; extract the full '{FOLDER}' archive again"
            )
        files.append(base / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return files, labels


def _decode(files: list[Path], labels: list[int], size: int) -> ImageSet:
    """Decode RGB at ``size``; a bad file in the official archive means a broken extraction."""
    images, _ = decode_images(files, (size, size), "RGB", "fail", fix=f"extract the full '{FOLDER}' archive again")
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64))
