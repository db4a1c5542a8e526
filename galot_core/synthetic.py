"""The synthetic dataset on disk: viewable PNGs plus a manifest that records their provenance.

Layout, one folder per cycle so a cycle's set can be versioned, reused and deleted alone::

    <run>/synthetic/cycle_003/
        manifest.jsonl            one JSON line per image (see ManifestEntry)
        03_three/000000.png ...   PNGs at the generator's resolution, grouped by class

The manifest is the source of truth: an image counts only once its manifest line exists,
and the manifest is rewritten atomically after every image batch is fully on disk, so a
crash can leave a stray PNG but never a manifest line for a missing or partial file.
Each line stores the image's SHA-256, so ``galot verify`` can detect any change.
Images are stored at the generator's size (512 px for Stable Diffusion) so one set serves
classifiers of any input size; :func:`load_synthetic` resizes them once, on load, to the
dataset's size with the same antialiased resize the classifier's preprocessing uses.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from galot_core.errors import GalotError
from galot_core.images import ImageTooLarge, open_image
from galot_core.io import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class ManifestEntry:
    file: str                # relative to the cycle folder
    sha256: str
    label: int               # pseudo-label = the prompted class
    class_name: str
    prompt: str
    cycle: int
    epsilon: float
    embedding_sha256: str    # hash of the (optimised) text embedding the image came from
    seed: int
    model_id: str
    revision: str
    scheduler: str
    steps: int
    guidance_scale: float
    variant: str = ""        # weight variant (t2i.variant); absent in manifests written before it existed
    source: str | None = None  # what else the image came from, e.g. "pool[12] strength 0.5" (image-to-image)
    adapter: str | None = None  # SHA-256 of the gal.adapt fit the generator ran with (adapted runs only)


def entry_dict(entry: ManifestEntry) -> dict:
    """A manifest line's fields; ``source`` and ``adapter`` only when set (image-to-image, an adapted
    generator), so the lines of plain text-to-image runs do not carry them."""
    d = asdict(entry)
    for optional in ("source", "adapter"):
        if d[optional] is None:
            del d[optional]
    return d


def safe_dirname(index: int, class_name: str, max_len: int = 48) -> str:
    """A folder name for a class that cannot escape the output folder (no '/', '..', NUL, absurd length)."""
    text = unicodedata.normalize("NFKD", class_name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:max_len] or "class"
    return f"{index:03d}_{slug}"


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()


def png_bytes(image: torch.Tensor) -> bytes:
    """One uint8 image (C, H, W) → PNG bytes (deterministic: no timestamps in PNG)."""
    arr = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def cycle_folder(run_dir: str | Path, cycle: int) -> Path:
    return Path(run_dir) / "synthetic" / f"cycle_{cycle:03d}"


_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTRY_TYPES = {"file": str, "sha256": str, "label": int, "class_name": str, "prompt": str, "cycle": int,
                "epsilon": float, "embedding_sha256": str, "seed": int, "model_id": str, "revision": str,
                "scheduler": str, "steps": int, "guidance_scale": float, "variant": str, "source": (str, type(None)),
                "adapter": (str, type(None))}


def safe_relative(name: Any) -> bool:
    """A path that stays inside the folder it is relative to: no absolute path, '..', NUL or backslash."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _entry(d: Any) -> ManifestEntry:
    """One manifest line's fields, type-checked (a ValueError names the first bad field)."""
    if not isinstance(d, dict):
        raise ValueError("a line is not a JSON object")
    unknown = sorted(set(d) - set(_ENTRY_TYPES), key=str)
    if unknown:
        raise ValueError(f"unknown field {str(unknown[0])[:40]!r}")
    for name, tp in _ENTRY_TYPES.items():
        v = d.get(name)
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) if tp is float else \
            (isinstance(v, int) and not isinstance(v, bool)) if tp is int else isinstance(v, tp)
        if not ok and not (name in ("variant", "source", "adapter") and name not in d):
            raise ValueError(f"field {name!r}")
    if d.get("adapter") is not None and not _SHA256.fullmatch(d["adapter"]):
        raise ValueError("field 'adapter'")
    if not safe_relative(d["file"]) or not _SHA256.fullmatch(d["sha256"]) or d["label"] < 0:
        raise ValueError("field 'file' (a path inside the cycle folder)" if not safe_relative(d["file"]) else
                         "field 'sha256'" if not _SHA256.fullmatch(d["sha256"]) else "field 'label'")
    return ManifestEntry(**d)


