"""Real datasets by name, each giving an AL pool, a test split and human class names."""

from __future__ import annotations

from galot_core.config import DataConfig
from galot_core.data.base import Dataset, ImageSet
from galot_core.data.pool import PoolState

__all__ = ["Dataset", "ImageSet", "PoolState", "load_dataset"]


def load_dataset(cfg: DataConfig) -> Dataset:
    """The dataset named by ``data.dataset``, decoded into memory."""
    if cfg.dataset == "mnist5k":
        from galot_core.data.mnist5k import load_mnist5k

        return load_mnist5k()
    if cfg.dataset == "fashion_mnist":
        from galot_core.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(cfg.root)
    if cfg.dataset in ("cifar10", "cifar100"):
        from galot_core.data.torchvision_sets import load_cifar

        return load_cifar(cfg.root, num_classes=10 if cfg.dataset == "cifar10" else 100, download=cfg.download)
    if cfg.dataset == "tinyimagenet":
        from galot_core.data.tinyimagenet import load_tinyimagenet

        return load_tinyimagenet(cfg.root, image_size=cfg.image_size)
    if cfg.dataset == "imagefolder":
        from galot_core.data.imagefolder import load_imagefolder

        return load_imagefolder(cfg.root, class_names_file=cfg.class_names_file, image_size=cfg.image_size,
                                test_fraction=cfg.test_fraction, on_bad_image=cfg.on_bad_image,
                                max_pixels=cfg.max_pixels)
    if cfg.dataset == "folder":
        from galot_core.data.folder import load_folder

        return load_folder(cfg.root, cfg.classes or (), image_size=cfg.image_size, test_root=cfg.test_root,
                           on_bad_image=cfg.on_bad_image, max_pixels=cfg.max_pixels)
    raise ValueError(cfg.dataset)  # unreachable: config validation restricts the names
