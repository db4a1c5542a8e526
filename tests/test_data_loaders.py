"""The CIFAR and Tiny ImageNet loaders on tiny fake data written to tmp dirs (the image-folder
loader: tests/test_data_imagefolder.py).

No test touches the network: the CIFAR files are written in torchvision's pickle format
and its md5 check is bypassed (their real checksums belong to the real archives).
"""

from __future__ import annotations

import pickle
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image

from galot_core.data.tinyimagenet import IMAGENET_MEAN, IMAGENET_STD, load_tinyimagenet
from galot_core.data.torchvision_sets import load_cifar
from galot_core.errors import GalotError


@contextmanager
def raises_one_line(*fragments: str) -> Iterator[None]:
    """Expect a GalotError whose message is one line containing every fragment."""
    with pytest.raises(GalotError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------------------- CIFAR


def _pixels(n: int, offset: int) -> np.ndarray:
    """n CIFAR rows (3072 bytes, channel-major) whose content depends on index and offset."""
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def _fake_cifar10(root: Path, names: list[str]) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for batch in range(1, 6):
        data, batch_labels = _pixels(2, batch), [(2 * batch) % 10, (2 * batch + 1) % 10]
        _dump(folder / f"data_batch_{batch}", {"data": data, "labels": batch_labels})
        rows.append(data)
        labels += batch_labels
    _dump(folder / "test_batch", {"data": _pixels(3, 99), "labels": [0, 1, 2]})
    _dump(folder / "batches.meta", {"label_names": names})
    return np.vstack(rows), labels


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


CIFAR10_NAMES = ["airplane", "sports_car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_loads_train_as_pool_and_test_as_test(tmp_path: Path, no_md5: None) -> None:
    rows, labels = _fake_cifar10(tmp_path, CIFAR10_NAMES)
    data = load_cifar(tmp_path, 10, download=False)
    assert data.name == "cifar10" and data.natural
    assert data.pool.images.shape == (10, 3, 32, 32) and data.pool.images.dtype == torch.uint8
    assert data.pool.labels.tolist() == labels and data.pool.labels.dtype == torch.int64
    assert len(data.test) == 3 and data.test.labels.tolist() == [0, 1, 2]
    # A CIFAR row is channel-major: byte c*1024 + y*32 + x is pixel (c, y, x).
    assert data.pool.images[3, 2, 5, 7].item() == rows[3, 2 * 1024 + 5 * 32 + 7]
    assert data.class_names[1] == "sports car" and data.num_classes == 10
    assert data.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and len(data.std) == 3


def test_cifar_root_may_be_the_extracted_folder_itself(tmp_path: Path, no_md5: None) -> None:
    _fake_cifar10(tmp_path, CIFAR10_NAMES)
    assert len(load_cifar(str(tmp_path / "cifar-10-batches-py"), 10, download=False).pool) == 10


def test_cifar100_uses_fine_labels_and_spaces_in_names(tmp_path: Path, no_md5: None) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"class_{i}" for i in range(99)] + ["aquarium_fish"]
    _dump(folder / "train", {"data": _pixels(4, 1), "fine_labels": [99, 5, 0, 7], "coarse_labels": [1, 1, 1, 1]})
    _dump(folder / "test", {"data": _pixels(2, 2), "fine_labels": [3, 99], "coarse_labels": [0, 0]})
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})
    data = load_cifar(tmp_path, 100, download=False)
    assert data.name == "cifar100" and data.num_classes == 100
    assert data.class_names[99] == "aquarium fish" and data.class_names[0] == "class 0"
    assert data.pool.labels.tolist() == [99, 5, 0, 7] and data.test.labels.tolist() == [3, 99]
    assert data.mean == pytest.approx((0.5071, 0.4865, 0.4409))


def test_cifar_missing_without_download_says_how_to_provide_it(tmp_path: Path) -> None:
    with raises_one_line("data.root", "data.download: true", "'cifar-10-batches-py'", "data.root"):
        load_cifar(tmp_path / "nowhere", 10, download=False)
    with raises_one_line("CIFAR-100", "'cifar-100-python'"):
        load_cifar(tmp_path, 100, download=False)


