"""What every dataset gives the rest of galot: decoded images in memory and class names.

Images are held as one ``uint8`` tensor (N, C, H, W) per split, decoded once. Training,
selection and evaluation then never touch the file system or PIL again, which keeps a
cycle fast on a laptop CPU and makes generated and real images interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images (uint8, N×C×H×W) with integer labels (int64, N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be int64 with one label per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices])


@dataclass
class Dataset:
    """A classification task: an AL pool, a held-out test split and the class names.

    ``class_names`` are the words put into prompts ("seven", "airplane"); they are what
    the text-to-image model sees, so they must be human words, not folder ids.
    ``t2i_train`` is only set for datasets that ship a split reserved for pretraining the
    embedded diffusion model; it is disjoint from ``pool`` and ``test``.
    ``natural`` selects crop+flip augmentation; digits get crop-only (a flip changes them).
    ``flip_invariant`` overrides the flip part of that (``None``: flips iff ``natural``): a
    user's own folder is ``False``, because galot cannot know whether a mirror image is still
    the same class (digits, text, signs, arrows, left/right classes are not).
    ``val`` is a labelled split disjoint from pool, test and ``t2i_train`` for choosing methods and
    settings without touching the test set (embedded worlds only). ``t2i_captions`` are the
    per-class captions the embedded model is pretrained with (default: the digits').
    ``pool_files`` (folder datasets) is each pool image's path relative to ``root``: the id a
    person labelling it sees. Pool labels are ``-1`` where nobody knows them yet (``folder``).
    """

    name: str
    pool: ImageSet
    test: ImageSet
    class_names: list[str]
    natural: bool = True
    t2i_train: ImageSet | None = None
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.5,))
    pool_files: tuple[str, ...] | None = None
    root: str | None = None
    val: ImageSet | None = None
    t2i_captions: list[list[str]] | None = None
    flip_invariant: bool | None = None

    @property
    def auto_flip(self) -> bool:
        """Whether ``train.augment: auto`` flips this dataset's images horizontally."""
        return self.natural if self.flip_invariant is None else self.flip_invariant

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.pool.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.pool.images.shape[-1])
