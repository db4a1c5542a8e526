"""Classifier weights on disk as safetensors: loading them never executes pickled code.

The architecture needed to rebuild the module travels in the safetensors header, so a
saved classifier is self-describing and can be loaded by anyone with galot installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from galot_core.config import ARCHITECTURES
from galot_core.errors import GalotError, show
from galot_core.io import atomic_write_bytes, safetensors_bytes, safetensors_metadata
from galot_core.models import Classifier, LossPredictionHead, build_model
from galot_core.runfolder.checks import CLASSES_MAX


def save_classifier(model: Classifier, path: str | os.PathLike, *, arch: str, in_channels: int,
                    loss_head: LossPredictionHead | None = None, extra: dict | None = None) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if loss_head is not None:
        tensors.update({f"loss_head.{k}": v.detach().cpu().contiguous() for k, v in loss_head.state_dict().items()})
    meta = {
        "arch": arch,
        "in_channels": str(in_channels),
        "num_classes": str(model.num_classes),
        "dropout": str(model.dropout.p),
        "extra": json.dumps(extra or {}),
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, meta))


def load_classifier(path: str | os.PathLike) -> tuple[Classifier, LossPredictionHead | None, dict]:
    """Rebuild a classifier (and its loss-prediction head, if saved) from a safetensors file."""
    path = Path(path)
    try:
        meta = safetensors_metadata(path)
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError, RecursionError) as e:
        reason = " ".join(str(e).split())[:160] or e.__class__.__name__
        raise GalotError(f"{path}: classifier weights are missing or corrupt ({reason}); retrain this cycle") from None
    arch, in_channels, num_classes, dropout = _checked_header(path, meta, tensors)
    model = build_model(arch, in_channels, num_classes, dropout)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise GalotError(f"{path}: classifier weights do not fit its architecture "
                         f"({str(e).splitlines()[0][:120]}); retrain this cycle") from None
    model.eval()
    head_state = {k[10:]: v for k, v in tensors.items() if k.startswith("loss_head.")}
    head = None
    if head_state:
        head = LossPredictionHead(model.feature_dim)
        try:
            head.load_state_dict(head_state)
        except RuntimeError:
            raise GalotError(f"{path}: loss-prediction head does not fit the classifier; retrain this cycle") from None
        head.eval()
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except (ValueError, RecursionError):
        raise GalotError(f"{path}: header field 'extra' is not JSON; retrain this cycle") from None
    return model, head, extra if isinstance(extra, dict) else {}


def _checked_header(path: Path, meta: dict, tensors: dict) -> tuple[str, int, int, float]:
    """The header's architecture fields, checked against each other and the stored weights
    before anything is allocated: a 400-byte header claiming a billion classes must not
    make galot allocate a billion-row layer."""
    def bad(field: str, what: str) -> GalotError:
        return GalotError(f"{path}: header field '{field}' {what}; not a galot classifier, retrain this cycle")

    if not isinstance(meta, dict) or "arch" not in meta:
        raise GalotError(f"{path}: not a galot classifier (no architecture in its header)")
    if meta["arch"] not in ARCHITECTURES:
        raise bad("arch", f"must be one of {', '.join(ARCHITECTURES)}, got {show(meta['arch'])}")
    try:
        in_channels, num_classes, dropout = int(meta["in_channels"]), int(meta["num_classes"]), float(meta["dropout"])
    except (KeyError, ValueError, TypeError):
        raise bad("in_channels/num_classes/dropout", "missing or not a number") from None
    if in_channels not in (1, 3):
        raise bad("in_channels", f"must be 1 or 3, got {in_channels}")
    fc = tensors.get("model.fc.weight")
    if not 1 <= num_classes <= CLASSES_MAX or fc is None or fc.ndim != 2 or fc.shape[0] != num_classes:
        raise bad("num_classes", f"must be 1 to {CLASSES_MAX} and match the stored weights "
                                 f"({tuple(fc.shape) if fc is not None else 'none'}), got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise bad("dropout", f"must be in [0, 1), got {dropout}")
    return meta["arch"], in_channels, num_classes, dropout

