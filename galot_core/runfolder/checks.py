"""What each file of a run folder must hold, checked when it is read: a damaged or hostile file
is one :class:`GalotError` line naming the file, the field and the fix, never a traceback or a
wrong result. The run folder (galot_core/runfolder/__init__.py) reads every file through these.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from galot_core import synthetic
from galot_core.errors import GalotError, show
from galot_core.io import safetensors_metadata

POOL_MAX = 10**9          # pool indices beyond this are not an image pool galot can hold
CLASSES_MAX = 100_000     # more classes than any classification dataset (ImageNet-21k: 21,841)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def bad_file(path: Path, field: str, what: str, fix: str = "restore it from a backup") -> GalotError:
    """The one-line error for a run-folder file that is readable but wrong: file, field, what is expected."""
    return GalotError(f"{path}: {field} {what}; {fix}")


def read_checked_json(path: Path, what: str, fix: str = "restore it from a backup") -> Any:
    """A run-folder JSON file, or one GalotError line if it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise GalotError(f"{path}: {what} is unreadable ({e.__class__.__name__}); {fix}") from None


def _int_list(d: dict, key: str, path: Path, lo: int, hi: int | None, what: str) -> list[int]:
    """``d[key]``: a list of integers in [lo, hi) (no floats, no booleans, nothing out of range)."""
    v = d.get(key, [] if key == "removed" else None)
    if not isinstance(v, list):
        raise bad_file(path, f"'{key}'", "must be a list of integers")
    for k, x in enumerate(v):
        if not _is_int(x) or x < lo or (hi is not None and x >= hi):
            rng = f"{lo} to {hi - 1}" if hi is not None else f">= {lo}"
            raise bad_file(path, f"'{key}'[{k}]", f"must be {what} ({rng}), got {show(x)}")
    return v


