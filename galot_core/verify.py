"""``galot verify <run>``: is every file of a run folder complete and unaltered?

A run folder holds what cost money: labels bought from people and hours of generation.
This walks it and checks each file against what the run recorded about it:

- ``config.json`` parses and validates; ``pool.json`` is consistent (indices unique and in
  range, one label and cycle per index) and agrees with every cycle's ``|L|``;
- each completed cycle's ``metrics.json`` parses, and the files it lists (classifier,
  embeddings, the adapted generator) have the SHA-256 it recorded; every classifier loads;
  every image names the adapted generator it came from;
- every synthetic image listed in a cycle's ``manifest.jsonl`` exists with its hash, and
  the count matches the cycle's ``|G|``; stray files (a write cut short) are reported;
- the exported dataset's shards match ``index.json`` and their own manifests;
- ``classifier.safetensors`` is the newest cycle's model; transfer models load;
- the run-level ``metrics.json`` and ``summary.json`` agree with the cycles on disk (types,
  ranges, one row per complete cycle), ``code.json`` and each transfer's metrics are valid.

Problems are returned, not raised, so the command can list all of them at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galot_core import export, synthetic
from galot_core.config import config_from_dict
from galot_core.errors import GalotError
from galot_core.runfolder import ADAPTER_FILES, BehindCycles, RunFolder
from galot_core.io import read_json


@dataclass(frozen=True)
class Problem:
    kind: str      # missing | altered | truncated | corrupt | inconsistent | stray
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.upper():<12} {self.path}: {self.detail}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Checker:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.problems: list[Problem] = []
        self.checked = 0

    def add(self, kind: str, path: Path, detail: str) -> None:
        self.problems.append(Problem(kind, str(path.relative_to(self.dir)) if path.is_relative_to(self.dir)
                                     else str(path), detail))

    def json(self, path: Path, required: bool = True):
        if not path.exists():
            if required:
                self.add("missing", path, "file not found")
            return None
        self.checked += 1
        try:
            return read_json(path)
        except (OSError, ValueError, RecursionError) as e:
            self.add("corrupt", path, f"not valid JSON ({e.__class__.__name__})")
            return None

    def read(self, path: Path, reader: Callable[[], Any]) -> Any:
        """What a run-folder reader returns for ``path``; a GalotError from it becomes a problem (None)."""
        if not path.exists():
            return None
        self.checked += 1
        try:
            return reader()
        except GalotError as e:
            detail = str(e).splitlines()[0]
            detail = detail[len(str(path)) + 2:] if detail.startswith(f"{path}: ") else detail
            self.add("corrupt", path, detail)
            return None

    def regular(self, path: Path) -> bool:
        """``path`` is a regular file; else a problem (a directory or a device where a file belongs)."""
        if path.is_file():
            return True
        self.add("corrupt", path, "is not a regular file (a directory?); move it away and restore the file")
        return False

    def hashed(self, path: Path, expected: str | None, what: str) -> bool:
        if not path.exists():
            self.add("missing", path, f"{what} not found")
            return False
        if not self.regular(path):
            return False
        self.checked += 1
        if expected and sha256_file(path) != expected:
            self.add("altered", path, f"{what} does not match its recorded SHA-256")
            return False
        return True

    def classifier(self, path: Path) -> None:
        from galot_core.checkpoint import load_classifier

        if not path.exists():
            self.add("missing", path, "classifier weights not found")
            return
        if not self.regular(path):
            return
        self.checked += 1
        try:
            load_classifier(path)
        except (GalotError, RuntimeError, ValueError) as e:
            kind = "truncated" if "incomplete" in str(e).lower() or "header" in str(e).lower() else "corrupt"
            reason = str(e).splitlines()[0].split(": ", 1)[-1]  # without the path, already in the line
            self.add(kind, path, f"does not load: {reason[:160]}")


def verify_run(run_dir: str | Path) -> tuple[list[Problem], int]:
    """All problems found in ``run_dir`` and the number of files checked."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GalotError(f"{run_dir}: not a run folder; pass runs/<experiment.name>")
    c, run = _Checker(run_dir), RunFolder(run_dir)
    raw = c.json(run.config_path)
    cfg = None
    if raw is not None:
        try:
            cfg = config_from_dict(raw, source=str(run.config_path))
        except GalotError as e:
            c.add("corrupt", run.config_path, str(e))
    pool = c.read(run.pool_path, lambda: run.read_pool_json(
        num_classes=len(cfg.data.classes) if cfg is not None and cfg.data.classes else None))
    last_model = None
    for cycle in _cycle_numbers(run_dir):
        m = c.read(run.metrics_path(cycle), lambda n=cycle: run.read_metrics(n))
        if m is None:
            continue  # an incomplete cycle (the next run finishes it), or a problem already reported
        for name, digest in (m.get("files") or {}).items():
            c.hashed(run.cycle_dir(cycle) / name, digest, name)
        adapt = cfg.gal.adapt if cfg is not None else "none"
        if adapt != "none":
            c.read(run.adapter_path(cycle, adapt), lambda n=cycle: run.read_adapter(n, adapt))
        c.classifier(run.model_path(cycle))
        last_model = run.model_path(cycle)
        if pool is not None and sum(1 for k in pool["cycles"] if k <= cycle) != m["labelled"]:
            c.add("inconsistent", run.pool_path, f"cycle {cycle} recorded |L| = {m['labelled']}, the pool "
                                                          "state disagrees")
        folder = run.synthetic_dir(cycle)
        if (folder / "manifest.jsonl").exists() or m.get("generated"):
            _check_synthetic(c, folder, m, cfg)

    _check_run_level(c, run)
    if last_model is not None and (run_dir / "classifier.safetensors").exists() and last_model.is_file() \
            and c.regular(run_dir / "classifier.safetensors"):
        c.checked += 1
        if sha256_file(run_dir / "classifier.safetensors") != sha256_file(last_model):
            c.add("altered", run_dir / "classifier.safetensors", "is not the newest cycle's classifier")
    if (run.dataset_dir / "index.json").exists():
        _check_export(c, run.dataset_dir)
    for model in sorted((run_dir / "transfer").glob("*/model.safetensors")) if (run_dir / "transfer").exists() else []:
        c.classifier(model)
    for metrics in sorted((run_dir / "transfer").glob("*/metrics.json")) if (run_dir / "transfer").exists() else []:
        c.read(metrics, lambda arch=metrics.parent.name: run.read_transfer_metrics(arch))
    return c.problems, c.checked


