"""The image-folder loader (data.source: imagefolder) on tiny fake folders written to tmp dirs:
splits, sizes, channels, class-name files and the errors (the CIFAR and Tiny ImageNet loaders:
tests/test_data_loaders.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from galot_core.data.imagefolder import channel_stats, load_imagefolder
from tests.test_data_loaders import raises_one_line


def _png(path: Path, colour: int | tuple[int, ...], size: tuple[int, int] = (16, 16), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, "PNG")


def _flat(root: Path, per_class: int = 5) -> Path:
    for label, folder in enumerate(["cat_small", "dog-big", "zebra"]):
        for i in range(per_class):
            _png(root / folder / f"{i}.png", (label * 100, i * 10, 50))
    return root


def test_flat_folder_split_is_stratified_seeded_and_named(tmp_path: Path) -> None:
    root = _flat(tmp_path / "pets")
    (root / "cat_small" / ".DS_Store").write_bytes(b"junk")
    _png(root / ".thumbnails" / "x.png", 0)
    (root / "README.txt").write_text("root files are not classes")
    data = load_imagefolder(root)
    assert data.name == "pets" and data.natural
    assert data.class_names == ["cat small", "dog big", "zebra"]
    assert data.pool.images.shape == (12, 3, 16, 16) and data.pool.images.dtype == torch.uint8
    assert torch.bincount(data.test.labels).tolist() == [1, 1, 1]
    again = load_imagefolder(root)
    assert torch.equal(again.pool.images, data.pool.images) and torch.equal(again.test.labels, data.test.labels)
    other = load_imagefolder(root, seed=1, test_fraction=0.4)
    assert torch.bincount(other.test.labels).tolist() == [2, 2, 2]
    mean, std = channel_stats(data.pool.images)
    pixels = data.pool.images.double().div(255)
    assert data.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist()) and data.mean == mean
    assert data.std == pytest.approx(pixels.std(dim=(0, 2, 3), correction=0).tolist()) and data.std == std


def test_single_image_class_stays_in_pool(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", (1, 2, 3))
    _png(tmp_path / "b" / "0.png", (4, 5, 6))
    _png(tmp_path / "b" / "1.png", (7, 8, 9))
    data = load_imagefolder(tmp_path)
    assert data.pool.labels.tolist().count(0) == 1 and data.test.labels.tolist() == [1]


@pytest.mark.parametrize("held_out", ["test", "val"])
def test_split_layout_keeps_the_given_split(tmp_path: Path, held_out: str) -> None:
    for split, count in (("train", 3), (held_out, 2)):
        for label, folder in enumerate(["b_class", "a_class"]):
            for i in range(count):
                _png(tmp_path / split / folder / f"{i}.png", (label * 90, 0, 0))
    data = load_imagefolder(tmp_path)
    assert data.class_names == ["a class", "b class"]
    assert data.pool.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.test.labels.tolist() == [0, 0, 1, 1]
    assert data.pool.images[0, 0, 0, 0].item() == 90  # a_class is sorted first, coloured 90


def test_test_split_may_lack_a_class(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        _png(tmp_path / "train" / folder / "0.png", 0)
    _png(tmp_path / "test" / "a" / "0.png", 0)
    assert load_imagefolder(tmp_path).test.labels.tolist() == [0]


def test_sizes_default_to_most_common_and_can_be_forced(tmp_path: Path) -> None:
    root = _flat(tmp_path)
    _png(root / "zebra" / "big.png", (255, 255, 255), size=(40, 30))
    data = load_imagefolder(root)
    assert data.pool.images.shape[1:] == (3, 16, 16)
    forced = load_imagefolder(root, image_size=8)
    assert forced.pool.images.shape[1:] == (3, 8, 8)
    assert len(forced.pool) + len(forced.test) == 16


def test_non_square_most_common_size_is_kept(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        for i in range(2):
            _png(tmp_path / folder / f"{i}.png", 0, size=(20, 10))
    assert load_imagefolder(tmp_path).pool.images.shape[1:] == (3, 10, 20)


def test_channels_follow_the_images_unless_set(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        for i in range(2):
            _png(tmp_path / folder / f"{i}.png", 100 + i, mode="L")
    gray = load_imagefolder(tmp_path)
    assert gray.channels == 1 and len(gray.mean) == 1 and len(gray.std) == 1
    assert load_imagefolder(tmp_path, channels=3).channels == 3
    _png(tmp_path / "a" / "rgba.png", (10, 20, 30, 255), mode="RGBA")
    assert load_imagefolder(tmp_path).channels == 3
    assert load_imagefolder(tmp_path, channels=1, image_size=4).pool.images.shape[1:] == (1, 4, 4)


def test_class_names_file_json_and_text(tmp_path: Path) -> None:
    root = _flat(tmp_path / "data")
    names = {"cat_small": "kitten", "dog-big": "great dane", "zebra": "zebra"}
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps(names))
    assert load_imagefolder(root, class_names_file=as_json).class_names == ["kitten", "great dane", "zebra"]
    as_text = tmp_path / "names.txt"
    as_text.write_text("# folder, name\ncat_small\tkitten, young cat\n\ndog-big, great dane\nzebra,zebra\n")
    assert load_imagefolder(root, class_names_file=str(as_text)).class_names == [
        "kitten, young cat",
        "great dane",
        "zebra",
    ]


def test_class_names_file_errors(tmp_path: Path) -> None:
    root = _flat(tmp_path / "data")
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"cat_small": "kitten", "zebra": "zebra", "horse": "horse"}))
    with raises_one_line("data.class_names_file", "no name for folder(s) 'dog-big'", "no folder for key(s) 'horse'"):
        load_imagefolder(root, class_names_file=mapping)
    mapping.write_text("{not json")
    with raises_one_line("data.class_names_file", "not valid JSON"):
        load_imagefolder(root, class_names_file=mapping)
    mapping.write_text('["cat_small"]')
    with raises_one_line("data.class_names_file", "JSON object"):
        load_imagefolder(root, class_names_file=mapping)
    text = tmp_path / "names.txt"
    text.write_text("cat_small\tkitten\ndog-big\n")
    with raises_one_line("data.class_names_file", "line 2", "names.txt"):
        load_imagefolder(root, class_names_file=text)
    with raises_one_line("data.class_names_file", "missing.txt", "does not exist"):
        load_imagefolder(root, class_names_file=tmp_path / "missing.txt")


def test_bad_images_are_skipped_with_a_warning_or_fail(tmp_path: Path) -> None:
    root = _flat(tmp_path)
    (root / "zebra" / "notes.txt").write_text("not an image")
    truncated = root / "dog-big" / "cut.png"
    truncated.write_bytes((root / "dog-big" / "0.png").read_bytes()[:40])
    with pytest.warns(UserWarning) as caught:
        data = load_imagefolder(root)
    messages = " ".join(str(w.message) for w in caught)
    assert "notes.txt" in messages and "cut.png" in messages
    assert len(data.pool) + len(data.test) == 15
    with raises_one_line("data.root", "cannot read image", "data.on_bad_image: skip"):
        load_imagefolder(root, on_bad_image="fail")


def test_class_without_readable_images_is_an_error(tmp_path: Path) -> None:
    root = _flat(tmp_path)
    for image in (root / "zebra").iterdir():
        image.write_bytes(b"broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with raises_one_line("data.root", "zebra", "no readable images"):
            load_imagefolder(root)
    for image in (root / "zebra").iterdir():
        image.unlink()
    (root / "zebra" / ".DS_Store").write_bytes(b"")
    with raises_one_line("data.root", "zebra", "is empty"):
        load_imagefolder(root)


def test_folder_layout_errors(tmp_path: Path) -> None:
    with raises_one_line("data.root", "does not exist", "one sub-folder per class"):
        load_imagefolder(tmp_path / "nowhere")
    with raises_one_line("data.root", "no class sub-folders"):
        load_imagefolder(tmp_path)
    _png(tmp_path / "train" / "a" / "0.png", 0)
    with raises_one_line("data.root", "'train' folder but no 'test' or 'val'"):
        load_imagefolder(tmp_path)
    _png(tmp_path / "test" / "b" / "0.png", 0)
    with raises_one_line("data.root", "'b'", "training folder lacks"):
        load_imagefolder(tmp_path)


def test_no_readable_image_at_all_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with raises_one_line("data.root", "no readable images"):
            load_imagefolder(tmp_path)


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ({"image_size": 0}, "data.image_size"),
        ({"channels": 2}, "data.channels"),
        ({"test_fraction": 1.0}, "data.test_fraction"),
        ({"on_bad_image": "ignore"}, "data.on_bad_image"),
    ],
)
def test_option_errors(tmp_path: Path, option: dict, field: str) -> None:
    with raises_one_line(field, repr(next(iter(option.values())))):
        load_imagefolder(_flat(tmp_path), **option)