def check_pool(d: Any, path: Path, pool_size: int | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """pool.json's fields: types, ranges (indices inside the pool, labels among the classes), lengths, uniqueness."""
    if not isinstance(d, dict):
        raise bad_file(path, "the file", "must be a JSON object with pool_size, labelled, labels, cycles")
    n = d.get("pool_size")
    if not _is_int(n) or not 0 <= n <= POOL_MAX:
        raise bad_file(path, "'pool_size'", f"must be an integer from 0 to {POOL_MAX}, got {show(n)}")
    if pool_size is not None and n != pool_size:
        raise GalotError(f"{path}: pool has {n} images but the dataset has {pool_size}; the dataset changed — use "
                         "a new experiment.name")
    labelled = _int_list(d, "labelled", path, 0, n, "a pool index")
    labels = _int_list(d, "labels", path, 0, num_classes, "a class index")
    cycles = _int_list(d, "cycles", path, 0, None, "a cycle number")
    removed = _int_list(d, "removed", path, 0, n, "a pool index")
    if not len(labelled) == len(labels) == len(cycles):
        raise bad_file(path, "'labelled', 'labels' and 'cycles'", "must have one entry per labelled image "
                       f"(lengths {len(labelled)}, {len(labels)}, {len(cycles)})")
    if len(set(labelled)) != len(labelled) or set(labelled) & set(removed):
        raise bad_file(path, "'labelled'", "must not repeat a pool index or list a removed one")
    return {"pool_size": n, "labelled": labelled, "labels": labels, "cycles": cycles, "removed": removed}


def check_metrics(d: Any, path: Path, cycle: int) -> dict[str, Any]:
    """A cycle's metrics.json: the cycle it names, counts, finite numbers, hashes of plain file names."""
    if not isinstance(d, dict):
        raise bad_file(path, "the file", "must be a JSON object (one cycle's metrics)", "delete it to redo the cycle's "
                       "evaluation")
    fix = "delete it to redo the cycle's evaluation"
    if d.get("cycle") != cycle or not _is_int(d.get("cycle")):
        raise bad_file(path, "'cycle'", f"must be {cycle} (the cycle folder's number), got {show(d.get('cycle'))}", fix)
    for key in ("labelled", "generated"):
        if not _is_int(d.get(key)) or d[key] < 0:
            raise bad_file(path, f"'{key}'", f"must be a count (an integer >= 0), got {show(d.get(key))}", fix)
    for key in ("epsilon", "test_accuracy", "judged_accuracy"):
        if d.get(key) is not None and not _is_number(d[key]):
            raise bad_file(path, f"'{key}'", f"must be a finite number or null, got {show(d[key])}", fix)
    for key in ("test_accuracy", "judged_accuracy"):  # a share of images: an accuracy of 5.0 is a forged file
        if d.get(key) is not None and not 0 <= d[key] <= 1:
            raise bad_file(path, f"'{key}'", f"must be an accuracy in [0, 1], got {show(d[key])}", fix)
    if d.get("epsilon") is not None and d["epsilon"] < 0:
        raise bad_file(path, "'epsilon'", f"must be >= 0 (a perturbation radius), got {show(d['epsilon'])}", fix)
    files = d.get("files") or {}
    if not isinstance(files, dict):
        raise bad_file(path, "'files'", "must map file names to SHA-256 hashes", fix)
    for name, digest in files.items():
        if not isinstance(name, str) or not synthetic.safe_relative(name) or "/" in name:
            raise bad_file(path, "'files'", f"names {show(name)}, not a file of the cycle folder", fix)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad_file(path, f"'files'[{show(name)}]", "must be a SHA-256 hex digest", fix)
    return d


_EMBEDDINGS_FIX = "delete it to run the cycle's TextOpt again"


def checked_tensors(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A TextOpt result: the named tensors, finite, one row per class in each."""
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types, and OSError)
        raise GalotError(f"{path}: embeddings are unreadable ({e.__class__.__name__}); {_EMBEDDINGS_FIX}") from None
    for key in keys:
        t = tensors.get(key)
        if t is None or not t.is_floating_point() or t.ndim < 1 or not bool(torch.isfinite(t).all()):
            raise bad_file(path, f"tensor '{key}'", "must be present, floating point and finite", _EMBEDDINGS_FIX)
        if t.shape[0] != tensors[keys[0]].shape[0]:
            raise bad_file(path, f"tensor '{key}'", "must have one row per class like the others", _EMBEDDINGS_FIX)
    return tensors


def header_unet_calls(path: Path) -> int:
    """The ``unet_calls`` count in a TextOpt result's header."""
    try:
        calls = int(safetensors_metadata(path).get("unet_calls", 0))
    except Exception as e:  # noqa: BLE001 (as above)
        raise GalotError(f"{path}: embeddings header is unreadable ({e.__class__.__name__}); {_EMBEDDINGS_FIX}") \
            from None
    if calls < 0:
        raise bad_file(path, "header field 'unet_calls'", "must be >= 0", _EMBEDDINGS_FIX)
    return calls


_ADAPTER_RECORD = ("inputs_sha256", "losses", "labelled", "unet_calls")


def checked_adapter(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``gal.adapt`` fit: finite floating-point tensors and the record galot wrote beside them."""
    fix = "delete it to fit the cycle's generator again"
    try:
        tensors = load_file(str(path))
        record = safetensors_metadata(path)
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types, and OSError)
        raise GalotError(f"{path}: the adapted generator is unreadable ({e.__class__.__name__}); {fix}") from None
    if not tensors or any(not t.is_floating_point() or not bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise bad_file(path, "its tensors", "must be present, floating point and finite", fix)
    if kind == "embedding" and set(tensors) != {"template", "centres"}:
        raise bad_file(path, "its tensors", "must be exactly 'template' and 'centres'", fix)
    if not isinstance(record, dict):
        raise bad_file(path, "its header", "must be galot's record of the fit", fix)
    missing = [k for k in _ADAPTER_RECORD if k not in record]
    if missing or not isinstance(record["losses"], list) or not isinstance(record["inputs_sha256"], str):
        raise bad_file(path, "its header", f"lacks {', '.join(missing) or 'a valid losses/inputs_sha256'}", fix)
    return tensors, record
