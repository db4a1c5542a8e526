"""A user's own images: one sub-folder per class, decoded once into a :class:`Dataset`.

Two layouts are accepted because both are common in the wild: ``root/train/<class>`` next
to ``root/test/<class>`` (or ``root/val/<class>``), and a flat ``root/<class>`` that we
split ourselves, stratified and seeded so that the same folder always gives the same
pool and test. Folder names are ids; the words a text-to-image model sees come from an
optional mapping file or from the folder name with ``_``/``-`` turned into spaces.

The decoding helpers here are shared with the Tiny ImageNet loader.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tqdm import tqdm

from galot_core.data.base import Dataset, ImageSet
from galot_core.errors import GalotError, show_names
from galot_core.images import DEFAULT_MAX_PIXELS, open_image, oriented_size, to_mode
from galot_core.names import check_class_names

OnBadImage = Literal["skip", "fail"]

# Below this many files a progress bar is noise; above it decoding takes noticeable time.
_PROGRESS_MIN_FILES = 500
# PIL modes whose pixels carry no colour: a folder made only of these stays one-channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"})
_FIX_BAD = "remove or replace the file, or set data.on_bad_image: skip"
# Pixels summed per step when computing statistics, so a large pool never becomes float.
_STATS_CHUNK = 1024


def load_imagefolder(
    root: str | Path,
    *,
    class_names_file: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    on_bad_image: OnBadImage = "skip",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Dataset:
    """Load ``root`` (split or flat layout) into memory as a natural-image :class:`Dataset`.

    ``image_size`` defaults to the most common size in the folder, so that a folder of
    same-size images is never resampled; ``channels`` defaults to 1 only when every image
    is grayscale. Mean and std come from the pool, because that is what training sees.
    """
    root = _existing_dir(root)
    _check_options(image_size, channels, test_fraction, on_bad_image)
    train_dir, test_dir = _split_dirs(root)
    folders = _class_folders(train_dir)
    names = _class_names(folders, class_names_file)
    train_files, train_labels = _list_files(train_dir, folders)
    test_files, test_labels = _list_files(test_dir, folders) if test_dir else ([], [])
    files, all_labels = train_files + test_files, train_labels + test_labels
    size, mode = _size_and_mode(files, image_size, channels, max_pixels)
    images, kept = decode_images(files, size, mode, on_bad_image, max_pixels=max_pixels)
    labels = torch.tensor([all_labels[i] for i in kept], dtype=torch.int64)
    in_train = torch.tensor([i < len(train_files) for i in kept], dtype=torch.bool)
    _check_readable_classes(labels, in_train, folders, train_dir, test_dir)
    if test_dir is None:
        in_train = _stratified_pool_mask(labels, test_fraction, seed)
    pool = ImageSet(images[in_train], labels[in_train])
    test = ImageSet(images[~in_train], labels[~in_train])
    mean, std = channel_stats(pool.images)
    # Paths of the pool images, so that a person labelling them (experiment.oracle: human) sees files.
    pool_files = tuple(files[i].relative_to(root).as_posix() for i, keep in zip(kept, in_train.tolist()) if keep)
    # A user's folder may hold digits, text or left/right classes: no flips unless asked for.
    return Dataset(root.name, pool, test, names, natural=True, mean=mean, std=std, pool_files=pool_files,
                   root=str(root.resolve()), flip_invariant=False)


def decode_images(
    files: Sequence[Path], size: tuple[int, int], mode: str, on_bad_image: OnBadImage, *, fix: str = _FIX_BAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, list[int]]:
    """Decode ``files`` into one uint8 (N, C, H, W) tensor of ``size`` (H, W) and PIL ``mode``.

    Returns the tensor and the indices of the files it holds, in order, since files that
    cannot be decoded are skipped (with a warning) when ``on_bad_image`` is ``"skip"``.
    With ``"fail"`` a bad file raises GalotError ending in ``fix``.
    """
    height, width = size
    out = torch.empty((len(files), len(mode), height, width), dtype=torch.uint8)
    kept: list[int] = []
    quiet = True if len(files) < _PROGRESS_MIN_FILES else None  # None: tqdm shows it on a terminal only
    for index, path in enumerate(tqdm(files, desc="decoding images", unit="img", disable=quiet)):
        image = _decode(path, mode, (width, height), on_bad_image, fix, max_pixels)
        if image is not None:
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            out[len(kept)] = pixels.view(height, width, len(mode)).permute(2, 0, 1)
            kept.append(index)
    return out[: len(kept)].clone(), kept


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, accumulated in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _decode(path: Path, mode: str, size: tuple[int, int], on_bad_image: OnBadImage, fix: str,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image | None:
    """``path`` as a ``mode`` image of ``size`` (W, H), or None when it is bad (or too large) and skipped."""
    try:
        with open_image(path, max_pixels) as image:
            image = to_mode(image, mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        _bad_image(path, exc, on_bad_image, fix)
        return None
    # PIL widens the filter when shrinking, so this BICUBIC resize is antialiased.
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def _bad_image(path: Path, exc: BaseException, on_bad_image: OnBadImage, fix: str) -> None:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if on_bad_image == "fail":
        raise GalotError(f"data.root: cannot read image '{path}' ({reason}); {fix}") from exc
    warnings.warn(f"data.root: skipping unreadable image '{path}' ({reason})", stacklevel=4)


def _existing_dir(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise GalotError(
            f"data.root: folder '{path}' does not exist; point data.root at a folder with one sub-folder per class"
        )
    return path


def _check_options(image_size: int | None, channels: int | None, test_fraction: float, on_bad_image: str) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise GalotError(f"data.image_size: must be a positive integer or unset, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise GalotError(f"data.channels: must be 1 (grayscale), 3 (RGB) or unset, got {channels!r}")
    if not 0.0 < test_fraction < 1.0:
        raise GalotError(f"data.test_fraction: must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if on_bad_image not in ("skip", "fail"):
        raise GalotError(f"data.on_bad_image: must be 'skip' or 'fail', got {on_bad_image!r}")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(train, test) for the split layout, (root, None) for the flat one; test before val."""
    names = {p.name for p in _visible_dirs(root)}
    if "train" not in names:
        return root, None
    for held_out in ("test", "val"):
        if held_out in names:
            return root / "train", root / held_out
    raise GalotError(
        f"data.root: '{root}' has a 'train' folder but no 'test' or 'val' next to it; add one with the same class "
        "sub-folders, or move the class folders directly under data.root"
    )


