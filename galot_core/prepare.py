"""The pipeline's first stage: check the dataset loads as configured, and train the judge.

``galot prepare`` (DVC stage ``prepare``) loads ``data.*`` exactly as every later stage
will, records what it found — class names, split sizes and a hash of each split's pixels
and labels, so a silently changed dataset shows up as a changed stage output — and, when
``experiment.judge`` names a file, trains the fully-supervised classifier that judges
pseudo-labels (``galot_core.judge``) if it does not exist yet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from galot_core.config import Config
from galot_core.data import ImageSet, load_dataset
from galot_core.io import atomic_write_json


def split_sha256(split: ImageSet) -> str:
    h = hashlib.sha256(split.images.contiguous().numpy().tobytes())
    h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def prepare(cfg: Config, out: Path) -> dict[str, Any]:
    from galot_core.judge import load_or_train_judge, preprocess_for
    from galot_core.train import accuracy

    d = load_dataset(cfg.data)
    info: dict[str, Any] = {
        "dataset": d.name, "class_names": d.class_names, "image_size": d.image_size, "channels": d.channels,
        "pool": len(d.pool), "test": len(d.test), "pool_sha256": split_sha256(d.pool), "test_sha256": split_sha256(d.test),
        "t2i_train": len(d.t2i_train) if d.t2i_train is not None else 0,
    }
    if cfg.experiment.judge:
        judge = load_or_train_judge(d, cfg.experiment.judge)
        acc = accuracy(judge, d.test.images, d.test.labels, preprocess_for(d))
        info["judge"] = {"path": cfg.experiment.judge, "test_accuracy": acc,
                         "sha256": hashlib.sha256(Path(cfg.experiment.judge).read_bytes()).hexdigest()}
    atomic_write_json(out, info)
    return info
