"""The run folder: every path of a run, and one reader (and writer) for each of its files.

One experiment is one folder; the steps of a cycle (galot_core/steps/) communicate only
through it, so a run killed at any point continues where it stopped. Layout::

    runs/<name>/
      config.json                 parameters the experiment was started with (its ε schedule too)
      pool.json                   labelled pool indices, labels, cycle bought
      labels/                     human oracle only: each cycle's batch, thumbnails, answers
      cycles/cycle_003/
        .textopt-000.safetensors  one TextOpt group's result, until merged
        pytorch_lora_weights.safetensors  gal.adapt: lora: the generator's LoRA fitted this cycle
                                  (diffusers' format: pipe.load_lora_weights(cycle folder))
        adapted_embeddings.safetensors    gal.adapt: embedding: each class's fitted s*_c
        embeddings.safetensors    s* (or the adapted centres) and the TextOpt-optimised s, one row per class
        generate_unet_calls.json  UNet calls generation spent (across resumes)
        selection.json            kept / rejected candidates (gal.candidates, gal.label_check)
        rejected/                 the rejected candidates' PNGs
        model.safetensors         classifier trained in cycle 3
        train.json                how it was trained
        metrics.json              test accuracy, |L|, |G|, ε, seconds per step: the cycle is complete
        grid.png                  what the cycle added, for people
      synthetic/cycle_003/        generated images + manifest.jsonl (galot_core.synthetic)
      dataset/                    the export DVC versions (galot_core.export)
      metrics.json, accuracy.csv, summary.json, classifier.safetensors   run-level deliverables
                                  (checked against the cycles: galot_core/runfolder/deliverables.py)
      transfer/<arch>/metrics.json  galot transfer's result per architecture

Every write is atomic (galot_core.io); a reader returns None (or an empty list) for a file
that does not exist yet, and raises a one-line :class:`GalotError` for one that is corrupt
(what each file must hold: galot_core/runfolder/checks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from galot_core import synthetic
from galot_core.data.pool import PoolState
from galot_core.io import atomic_write_bytes, atomic_write_json, read_json, safetensors_bytes
from galot_core.runfolder.checks import (bad_file, check_metrics, check_pool, checked_adapter, checked_tensors,
                                         header_unet_calls, read_checked_json)
from galot_core.runfolder.locks import RUN_LOCK_ENV, FolderLocks  # noqa: F401 (RUN_LOCK_ENV: re-exported)
from galot_core.runfolder.deliverables import (BehindCycles, behind,  # noqa: F401 (BehindCycles: re-exported)
                                               check_code, check_run_metrics, check_summary,
                                               check_transfer)


# gal.adapt → the file its fit is kept in; the LoRA's has diffusers' default name, so that
# `pipe.load_lora_weights("runs/<name>/cycles/cycle_003")` finds it.
ADAPTER_FILES = {"lora": "pytorch_lora_weights.safetensors", "embedding": "adapted_embeddings.safetensors"}


class RunFolder(FolderLocks):
    """Paths and file access of one run folder (``runs/<experiment.name>``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ----- paths --------------------------------------------------------------------------
    def contains(self, path: Path) -> bool:
        """``path``, links resolved, is inside this run folder: a file of a cycle folder that is a
        symlink to somewhere else (a home directory, /etc) is never read into what galot writes."""
        try:
            return Path(path).resolve().is_relative_to(self.path.resolve())
        except (OSError, RuntimeError):  # a loop of links
            return False

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def pool_path(self) -> Path:
        return self.path / "pool.json"

    @property
    def labels_dir(self) -> Path:
        return self.path / "labels"

    @property
    def dataset_dir(self) -> Path:
        return self.path / "dataset"

    @property
    def run_metrics_path(self) -> Path:
        """Every complete cycle's metrics, in order (the run-level copy)."""
        return self.path / "metrics.json"

    @property
    def accuracy_csv_path(self) -> Path:
        return self.path / "accuracy.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def classifier_path(self) -> Path:
        """A copy of the newest cycle's classifier, the run's deliverable."""
        return self.path / "classifier.safetensors"

    @property
    def code_path(self) -> Path:
        """The SHA-256 of the galot code that started the run (what ``--restart-if-changed`` compares)."""
        return self.path / "code.json"

    @property
    def tracking_path(self) -> Path:
        """What has been mirrored to MLflow, per tracking URI (tasks/tracking.py)."""
        return self.path / "tracking.json"

    def cycle_dir(self, cycle: int) -> Path:
        return self.path / "cycles" / f"cycle_{cycle:03d}"

    def synthetic_dir(self, cycle: int) -> Path:
        return self.path / "synthetic" / f"cycle_{cycle:03d}"

    def embeddings_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "embeddings.safetensors"

    def adapter_path(self, cycle: int, kind: str) -> Path:
        """The cycle's fitted generator (``gal.adapt``: ``lora`` or ``embedding``)."""
        return self.cycle_dir(cycle) / ADAPTER_FILES[kind]

    def group_path(self, cycle: int, group: int) -> Path:
        return self.cycle_dir(cycle) / f".textopt-{group:03d}.safetensors"

    def part_path(self, cycle: int, shard: int) -> Path:
        return self.synthetic_dir(cycle) / f".part-{shard:05d}.json"

    def generate_calls_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "generate_unet_calls.json"

    def selection_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "selection.json"

    def rejected_dir(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "rejected"

    def model_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "model.safetensors"

    def train_info_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "train.json"

    def metrics_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "metrics.json"

    def grid_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "grid.png"

    def label_batch_path(self, cycle: int) -> Path:
        return self.labels_dir / f"cycle_{cycle:03d}.json"

    def label_answers_path(self, cycle: int) -> Path:
        return self.labels_dir / f"cycle_{cycle:03d}.answers.json"

    # ----- config, code and pool ----------------------------------------------------------
    def read_code(self) -> str | None:
        """The SHA-256 recorded in code.json (validated), or None before the first ``galot run``."""
        if not self.code_path.exists():
            return None
        fix = "delete it (the next `galot run` records the code running then)"
        return check_code(read_checked_json(self.code_path, "code record", fix), self.code_path)

    def write_code(self, sha256: str) -> None:
        atomic_write_json(self.code_path, {"sha256": sha256})

    def read_config(self) -> dict[str, Any] | None:
        """The parameters the run was started with, as written (validate with galot_core.config)."""
        if not self.config_path.exists():
            return None
        d = read_checked_json(self.config_path, "the run's parameters", "restore it from a backup or start a new "
                              "experiment.name")
        if not isinstance(d, dict):
            raise bad_file(self.config_path, "the file", "must be a JSON object of sections (the run's parameters)",
                           "restore it from a backup or start a new experiment.name")
        return d

    def write_config(self, params: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, params)

    def read_pool(self, pool_size: int, num_classes: int | None = None) -> PoolState:
        """The labelled pool, checked against the dataset's pool size (and class count when given)."""
        d = self.read_pool_json(pool_size, num_classes)
        if d is None:
            return PoolState(pool_size)
        return PoolState(d["pool_size"], d["labelled"], d["labels"], d["cycles"], d["removed"])

    def read_pool_json(self, pool_size: int | None = None, num_classes: int | None = None) -> dict[str, Any] | None:
        """pool.json, validated (without the dataset: only what the file itself must satisfy)."""
        if not self.pool_path.exists():
            return None
        fix = "restore it from a backup or start a new experiment.name"
        return check_pool(read_checked_json(self.pool_path, "pool state", fix), self.pool_path, pool_size, num_classes)

    def write_pool(self, state: PoolState) -> None:
        state.save(self.pool_path)

    # ----- embeddings ---------------------------------------------------------------------
    def read_embeddings(self, cycle: int) -> dict[str, torch.Tensor] | None:
        """``s_star``, ``s`` and ``epsilon`` (one row per class) of the cycle, or None before TextOpt."""
        path = self.embeddings_path(cycle)
        return checked_tensors(path, ("s_star", "s", "epsilon")) if path.exists() else None

    def embeddings_calls(self, cycle: int) -> int | None:
        path = self.embeddings_path(cycle)
        return header_unet_calls(path) if path.exists() else None

    def write_embeddings(self, cycle: int, tensors: dict[str, torch.Tensor], prompts: list[str], calls: int) -> None:
        atomic_write_bytes(self.embeddings_path(cycle),
                           safetensors_bytes(tensors, {"prompts": "\n".join(prompts), "unet_calls": str(calls)}))

    # ----- the adapted generator -------------------------------------------------------------
    def read_adapter(self, cycle: int, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The cycle's ``gal.adapt`` fit: its tensors and record (inputs' hash, losses, calls), or None."""
        path = self.adapter_path(cycle, kind)
        return checked_adapter(path, kind) if path.exists() else None

    def write_adapter(self, cycle: int, kind: str, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        atomic_write_bytes(self.adapter_path(cycle, kind),
                           safetensors_bytes(tensors, record))

    def read_group(self, cycle: int, group: int) -> tuple[dict[str, torch.Tensor], int] | None:
        path = self.group_path(cycle, group)
        if not path.exists():
            return None
        return checked_tensors(path, ("s", "epsilon")), header_unet_calls(path)

    def write_group(self, cycle: int, group: int, tensors: dict[str, torch.Tensor], calls: int) -> None:
        atomic_write_bytes(self.group_path(cycle, group), safetensors_bytes(tensors, {"unet_calls": str(calls)}))

    # ----- generated images ---------------------------------------------------------------
    def read_manifest(self, cycle: int) -> list[synthetic.ManifestEntry]:
        return synthetic.read_manifest(self.synthetic_dir(cycle))

    def write_manifest(self, cycle: int, entries: list[synthetic.ManifestEntry]) -> None:
        synthetic.write_manifest(self.synthetic_dir(cycle), entries)

    def read_part(self, cycle: int, shard: int) -> dict[str, Any]:
        path = self.part_path(cycle, shard)
        return read_json(path) if path.exists() else {"entries": [], "unet_calls": 0}

    def write_part(self, cycle: int, shard: int, part: dict[str, Any]) -> None:
        atomic_write_json(self.part_path(cycle, shard), part)

    def part_paths(self, cycle: int) -> list[Path]:
        folder = self.synthetic_dir(cycle)
        return sorted(folder.glob(".part-*.json")) if folder.exists() else []

    def read_generate_calls(self, cycle: int) -> int | None:
        path = self.generate_calls_path(cycle)
        return int(read_json(path)["unet_calls"]) if path.exists() else None

    def write_generate_calls(self, cycle: int, calls: int) -> None:
        atomic_write_json(self.generate_calls_path(cycle), {"unet_calls": calls})

    def read_selection(self, cycle: int) -> dict[str, Any] | None:
        path = self.selection_path(cycle)
        return read_json(path) if path.exists() else None

    def write_selection(self, cycle: int, decision: dict[str, Any]) -> None:
        atomic_write_json(self.selection_path(cycle), decision)

    # ----- classifiers, training and metrics ----------------------------------------------
    def read_classifier(self, cycle: int):
        """(classifier, loss-prediction head or None) trained in ``cycle``, or None (cycle 0, not trained yet)."""
        from galot_core.checkpoint import load_classifier

        path = self.model_path(cycle)
        if cycle < 1 or not path.exists():
            return None
        model, head, _ = load_classifier(path)
        return model, head

    def read_train_info(self, cycle: int) -> dict[str, Any] | None:
        """How the cycle's classifier was trained; None until both it and its weights are on disk."""
        path = self.train_info_path(cycle)
        return read_json(path) if path.exists() and self.model_path(cycle).exists() else None

    def write_train_info(self, cycle: int, info: dict[str, Any]) -> None:
        atomic_write_json(self.train_info_path(cycle), info)

    def read_metrics(self, cycle: int) -> dict[str, Any] | None:
        """The cycle's metrics (validated), or None while the cycle is incomplete."""
        path = self.metrics_path(cycle)
        if not path.exists():
            return None
        return check_metrics(read_checked_json(path, "cycle metrics", "delete it to redo the cycle's evaluation"),
                             path, cycle)

    def write_metrics(self, cycle: int, row: dict[str, Any]) -> None:
        atomic_write_json(self.metrics_path(cycle), row)

    def completed_cycles(self) -> int:
        """Cycles 1..c all have their metrics (the mark of a complete cycle)."""
        c = 0
        while self.metrics_path(c + 1).exists():
            c += 1
        return c

    def all_metrics(self) -> list[dict[str, Any]]:
        return [self.read_metrics(c) for c in range(1, self.completed_cycles() + 1)]  # type: ignore[misc]

    # ----- run-level deliverables (galot_core/runfolder/deliverables.py) ---------------------
    def read_run_metrics(self, cycles: list[dict[str, Any]] | None = None) -> list[dict[str, Any]] | None:
        """The run-level metrics.json, checked row by row against the cycle folders (None before cycle 1);
        ``cycles``: their metrics when the caller has read them already.

        Raises :class:`BehindCycles` when the run stopped between a cycle's metrics and its summary."""
        path = self.run_metrics_path
        if not path.exists():
            return None
        d = read_checked_json(path, "run metrics", "delete it and rerun `galot run`")
        return check_run_metrics(d, path, self.all_metrics() if cycles is None else cycles)

    def read_summary(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        path = self.summary_path
        if not path.exists():
            return None
        return check_summary(read_checked_json(path, "run summary", "delete it and rerun `galot run`"), path, rows)

    def transfer_metrics_path(self, arch: str) -> Path:
        return self.path / "transfer" / arch / "metrics.json"

    def read_transfer_metrics(self, arch: str) -> dict[str, Any] | None:
        path = self.transfer_metrics_path(arch)
        if not path.exists():
            return None
        fix = f"delete it and rerun `galot transfer --arch {arch}`"
        return check_transfer(read_checked_json(path, "transfer metrics", fix), path, arch)

    def finished_rows(self) -> list[dict[str, Any]]:
        """Every complete cycle's metrics, once the run-level files agree with them — what report and predict show.

        A one-line GalotError naming the file when a run-level file is damaged or disagrees
        with the cycles on disk, or when it lags them (the run stopped before its summary:
        rerun ``galot run`` to finish that cycle)."""
        rows = self.all_metrics()
        if not rows:
            return rows
        if self.read_run_metrics(rows) is None:
            raise behind(self.run_metrics_path, None, len(rows))
        if self.read_summary(rows) is None:
            raise behind(self.summary_path, None, len(rows))
        return rows