def _class_folders(train_dir: Path) -> list[str]:
    folders = [p.name for p in _visible_dirs(train_dir)]
    if not folders:
        raise GalotError(
            f"data.root: '{train_dir}' has no class sub-folders; put each class's images in its own sub-folder"
        )
    return folders


def _class_names(folders: list[str], class_names_file: str | Path | None) -> list[str]:
    """Human class names for ``folders``: from the mapping file if given, else the folder names."""
    if class_names_file is None:
        names = [" ".join(name.replace("_", " ").replace("-", " ").split()) for name in folders]
        check_class_names("data.root (its class sub-folders)", names, folders)
        return names
    mapping = _read_name_mapping(Path(class_names_file).expanduser())
    missing = [name for name in folders if name not in mapping]
    extra = sorted(set(mapping) - set(folders))
    if missing or extra:
        problems = ([f"no name for folder(s) {_quoted(missing)}"] if missing else []) + (
            [f"no folder for key(s) {_quoted(extra)}"] if extra else []
        )
        raise GalotError(
            f"data.class_names_file: {'; '.join(problems)}; map every class folder, and only those, to a name"
        )
    check_class_names(f"data.class_names_file '{class_names_file}'", [mapping[name] for name in folders])
    return [mapping[name] for name in folders]


def _quoted(names: Sequence[str]) -> str:
    return show_names(names)


def _read_name_mapping(path: Path) -> dict[str, str]:
    """Parse a JSON object or ``folder<TAB or comma>name`` lines into {folder: name}."""
    if not path.is_file():
        raise GalotError(f"data.class_names_file: file '{path}' does not exist; point it at a JSON or text mapping")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _json_mapping(path, text)
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        separator = "\t" if "\t" in line else ","
        folder, _, name = line.partition(separator)
        if not name.strip():
            raise GalotError(
                f"data.class_names_file: line {number} of '{path}' is not 'folder<TAB or comma>name'; fix that line"
            )
        mapping[folder.strip()] = name.strip()
    return mapping


