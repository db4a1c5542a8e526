"""Opening an image file without trusting its header: the one place a pixel limit is enforced.

A PNG of a few hundred kilobytes can declare 178 million pixels and decode to gigabytes
(PIL only refuses twice its own ``MAX_IMAGE_PIXELS``). Every image galot decodes — dataset
folders (``data.max_pixels``), generated images and exported shards, thumbnails for the
labelling page — is opened here, and its declared size is checked before any pixel is read.

Pixels become galot's 8 bits per channel in :func:`to_mode`, after the EXIF orientation is
applied (a phone photo stored sideways is shown and trained on upright), by these rules:

- 16-bit samples (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: 16-bit PNG and TIFF) are
  scaled by their mode's range, ``v · 255 / 65535`` rounded (65535 → 255), never clipped at 255;
- 32-bit integers (mode ``I``): values inside ``[0, 65535]`` are 16-bit samples (what PIL makes
  of a 16-bit PNG on some versions) and scaled as above; anything else (negative values, or
  above 65535: a 32-bit TIFF) is stretched min–max to ``[0, 255]``;
- floats (mode ``F``, float TIFF): values inside ``[0, 1]`` are intensities, ``v · 255``;
  anything else is stretched min–max to ``[0, 255]``; NaN becomes 0 and ±inf the ends;
- an image whose min equals its max (nothing to stretch) keeps its value clipped to ``[0, 255]``.

The min–max stretch is per image: the range of a 32-bit or float image says nothing about the
values a scanner or a simulation wrote, and the alternative (the type's full range) makes such
images all black.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# 4096 × 4096: larger than any text-to-image output (t2i.resolution) and any photo worth
# training a 28–64 px classifier on; decoded RGB that is 48 MiB.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageTooLarge(ValueError):
    """The image declares more pixels than allowed; nothing was decoded."""


@contextmanager
def open_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """``Image.open`` that reads the header only and refuses more than ``max_pixels`` pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides, with one line
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"more pixels than the limit of {max_pixels} (data.max_pixels): {e}") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}×{height} pixels, more than the limit of {max_pixels} "
                                "(data.max_pixels)")
        yield im


_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_EXIF_ORIENTATION = 0x0112
_EXIF_ERRORS = (OSError, ValueError, SyntaxError, struct.error, KeyError, IndexError, TypeError)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = as stored, 2–8 flipped or turned); 1 when the EXIF block is corrupt,
    so such an image keeps its pixels as stored."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _EXIF_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, from the header: EXIF orientations 5–8 turn the image by 90°."""
    return (im.height, im.width) if _orientation(im) >= 5 else im.size


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """``im`` upright (its EXIF orientation applied) in the 8-bit PIL ``mode`` (L or RGB), with
    16-bit, 32-bit and float pixels scaled by the rules of this module's docstring."""
    if _orientation(im) != 1:  # exif_transpose copies even an upright image: only when needed
        try:
            im = ImageOps.exif_transpose(im)
        except _EXIF_ERRORS:
            pass
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        im = Image.fromarray(to_uint8(np.asarray(im), im.mode))
    return im.convert(mode)  # a loaded copy even in the same mode: the caller may close the file


def to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One channel of 16-bit, 32-bit or float samples as uint8 (the rules of this module's docstring)."""
    if mode in _SIXTEEN_BIT:
        return _scaled(a.astype(np.float64), 0.0, 65535.0)
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    nan = np.isnan(a)
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if mode == "F" and 0.0 <= lo and hi <= 1.0:
        out = _scaled(a, 0.0, 1.0)
    elif mode == "I" and 0.0 <= lo and hi <= 65535.0:
        out = _scaled(a, 0.0, 65535.0)
    elif hi == lo:
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    else:
        out = _scaled(a, lo, hi)
    out[nan] = 0
    return out


def _scaled(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
