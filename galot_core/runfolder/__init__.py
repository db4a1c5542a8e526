"""The run folder: every path of a run, and one reader (and writer) for each of its files.

One experiment is one folder; the steps of a cycle (galot_core/steps/) communicate only
through it, so a run killed at any point continues where it stopped. Layout::

    runs/<name>/
      config.json                 parameters the experiment was started with (its ε schedule too)
      pool.json                   labelled pool indices, labels, cycle bought
      labels/                     human oracle only: each cycle's batch, thumbnails, answers
      cycles/cycle_003/
        .textopt-000.safetensors  one TextOpt group's result, until merged
        embeddings.safetensors    s* and the TextOpt-optimised s, one row per class
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

Every write is atomic (galot_core.io); a reader returns None (or an empty list) for a file
that does not exist yet, and raises a one-line :class:`GalotError` for one that is corrupt.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from galot_core import synthetic
from galot_core.config import show
from galot_core.data.pool import PoolState
from galot_core.errors import GalotError
from galot_core.io import atomic_write_bytes, atomic_write_json, read_json, safetensors_bytes, safetensors_metadata


POOL_MAX = 10**9          # pool indices beyond this are not an image pool galot can hold
CLASSES_MAX = 100_000     # more classes than any classification dataset (ImageNet-21k: 21,841)
_SHA256 = re.compile(r"[0-9a-f]{64}")
RUN_LOCK_ENV = "GALOT_RUN_LOCK_FD"  # a descriptor holding the run lock, passed to the `galot run` a page starts


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
    files = d.get("files") or {}
    if not isinstance(files, dict):
        raise bad_file(path, "'files'", "must map file names to SHA-256 hashes", fix)
    for name, digest in files.items():
        if not isinstance(name, str) or not synthetic.safe_relative(name) or "/" in name:
            raise bad_file(path, "'files'", f"names {show(name)}, not a file of the cycle folder", fix)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad_file(path, f"'files'[{show(name)}]", "must be a SHA-256 hex digest", fix)
    return d


class RunFolder:
    """Paths and file access of one run folder (``runs/<experiment.name>``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ----- paths --------------------------------------------------------------------------
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

    # ----- locks --------------------------------------------------------------------------
    @contextmanager
    def labels_lock(self) -> Iterator[None]:
        """Hold the cross-process lock on the label answers (and their commit to pool.json).

        Every read-modify-write of ``labels/*.answers.json`` and the commit happens under it,
        so the labelling page, ``galot label import`` and a running experiment, in any
        processes, never overwrite each other's acknowledged answers. It is an ``flock`` on
        the labels folder itself: no lock file is left behind, and the kernel releases it
        when a holder dies.
        """
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.labels_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def try_run_lock(self) -> int | None:
        """The run lock, held by the one ``galot run`` working on this folder: a descriptor, or None if taken.

        An ``flock`` on the run folder. It is shared with a child process that inherits the
        descriptor (``subprocess.Popen(pass_fds=...)``), which is how the labelling page's
        "done" hands the lock to the run it starts: no second run can start in between.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _inherited_run_lock(self) -> int | None:
        """The run lock handed down by the process that started this one (RUN_LOCK_ENV), if it is this folder's."""
        text = os.environ.pop(RUN_LOCK_ENV, "")
        if not text.isdigit():
            return None
        fd = int(text)
        try:
            same = (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (os.stat(self.path).st_ino, os.stat(self.path).st_dev)
            if same:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op on the description that holds it
                return fd
        except OSError:
            pass
        return None

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Be the one process running this experiment while inside; a second one gets one line, exit 2."""
        fd = self._inherited_run_lock()
        if fd is None:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = self.try_run_lock()
        if fd is None:
            raise GalotError(f"{self.path}: another `galot run` (or the labelling page's done) is already running this "
                             "experiment; wait for it to stop, then run again")
        try:
            yield
        finally:
            os.close(fd)

    # ----- config, code and pool ----------------------------------------------------------
    def read_code(self) -> str | None:
        return read_json(self.code_path).get("sha256") if self.code_path.exists() else None

    def write_code(self, sha256: str) -> None:
        atomic_write_json(self.code_path, {"sha256": sha256})

    def read_config(self) -> dict[str, Any] | None:
        """The parameters the run was started with, as written (validate with galot_core.config)."""
        return read_json(self.config_path) if self.config_path.exists() else None

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
        return _checked_tensors(path, ("s_star", "s", "epsilon")) if path.exists() else None

    def embeddings_calls(self, cycle: int) -> int | None:
        path = self.embeddings_path(cycle)
        return _calls(path) if path.exists() else None

    def write_embeddings(self, cycle: int, tensors: dict[str, torch.Tensor], prompts: list[str], calls: int) -> None:
        atomic_write_bytes(self.embeddings_path(cycle),
                           safetensors_bytes(tensors, {"prompts": "\n".join(prompts), "unet_calls": str(calls)}))

    def read_group(self, cycle: int, group: int) -> tuple[dict[str, torch.Tensor], int] | None:
        path = self.group_path(cycle, group)
        if not path.exists():
            return None
        return _checked_tensors(path, ("s", "epsilon")), _calls(path)

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


_EMBEDDINGS_FIX = "delete it to run the cycle's TextOpt again"


def _checked_tensors(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
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


def _calls(path: Path) -> int:
    """The ``unet_calls`` count in a TextOpt result's header."""
    try:
        calls = int(safetensors_metadata(path).get("unet_calls", 0))
    except Exception as e:  # noqa: BLE001 (as above)
        raise GalotError(f"{path}: embeddings header is unreadable ({e.__class__.__name__}); {_EMBEDDINGS_FIX}") \
            from None
    if calls < 0:
        raise bad_file(path, "header field 'unet_calls'", "must be >= 0", _EMBEDDINGS_FIX)
    return calls