def _json_mapping(path: Path, text: str) -> dict[str, str]:
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GalotError(f"data.class_names_file: '{path}' is not valid JSON ({exc}); fix the syntax") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
        raise GalotError(
            f"data.class_names_file: '{path}' must be a JSON object mapping folder names to non-empty class names"
        )
    return {str(key): value.strip() for key, value in mapping.items()}


def _list_files(split_dir: Path, folders: list[str]) -> tuple[list[Path], list[int]]:
    """Every visible file under each class folder of ``split_dir`` with its class index."""
    unknown = [p.name for p in _visible_dirs(split_dir) if p.name not in folders]
    if unknown:
        raise GalotError(
            f"data.root: '{split_dir}' has class folder(s) {_quoted(unknown)} that the training folder lacks; "
            "use the same class sub-folders in both"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = _visible_files(split_dir / folder)
        files += found
        labels += [label] * len(found)
    return files, labels


def _visible_files(class_dir: Path) -> list[Path]:
    """Files under ``class_dir`` (recursively, sorted), skipping hidden names; [] if it is absent.

    An existing but empty class folder is an error now, before any slow decoding.
    """
    if not class_dir.is_dir():
        return []
    found = sorted(p for p in class_dir.rglob("*") if p.is_file() and not _hidden(p.relative_to(class_dir)))
    if not found:
        raise GalotError(f"data.root: class folder '{class_dir}' is empty; add images to it or remove it")
    return found


def _hidden(relative: Path) -> bool:
    return any(name.startswith(".") for name in relative.parts)


def _headers(files: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[int, int, str]]:
    """(H, W, mode) of every readable file, from headers only; bad (or too large) files are reported when decoded."""
    headers = []
    for path in files:
        try:
            with open_image(path, max_pixels) as image:
                width, height = oriented_size(image)
                headers.append((height, width, image.mode))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return headers


def _size_and_mode(
    files: Sequence[Path], image_size: int | None, channels: int | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[tuple[int, int], str]:
    """Target (H, W) and PIL mode: the most common size (ties: larger) and L only if all are gray."""
    mode = {1: "L", 3: "RGB"}.get(channels or 0, "")
    if image_size and mode:
        return (image_size, image_size), mode
    headers = _headers(files, max_pixels)
    if not headers:
        raise GalotError("data.root: no readable images found; add image files to the class sub-folders")
    sizes = Counter((height, width) for height, width, _ in headers)
    size = (image_size, image_size) if image_size else max(sizes, key=lambda hw: (sizes[hw], hw[0] * hw[1], hw))
    return size, mode or ("L" if all(m in _GRAY_MODES for _, _, m in headers) else "RGB")


def _check_readable_classes(
    labels: torch.Tensor, in_train: torch.Tensor, folders: list[str], train_dir: Path, test_dir: Path | None
) -> None:
    """After skipping bad files, every existing class folder must still hold an image."""
    for split_dir, mask in ((train_dir, in_train), (test_dir, ~in_train)):
        counts = torch.bincount(labels[mask], minlength=len(folders)).tolist() if split_dir else []
        for folder, count in zip(folders, counts):
            if count == 0 and (split_dir / folder).is_dir():
                raise GalotError(
                    f"data.root: class folder '{split_dir / folder}' has no readable images; add images or remove it"
                )


def _stratified_pool_mask(labels: torch.Tensor, test_fraction: float, seed: int) -> torch.Tensor:
    """True for pool images: per class, a seeded shuffle sends ``test_fraction`` to test.

    Each class with two or more images gets at least one test and one pool image, so no
    class silently disappears from either split.
    """
    generator = torch.Generator().manual_seed(seed)
    in_pool = torch.ones(len(labels), dtype=torch.bool)
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = min(max(round(len(members) * test_fraction), 1), len(members) - 1)
        in_pool[members[:n_test]] = False
    return in_pool