def test_cifar_corrupted_files_are_reported(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path, CIFAR10_NAMES)  # real md5 check: fake bytes never match
    with raises_one_line("data.root", "corrupted", "data.download: true"):
        load_cifar(tmp_path, 10, download=False)


def test_cifar_failed_download_names_download_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with raises_one_line("data.download", "Name or service not known", "cifar-10-batches-py"):
        load_cifar(tmp_path, 10, download=True)


def test_cifar_rejects_other_class_counts(tmp_path: Path) -> None:
    with raises_one_line("data.num_classes", "10 or 100"):
        load_cifar(tmp_path, 20, download=False)


# ---------------------------------------------------------------------- Tiny ImageNet

WNIDS = ["n01443537", "n03710637", "n03710721"]
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n03710637": "maillot",
    "n03710721": "maillot, tank suit",
    "n99999999": "unused, not in wnids",
}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _jpeg(path: Path, colour: tuple[int, int, int], mode: str = "RGB", size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).convert(mode).save(path, "JPEG", quality=95)


def _fake_tiny(root: Path) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (base / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in WORDS.items()))
    for label, wnid in enumerate(WNIDS):
        for i in range(2):
            _jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[label])
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    _jpeg(base / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_gray.JPEG", COLOURS[0], mode="L")
    annotations = [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 1)]
    for name, label in annotations:
        _jpeg(base / "val" / "images" / name, COLOURS[label])
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{WNIDS[label]}\t0\t0\t63\t63\n" for name, label in annotations)
    )
    return base


def test_tinyimagenet_train_is_pool_val_is_test(tmp_path: Path) -> None:
    _fake_tiny(tmp_path)
    data = load_tinyimagenet(tmp_path)
    assert data.name == "tinyimagenet" and data.natural
    assert data.pool.images.shape == (7, 3, 64, 64) and data.pool.images.dtype == torch.uint8
    assert data.pool.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert data.test.labels.tolist() == [2, 0, 1]
    red = data.test.images[1].float().mean(dim=(1, 2))
    assert red[0] > 150 and red[1] < 80 and red[2] < 80
    assert data.mean == IMAGENET_MEAN and data.std == IMAGENET_STD


def test_tinyimagenet_class_names_are_first_synonyms_unless_ambiguous(tmp_path: Path) -> None:
    base = _fake_tiny(tmp_path)
    assert load_tinyimagenet(base).class_names == ["goldfish", "maillot", "maillot, tank suit"]


def test_tinyimagenet_resizes_on_request(tmp_path: Path) -> None:
    data = load_tinyimagenet(_fake_tiny(tmp_path), image_size=16)
    assert data.pool.images.shape[1:] == (3, 16, 16) and data.image_size == 16


def test_tinyimagenet_errors(tmp_path: Path) -> None:
    with raises_one_line("data.root", "wnids.txt", "tiny-imagenet-200"):
        load_tinyimagenet(tmp_path / "nowhere")
    with raises_one_line("data.image_size", "positive"):
        load_tinyimagenet(tmp_path, image_size=0)
    base = _fake_tiny(tmp_path)
    (base / "val" / "images" / "val_1.JPEG").write_bytes(b"not a jpeg")
    with raises_one_line("data.root", "val_1.JPEG", "extract the full 'tiny-imagenet-200' archive again"):
        load_tinyimagenet(base)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with raises_one_line("data.root", "val_annotations.txt", "n00000000"):
        load_tinyimagenet(base)
    for image in (base / "train" / WNIDS[2] / "images").iterdir():
        image.unlink()
    with raises_one_line("data.root", WNIDS[2], "missing or empty"):
        load_tinyimagenet(base)
    (base / "words.txt").write_text(f"{WNIDS[0]}\tgoldfish\n")
    with raises_one_line("data.root", "words.txt", WNIDS[1]):
        load_tinyimagenet(base)
    (base / "words.txt").unlink()
    with raises_one_line("data.root", "words.txt", "is missing"):
        load_tinyimagenet(base)
