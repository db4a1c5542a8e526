"""Hostile images (issue 30): 16-bit PNGs scaled (not clipped) to 8 bits, float and 32-bit TIFFs scaled
by the documented rule (not all black or all white), EXIF orientation applied before anything else.
Every file is a real one written by PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galot_core.data.imagefolder import decode_images, load_imagefolder
from galot_core.images import open_image, oriented_size, to_mode, to_uint8


def _decode_one(path: Path, mode: str = "L") -> np.ndarray:
    with open_image(path) as im:
        width, height = oriented_size(im)
    images, kept = decode_images([path], (height, width), mode, "fail")
    assert kept == [0]
    return images[0].permute(1, 2, 0).numpy()


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    Image.fromarray(array).save(path, **kw)
    return path


def test_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    a = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", a)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    assert _decode_one(path)[:, :, 0].tolist() == [[0, 1, 128, 255]]


def test_16_bit_png_that_clipping_made_white_keeps_its_gradient(tmp_path):
    a = np.linspace(1000, 60000, 64).astype(np.uint16).reshape(8, 8)
    out = _decode_one(_save(tmp_path / "ramp.png", a)).astype(int)
    assert out.min() < 10 and out.max() > 230 and len(np.unique(out)) > 50  # clipping gave all 255
    assert _decode_one(_save(tmp_path / "ramp2.png", a), "RGB").shape == (8, 8, 3)


def test_float_tiff_in_unit_range_is_times_255(tmp_path):
    a = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    assert _decode_one(_save(tmp_path / "f.tiff", a))[:, :, 0].tolist() == [[0, 64, 128, 255]]


def test_float_tiff_outside_unit_range_is_stretched_min_max_nan_black(tmp_path):
    a = np.array([[-2.0, 0.0, 2.0, np.nan]], dtype=np.float32)
    assert _decode_one(_save(tmp_path / "g.tiff", a))[:, :, 0].tolist() == [[0, 128, 255, 0]]


def test_32_bit_int_tiff_is_stretched_not_all_white(tmp_path):
    a = np.array([[0, 1_000_000, 2_000_000, 4_000_000]], dtype=np.int32)
    path = _save(tmp_path / "i.tiff", a)
    with Image.open(path) as im:
        assert im.mode == "I"
    assert _decode_one(path)[:, :, 0].tolist() == [[0, 64, 128, 255]]


def test_32_bit_int_with_16_bit_values_is_scaled_as_16_bit(tmp_path):
    a = np.array([[0, 32896, 65535]], dtype=np.int32)
    assert _decode_one(_save(tmp_path / "j.tiff", a))[:, :, 0].tolist() == [[0, 128, 255]]


def test_constant_wide_images_keep_their_value_clipped():
    assert to_uint8(np.full((2, 2), 7.0, dtype=np.float32), "F").tolist() == [[7, 7], [7, 7]]
    assert to_uint8(np.full((1, 1), np.nan, dtype=np.float32), "F").tolist() == [[0]]
    assert to_uint8(np.array([[5_000_000]], dtype=np.int32), "I").tolist() == [[255]]


def _sideways(path: Path, orientation: int, scale: int = 1) -> Path:
    """A 4 wide × 2 high image (× ``scale``), left half white, stored with an EXIF orientation tag."""
    a = np.zeros((2 * scale, 4 * scale), dtype=np.uint8)
    a[:, : 2 * scale] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(path, a, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))


@pytest.mark.parametrize("suffix, scale", [(".png", 1), (".jpg", 8)])  # a phone's JPEG, PNG's eXIf chunk
def test_exif_orientation_is_applied_before_decoding(tmp_path, suffix, scale):
    out = _decode_one(_sideways(tmp_path / f"o{suffix}", 6, scale))  # 6: rotate 90° clockwise to show
    assert out.shape == (4 * scale, 2 * scale, 1)  # upright: 2 wide, 4 high
    white = (out[:, :, 0] > 128).astype(int)
    assert white[:: scale, :: scale].tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]


def test_folder_of_rotated_photos_gets_their_upright_size(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            _sideways(tmp_path / c / f"{i}.png", 6)
    ds = load_imagefolder(tmp_path, test_fraction=0.34)
    assert tuple(ds.pool.images.shape[1:]) == (1, 4, 2)  # H=4, W=2: the size people see, no resampling
    assert ds.pool.images[0, 0, 0].tolist() == [255, 255] and ds.pool.images[0, 0, 3].tolist() == [0, 0]


def test_corrupt_exif_block_keeps_the_pixels_without_a_traceback(tmp_path):
    path = tmp_path / "bad_exif.png"
    Image.fromarray(np.full((2, 2), 9, dtype=np.uint8)).save(path, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert _decode_one(path)[:, :, 0].tolist() == [[9, 9], [9, 9]]


def test_to_mode_converts_16_bit_to_rgb(tmp_path):
    path = _save(tmp_path / "rgb.png", np.array([[65535, 0]], dtype=np.uint16))
    with open_image(path) as im:
        assert np.asarray(to_mode(im, "RGB")).tolist() == [[[255, 255, 255], [0, 0, 0]]]
