"""Opening an image file without trusting its header: the one place a pixel limit is enforced.

A PNG of a few hundred kilobytes can declare 178 million pixels and decode to gigabytes
(PIL only refuses twice its own ``MAX_IMAGE_PIXELS``). Every image galot decodes — dataset
folders (``data.max_pixels``), generated images and exported shards, thumbnails for the
labelling page — is opened here, and its declared size is checked before any pixel is read.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

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
