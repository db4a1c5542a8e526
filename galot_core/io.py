"""Atomic file writes: a crash never leaves a half-written file under its final name.

Every file galot writes (pool state, manifests, images, weights, metrics) goes through
these helpers: the bytes land in a temporary file in the same folder, are flushed to
disk, and only then renamed over the target — rename is atomic on POSIX file systems.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from galot_core.errors import GalotError
from galot_core.faults import failpoint


def replace_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a crash) sees the old file or the new one, never half of one. ``mode`` sets
    the new file's permissions; without it the file keeps the temp file's 0600.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if mode is not None:
                os.fchmod(f.fileno(), mode)
        failpoint("write.before_rename")  # the temp file is complete, the target untouched
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_atomically(path, data)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GalotError(f"{path.parent}: disk full (or quota exceeded) while writing {path.name}; free space "
                             "there and rerun the same command: everything already written is kept") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its contents.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from process to
    process, so two runs saving the same weights would write different bytes; galot stores
    its metadata as one sorted JSON string under the key ``galot`` instead. Resumed runs
    can then be compared byte for byte, and ``galot verify`` hashes stay meaningful.
    """
    from safetensors.torch import save

    return save(tensors, metadata={"galot": json.dumps(metadata, sort_keys=True)})


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata written by :func:`safetensors_bytes` (or plain safetensors metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["galot"]) if "galot" in meta else meta
