"""Step 3, end: keep B_GAL of the cycle's generated candidates (``gal.candidates``, ``gal.label_check``).

Over-generating and selecting by the exact σ_GAL of the final images needs no gradient
estimate at all; the label check keeps the selection from buying uncertainty with wrong
pseudo-labels. The decision is written first (selection.json), then the manifest lists
only the kept images and the rejected ones move to ``cycles/cycle_NNN/rejected/``, so a
crash anywhere resumes to the same result.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from galot_core import acquisition, synthetic
from galot_core.context import Context
from galot_core.steps.adapt import use_adapter


def select_generated(ctx: Context, cycle: int) -> int:
    """Keep the candidates the label check confirms, the ones the last classifier is least sure of
    first; returns the number kept (every image when there is nothing to choose)."""
    g, run = ctx.cfg.gal, ctx.folder
    folder, entries = run.synthetic_dir(cycle), run.read_manifest(cycle)
    if not run.selection_path(cycle).exists():
        if g.candidates == 1 and g.label_check == "none":
            return len(entries)
        run.write_selection(cycle, choose_generated(ctx, cycle, entries))
    decision = run.read_selection(cycle)
    kept = set(decision["kept"])
    if any(e.file not in kept for e in entries):
        run.write_manifest(cycle, [e for e in entries if e.file in kept])
    for file in decision["rejected"]:
        if (folder / file).exists():
            (run.rejected_dir(cycle) / file).parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / file, run.rejected_dir(cycle) / file)
    return len(kept)


def label_check(ctx: Context, cycle: int, raw: torch.Tensor) -> tuple[list[int] | None, int]:
    """The class the T2I model itself gives each image (Diffusion Classifier; ``raw``: the candidates
    as decoded, uint8), and the UNet calls spent; (None, 0) without ``gal.label_check: diffusion``."""
    from galot_core.t2i.zero_shot import diffusion_classify

    if ctx.cfg.gal.label_check != "diffusion":
        return None, 0
    with ctx.t2i_lock:
        t2i = ctx.t2i
        use_adapter(ctx, cycle)  # the generator judges its images as it made them
        before = t2i.num_denoiser_calls
        gen = torch.Generator(t2i.device).manual_seed(ctx.seed(cycle, 7))
        zero_shot = diffusion_classify(t2i, raw.float() / 255, t2i.encode(ctx.prompts()),
                                       generator=gen).cpu().tolist()
        return zero_shot, t2i.num_denoiser_calls - before


def candidate_scores(ctx: Context, cycle: int, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How much the last classifier has to learn from each candidate (``raw``: as decoded, uint8;
    ``targets``: the prompted classes), higher: keep first; zeros without a choice. ``gal.select_by``:
    σ_GAL of the image, or the cross-entropy of its prompted class (hard positives: images of the
    class the classifier does not yet recognise, whatever it confuses them with)."""
    from galot_core.train import predict

    g, d = ctx.cfg.gal, ctx.dataset
    previous = ctx.load_model(cycle - 1)
    if previous is None or g.candidates <= 1:
        return torch.zeros(len(raw))
    images = torch.cat([synthetic.resize_uint8(x.unsqueeze(0), d.image_size, d.channels) for x in raw])
    logits = predict(previous[0], images, ctx.preprocess, device=ctx.device,
                     batch_size=ctx.cfg.train.eval_batch_size)["logits"]
    if g.select_by == "intended_loss":
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    if g.strategy == "RandomSampling":
        return torch.rand(len(raw), generator=torch.Generator().manual_seed(ctx.seed(cycle, 8)))
    return acquisition.objective(g.strategy, logits)


def choose_generated(ctx: Context, cycle: int, entries: list[synthetic.ManifestEntry]) -> dict[str, Any]:
    """The selection decision: per class, the confirmed candidates with the highest score, B_GAL/class."""
    targets = torch.tensor([e.label for e in entries], dtype=torch.int64)
    folder = ctx.folder.synthetic_dir(cycle)
    raw = torch.stack([synthetic.decode_png(folder / e.file) for e in entries])  # decoded once, two uses
    zero_shot, calls = label_check(ctx, cycle, raw)
    confirmed = torch.ones(len(entries), dtype=torch.bool) if zero_shot is None else torch.tensor(zero_shot) == targets
    score = candidate_scores(ctx, cycle, raw, targets)
    kept: list[str] = []
    for c, n in enumerate(ctx.per_class_budget(cycle)):
        rows = [k for k in range(len(entries)) if targets[k] == c and confirmed[k]]
        rows.sort(key=lambda k: (-float(score[k]), entries[k].file))
        kept += [entries[k].file for k in rows[:n]]
    kept_set = set(kept)
    return {"kept": sorted(kept), "rejected": [e.file for e in entries if e.file not in kept_set],
            "candidates": len(entries), "label_check": ctx.cfg.gal.label_check, "confirmed": int(confirmed.sum()),
            "unet_calls": calls, "zero_shot_class": zero_shot, "score": [round(float(v), 6) for v in score],
            "files": [e.file for e in entries]}