def _check_run_level(c: _Checker, run: RunFolder) -> None:
    """code.json, the run-level metrics.json and summary.json, against the cycles on disk.

    Files one cycle behind (the run stopped between a cycle's metrics and its summary) are
    not damage: the next ``galot run`` rewrites them, so they are no problem here (report and
    predict say to finish the cycle first)."""
    c.read(run.code_path, run.read_code)
    complete = run.completed_cycles()
    for cycle in _cycle_numbers(run.path):
        if cycle > complete + 1 and run.metrics_path(cycle).exists():
            c.add("inconsistent", run.metrics_path(cycle), f"cycle {cycle} has metrics but cycle {complete + 1} is "
                                                            "not complete (a cycle folder from elsewhere?)")
    try:
        rows = run.all_metrics()
    except GalotError:
        return  # a damaged cycle metrics file, already reported: nothing to compare the copies with
    for path, reader in ((run.run_metrics_path, run.read_run_metrics),
                         (run.summary_path, lambda: run.read_summary(rows) if rows else None)):
        def lenient(reader=reader):
            try:
                return reader()
            except BehindCycles:
                return None
        c.read(path, lenient)


def _cycle_numbers(run_dir: Path) -> list[int]:
    """The cycles with a folder named cycle_NNN (anything else under cycles/ is not a cycle)."""
    folder = run_dir / "cycles"
    if not folder.is_dir():
        return []
    return sorted(int(p.name[6:]) for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("cycle_") and p.name[6:].isdigit() and len(p.name) <= 12)


def _check_synthetic(c: _Checker, folder: Path, metrics: dict, cfg) -> None:
    try:
        entries = synthetic.read_manifest(folder)
    except GalotError as e:
        c.add("corrupt", folder / "manifest.jsonl", str(e).split(": ", 1)[-1])
        return
    c.checked += 1
    listed = {e.file for e in entries}
    adapt = cfg.gal.adapt if cfg is not None else "none"
    fit = (metrics.get("files") or {}).get(ADAPTER_FILES[adapt]) if adapt != "none" else None
    if any(e.adapter != fit for e in entries):
        c.add("inconsistent", folder / "manifest.jsonl", f"names another adapted generator than the cycle's "
                                                          f"{ADAPTER_FILES.get(adapt, 'none')}")
    for e in entries:
        path = folder / e.file
        if not path.exists():
            c.add("missing", path, "listed in the manifest")
            continue
        if not c.regular(path):
            continue
        c.checked += 1
        if sha256_file(path) != e.sha256:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 8))
                kind = "truncated" if not f.read().endswith(b"IEND\xaeB`\x82") else "altered"
            c.add(kind, path, "does not match its manifest hash")
    accumulate = bool(cfg and cfg.gal.accumulate)
    if not accumulate and metrics.get("generated") is not None and metrics["generated"] != len(entries):
        c.add("inconsistent", folder / "manifest.jsonl",
              f"lists {len(entries)} images, the cycle recorded |G| = {metrics['generated']}")
    for path in folder.rglob("*"):
        if path.is_file() and path.name != "manifest.jsonl" and str(path.relative_to(folder)) not in listed:
            c.add("stray", path, "not in the manifest (a write cut short?); never used, safe to delete")


def _check_export(c: _Checker, out: Path) -> None:
    try:
        index = export.read_index(out)
    except (GalotError, ValueError) as e:
        c.add("corrupt", out / "index.json", str(e))
        return
    c.checked += 1
    for shard in index["shards"]:
        path = out / shard["file"]
        if not c.hashed(path, shard["sha256"], "shard"):
            continue
        try:
            export.read_shard(path)
        except GalotError as e:
            c.add("corrupt", path, str(e).split(": ", 1)[-1])
    real = c.json(out / "real.json")
    if real is not None and not (isinstance(real, dict) and isinstance(real.get("labelled"), list)):
        c.add("corrupt", out / "real.json", "no 'labelled' list")


def format_report(problems: list[Problem], checked: int, run_dir: Path) -> str:
    if not problems:
        return f"galot verify: {run_dir}: OK ({checked} files checked)"
    lines = [str(p) for p in problems]
    lines.append(f"galot verify: {run_dir}: {len(problems)} problem(s) in {checked} files checked")
    return "\n".join(lines)
