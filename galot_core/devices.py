"""Where a model runs: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | any torch device string.

One rule for every config field that names a device (``train.device``, ``transfer.device``,
``t2i.device``), so the classifier and the generator never disagree about what ``auto`` means
or about which mistakes are refused: a string torch cannot parse, or CUDA where there is none,
is a one-line error naming the field.
"""

from __future__ import annotations

import torch

from galot_core.errors import GalotError


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """``name`` as a torch.device (``auto``: CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GalotError(f"{field}: {name!r} is not a device: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GalotError(f"{field}: {name!r} but CUDA is not available here: use auto or cpu")
    return device
