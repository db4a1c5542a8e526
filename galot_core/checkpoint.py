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

from galot_core.errors import GalotError
from galot_core.io import atomic_write_bytes, safetensors_bytes, safetensors_metadata
from galot_core.models import Classifier, LossPredictionHead, build_model


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
    except (OSError, SafetensorError) as e:
        raise GalotError(f"{path}: classifier weights are missing or corrupt ({e}); retrain this cycle") from None
    try:
        model = build_model(meta["arch"], int(meta["in_channels"]), int(meta["num_classes"]), float(meta["dropout"]))
    except KeyError:
        raise GalotError(f"{path}: not a galot classifier (no architecture in its header)") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    head_state = {k[10:]: v for k, v in tensors.items() if k.startswith("loss_head.")}
    head = None
    if head_state:
        head = LossPredictionHead(model.feature_dim)
        head.load_state_dict(head_state)
        head.eval()
    return model, head, json.loads(meta.get("extra", "{}"))