def parse_manifest(text: str, where: str | Path) -> list[ManifestEntry]:
    """The entries of a manifest's text; a bad line is one GalotError naming it and its field."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        try:
            out.append(_entry(json.loads(line)))
        except (ValueError, RecursionError) as e:
            reason = str(e) if isinstance(e, ValueError) and str(e).startswith(("field", "unknown", "a line")) \
                else "not JSON"
            raise GalotError(f"{where}: line {number}: manifest is corrupt ({reason}); delete the cycle folder to "
                             "regenerate it") from None
    return out


def read_manifest(folder: str | Path) -> list[ManifestEntry]:
    path = Path(folder) / "manifest.jsonl"
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GalotError(f"{path}: manifest is unreadable ({e.__class__.__name__}); delete the cycle folder to "
                         "regenerate it") from None
    return parse_manifest(text, path)


def write_manifest(folder: str | Path, entries: list[ManifestEntry]) -> None:
    atomic_write_text(Path(folder) / "manifest.jsonl", "".join(json.dumps(entry_dict(e)) + "\n" for e in entries))


def decode_png(source: Path | bytes, where: str | Path | None = None) -> torch.Tensor:
    """A PNG file or its bytes → uint8 (C, H, W); a generated image larger than any generator makes is refused."""
    try:
        with open_image(source) as im:
            im.load()
            arr = torch.from_numpy(np.asarray(im).copy())
    except ImageTooLarge as e:
        name = where or (source if not isinstance(source, bytes) else "generated image")
        raise GalotError(f"{name}: {e}; not an image galot generated — delete it (and its manifest line) or "
                         "`dvc pull` the dataset again") from None
    return arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)


@functools.lru_cache(maxsize=8)
def _resizer(size: int, channels: int):
    from galot_core.transforms import Preprocess

    return Preprocess(size, channels, (0.0,) * channels, (1.0,) * channels)


def resize_uint8(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) → uint8 (N, channels, size, size) with the classifier's antialiased resize."""
    return (_resizer(size, channels)(images).clamp(0, 1) * 255).round().to(torch.uint8)


def decode_entries(items: list[tuple[ManifestEntry, bytes]], size: int,
                   channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry, PNG bytes) pairs → uint8 (N, channels, size, size) and pseudo-labels.

    Resized once here, with the same antialiased resize the classifier's preprocessing
    uses, so training never decodes or resizes a PNG again.
    """
    images = [resize_uint8(decode_png(data, e.file).unsqueeze(0), size, channels) for e, data in items]
    if not images:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.cat(images), torch.tensor([e.label for e, _ in items], dtype=torch.int64)


def load_synthetic(folders: list[Path], size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All manifest-listed images of ``folders`` as uint8 (N, channels, size, size) and their pseudo-labels."""
    return decode_entries([(e, (folder / e.file).read_bytes()) for folder in folders for e in read_manifest(folder)],
                          size, channels)


def save_grid(images: torch.Tensor, nrow: int, path: str | Path, scale: int = 2) -> None:
    """uint8 images (N, C, H, W) as one PNG grid, ``nrow`` images per row, upscaled for viewing."""
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=2, pad_value=128)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    atomic_write_bytes(path, png_bytes(grid[:images.shape[1]] if images.shape[1] == 1 else grid))
