"""Which pool images have been labelled so far — the state a run must never lose.

Labels may have cost real money (a person labelled them), so the state is a small,
human-readable JSON file written atomically after every change. It records, for each
labelled pool index, its label and the cycle in which it was bought; images answered
"none of these classes" are recorded as removed so they are never offered again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from galot_core.errors import GalotError
from galot_core.io import atomic_write_json, read_json


@dataclass
class PoolState:
    pool_size: int
    labelled: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    def add(self, indices: list[int] | torch.Tensor, labels: list[int] | torch.Tensor, cycle: int) -> None:
        indices = [int(i) for i in indices]
        labels = [int(v) for v in labels]
        if len(indices) != len(labels):
            raise ValueError("one label per index")
        taken = set(self.labelled) | set(self.removed)
        clash = [i for i in indices if i in taken or not 0 <= i < self.pool_size]
        if clash or len(set(indices)) != len(indices):
            raise ValueError(f"indices already labelled, duplicated or out of range: {clash[:5]}")
        self.labelled += indices
        self.labels += labels
        self.cycles += [cycle] * len(indices)

    def remove(self, indices: list[int]) -> None:
        self.removed += [int(i) for i in indices if int(i) not in self.removed]

    def labelled_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labelled, dtype=torch.int64)

    def labels_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.int64)

    def unlabelled_tensor(self) -> torch.Tensor:
        mask = torch.ones(self.pool_size, dtype=torch.bool)
        if self.labelled:
            mask[self.labelled_tensor()] = False
        if self.removed:
            mask[torch.tensor(self.removed, dtype=torch.int64)] = False
        return torch.nonzero(mask).flatten()

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, {
            "pool_size": self.pool_size,
            "labelled": self.labelled,
            "labels": self.labels,
            "cycles": self.cycles,
            "removed": self.removed,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PoolState":
        try:
            d = read_json(path)
            state = cls(int(d["pool_size"]), [int(i) for i in d["labelled"]], [int(v) for v in d["labels"]],
                        [int(c) for c in d["cycles"]], [int(i) for i in d.get("removed", [])])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GalotError(f"{path}: pool state is unreadable ({e.__class__.__name__}); "
                             "restore it from a backup or start a new experiment name") from None
        if not (len(state.labelled) == len(state.labels) == len(state.cycles)):
            raise GalotError(f"{path}: pool state is inconsistent (lengths differ); restore it from a backup")
        return state

    @classmethod
    def load_or_new(cls, path: str | os.PathLike, pool_size: int) -> "PoolState":
        if Path(path).exists():
            state = cls.load(path)
            if state.pool_size != pool_size:
                raise GalotError(f"{path}: pool has {state.pool_size} images but the dataset has {pool_size}; "
                                 "the dataset changed — use a new experiment.name")
            return state
        return cls(pool_size)
