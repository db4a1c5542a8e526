"""The building blocks of params.yaml's schema (galot_core/config.py): a key with its bounds and
the reason for them, a strict frozen section, tuple keys, and the bounds several keys share.

Kept apart from the schema itself so that config.py reads as the list of keys it declares.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def schema_field(default: Any, *, min: float | None = None, max: float | None = None, min_exclusive: bool = False,
           help: str = "", why: str = "") -> Any:
    """A schema entry; ``why`` says why ``max`` is where it is (appended to the help text, which
    the Prefect UI shows next to the field)."""
    if max is not None and why:
        help = f"{help} (at most {max:g}: {why})" if help else f"at most {max:g}: {why}"
    bounds: dict[str, Any] = {"le": max} if max is not None else {}
    if min is not None:
        bounds["gt" if min_exclusive else "ge"] = min
    return Field(default, description=help or None, json_schema_extra={"why": why} if why else None, **bounds)


class Section(BaseModel):
    """One section of params.yaml: immutable, no unknown keys, no silent type conversion (``"10"``
    is not an integer, ``true`` is not a number), finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


def as_tuple(value: Any) -> Any:
    """YAML and JSON have no tuples: a list, or one bare value, stands for one; never an empty one."""
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not value:
        raise ValueError("must list at least one value")
    return value


# A tuple key (class names, architectures, strategies) as params.yaml writes it: see as_tuple.
TUPLE = BeforeValidator(as_tuple)


# Bounds shared by several keys, with the reason stated once.
SEED_MAX = 2**32 - 1          # numpy's and torch's generators take 32-bit seeds
BATCH_MAX = 65536             # more images per batch than any accelerator holds
STEPS_MAX = 10**7             # optimiser steps: ~days on an accelerator
WORKERS_MAX = 1024
LR_MAX = 100.0                # a learning rate above this diverges for every model here
