"""Which pool images have been labelled so far — the state a run must never lose.

Labels may have cost real money (a person labelled them), so the state is a small,
human-readable JSON file written atomically after every change; it is read back, and
validated, by galot_core.runfolder.RunFolder.read_pool (the one reader of pool.json). It records, for each
labelled pool index, its label and the cycle in which it was bought; images answered
"none of these classes" are recorded as removed so they are never offered again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from galot_core.io import atomic_write_json


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
