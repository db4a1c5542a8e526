"""Step 5: test accuracy of the cycle's classifier; writing the metrics marks the cycle complete.

Also what a finished cycle leaves for people and pipelines: the judged pseudo-label accuracy
(paper §4.4), a grid of what the cycle added, the run-level summary files, and the cycle's
shard of the exported dataset (galot_core.export).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from galot_core import export, synthetic
from galot_core.context import Context
from galot_core.faults import failpoint
from galot_core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from galot_core.judge import judged_accuracy
from galot_core.steps.embeddings import effective_epsilon
from galot_core.train import accuracy

# accuracy.csv: "budget" is the real-label budget the cycle stands for (cycle × B_AL), the x
# axis of the paper's curves — equal to "labelled" except in GAL-only runs, which have none.
CSV_COLUMNS = ("cycle", "budget", "labelled", "generated", "epsilon", "test_accuracy", "judged_accuracy")


@dataclass
class CycleMetrics:
    cycle: int
    labelled: int
    generated: int
    epsilon: float
    test_accuracy: float | None            # None: no labelled test set (an unlabelled folder)
    seconds: dict[str, float]
    judged_accuracy: float | None = None   # pseudo-labels the judge agrees with (None: no judge/images)
    unet_calls: dict[str, int] | None = None
    files: dict[str, str] | None = None   # SHA-256 of the cycle's weights, checked by `galot verify`

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unet_calls": self.unet_calls or {}, "files": self.files or {}}


def unet_calls(ctx: Context, cycle: int) -> dict[str, int]:
    """UNet forward passes the cycle spent, by step (a CFG pair counts once), across resumes."""
    run, out = ctx.folder, {}
    if (calls := run.embeddings_calls(cycle)) is not None:
        out["textopt"] = calls
    if (calls := run.read_generate_calls(cycle)) is not None:
        out["generate"] = calls
    if ctx.cfg.gal.adapt != "none" and (fit := run.read_adapter(cycle, ctx.cfg.gal.adapt)) is not None:
        out["adapt"] = int(fit[1]["unet_calls"])
    if (decision := run.read_selection(cycle)) is not None and ctx.cfg.gal.label_check != "none":
        out["label_check"] = int(decision.get("unet_calls", 0))
    return out


def judge_generated(ctx: Context, cycle: int) -> float | None:
    """Share of the cycle's generated images the judge puts in their prompted class (paper §4.4)."""
    if ctx.judge is None or not ctx.uses_generation or not ctx.folder.read_manifest(cycle):
        return None
    images, targets = ctx.generated_images(cycle)
    return judged_accuracy(ctx.judge, images, targets, ctx.dataset)


def evaluate_cycle(ctx: Context, cycle: int, seconds: dict[str, float]) -> dict[str, Any]:
    """Test accuracy of the cycle's classifier and the cycle's record; writing it completes the cycle."""
    run = ctx.folder
    model, _ = ctx.load_model(cycle)  # type: ignore[misc]
    test = ctx.dataset.test
    acc = accuracy(model, test.images, test.labels, ctx.preprocess, device=ctx.device,
                   batch_size=ctx.cfg.train.eval_batch_size) if len(test) else None
    generated = sum(len(run.read_manifest(c)) for c in ctx.synthetic_cycles(cycle))
    failpoint("evaluate.before_metrics")
    adapter = [run.adapter_path(cycle, ctx.cfg.gal.adapt)] if ctx.cfg.gal.adapt != "none" else []
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (run.model_path(cycle), run.embeddings_path(cycle), *adapter) if p.exists()}
    metrics = CycleMetrics(cycle=cycle, labelled=len(ctx.pool_state().labelled), generated=generated,
                           epsilon=effective_epsilon(ctx, cycle), test_accuracy=acc, seconds=seconds,
                           judged_accuracy=judge_generated(ctx, cycle), unet_calls=unet_calls(ctx, cycle),
                           files=files)
    grid = sample_grid(ctx, cycle)  # before the metrics: a cycle with metrics is complete, never revisited
    run.write_metrics(cycle, metrics.to_dict())
    write_summary(ctx)
    return {**metrics.to_dict(), "grid": str(grid) if grid else None}


def write_summary(ctx: Context) -> None:
    """Run-level files: all metrics (JSON), accuracy by cycle (CSV, a DVC plot), a summary
    (DVC metrics) and a copy of the newest classifier — the experiment's deliverables."""
    run = ctx.folder
    rows = run.all_metrics()
    atomic_write_json(run.run_metrics_path, rows)
    b = ctx.cfg.al.budget_per_cycle
    lines = [",".join(CSV_COLUMNS)] + [",".join("" if v is None else str(v) for v in
                                                ({**r, "budget": r["cycle"] * b}.get(k) for k in CSV_COLUMNS))
                                       for r in rows]
    atomic_write_text(run.accuracy_csv_path, "\n".join(lines) + "\n")
    if not rows:
        return
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
    atomic_write_json(run.summary_path, {
        "cycles": len(rows), "labelled": rows[-1]["labelled"], "generated": rows[-1]["generated"],
        "final_test_accuracy": rows[-1]["test_accuracy"],
        "mean_test_accuracy": sum(accs) / len(accs) if accs else None})
    atomic_write_bytes(run.classifier_path, run.model_path(len(rows)).read_bytes())


def sample_grid(ctx: Context, cycle: int, per_class: int = 8) -> Path | None:
    """A PNG of what the cycle added: generated images (a row per class), else the real batch bought."""
    path, d = ctx.folder.grid_path(cycle), ctx.dataset
    if path.exists():
        return path
    entries = ctx.folder.read_manifest(cycle) if ctx.uses_generation else []
    if entries:
        rows = [[k for k, e in enumerate(entries) if e.label == c][:per_class] for c in range(d.num_classes)]
        picked = [k for row in rows for k in row]
        images = ctx.generated_images(cycle)[0][picked]
        nrow = max(len(r) for r in rows)
        if any(len(r) != nrow for r in rows):
            nrow = min(len(picked), 16)
    else:
        state = ctx.pool_state()
        idx = [i for i, c in zip(state.labelled, state.cycles) if c == cycle]
        if not idx:
            return None
        images, nrow = d.pool.images[torch.tensor(idx)], min(len(idx), 16)
    synthetic.save_grid(images, nrow, path)
    return path


def export_cycle(ctx: Context, cycle: int) -> Path:
    """The cycle's shard of the exported dataset (and the index of all shards so far)."""
    return export.export_dataset(ctx.dir, ctx.dataset, list(range(1, cycle + 1)), ctx.cfg.gal.accumulate,
                                 ctx.cfg.to_dict()["data"])
