"""Step 2 (beyond the paper, ``gal.adapt``): fit the generator to the real labels bought so far.

Why: the generator's idea of "a realistic photo of a {label}" is fixed when it is pretrained,
and docs/results.md ("Issue 15's verdict") measured that this, not σ_GAL, is what caps GALOT: on Fashion two classes are
drawn wrong most of the time, whatever TextOpt does. galot has the labelled real images in
hand every cycle; this step lets them reach the generator before TextOpt runs:

- ``embedding``: per class with labelled images, s*_c fitted by the denoising loss on them
  (textual inversion of the conditioning TextOpt moves, DA-Fusion), kept within
  ``adapt_radius``·‖s*_c‖ of the template. The fit is the centre of this cycle's ε-balls
  (:func:`~galot_core.steps.embeddings.centre_embeddings`), so σ_GAL still applies on top.
- ``lora``: one peft LoRA on the denoiser's attention for all classes (DataDream), fitted on
  every labelled image with its class prompt; TextOpt and generation then run on the adapted
  denoiser (:func:`use_adapter`), at ``adapt_scale``.

Each cycle refits, warm-started from the previous cycle's fit (labels only grow); a class with
no label yet keeps the template. The fit is one file of the cycle folder, written atomically
with the hash of its inputs, so a rerun reuses it and a file fitted on other inputs is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from galot_core.context import Context
from galot_core.errors import GalotError
from galot_core.faults import failpoint
from galot_core.t2i import finetune


def _fit_parameters(ctx: Context) -> dict[str, Any]:
    g = ctx.cfg.gal
    common = {"adapt": g.adapt, "steps": g.adapt_steps, "lr": g.adapt_lr, "batch": g.adapt_batch}
    if g.adapt == "lora":
        return {**common, "rank": g.adapt_rank, "modules": list(g.adapt_modules)}
    return {**common, "radius": g.adapt_radius}


def inputs_sha256(ctx: Context, cycle: int, labelled: list[int], labels: list[int]) -> str:
    """What the cycle's fit depends on: its parameters, the model, the prompts, the labelled images
    and their labels, the seed, and the previous cycle's fit it starts from."""
    previous = ctx.folder.adapter_path(cycle - 1, ctx.cfg.gal.adapt) if cycle > 1 else None
    record = {"fit": _fit_parameters(ctx), "model": [ctx.cfg.t2i.model, ctx.cfg.t2i.revision, ctx.cfg.t2i.variant],
              "prompts": ctx.prompts(), "labelled": labelled, "labels": labels, "seed": ctx.seed(cycle, 8),
              "previous": hashlib.sha256(previous.read_bytes()).hexdigest() if previous and previous.exists() else ""}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _labelled_latents(ctx: Context, labelled: list[int]) -> torch.Tensor:
    """x0 of every labelled pool image, encoded in batches of t2i.batch_size (caller holds t2i_lock)."""
    t2i, size = ctx.t2i, ctx.batch_size("generation")
    images = ctx.dataset.pool.images[torch.tensor(labelled)]
    return torch.cat([finetune.training_latents(t2i, images[i:i + size].float() / 255)
                      for i in range(0, len(images), size)])


def _fit_embedding(ctx: Context, cycle: int, x0: torch.Tensor, y: torch.Tensor,
                   gen: torch.Generator) -> tuple[dict[str, torch.Tensor], list[float]]:
    g, t2i = ctx.cfg.gal, ctx.t2i
    template = t2i.encode(ctx.prompts()).float()
    previous = ctx.folder.read_adapter(cycle - 1, "embedding") if cycle > 1 else None
    start = previous[0]["centres"] if previous is not None else None
    if start is not None and start.shape != template.shape:
        raise GalotError(f"{ctx.folder.adapter_path(cycle - 1, 'embedding')}: its centres have shape "
                         f"{tuple(start.shape)}, the model's embeddings {tuple(template.shape)}; delete it to fit again")
    centres, losses = finetune.fit_embeddings(t2i, x0, y, template, start=start, steps=g.adapt_steps, lr=g.adapt_lr,
                                              radius=g.adapt_radius, batch=g.adapt_batch, generator=gen)
    return {"template": template.cpu().contiguous(), "centres": centres.cpu().contiguous()}, losses


def _fit_lora(ctx: Context, cycle: int, x0: torch.Tensor, y: torch.Tensor,
              gen: torch.Generator) -> tuple[dict[str, torch.Tensor], list[float]]:
    g, t2i = ctx.cfg.gal, ctx.t2i
    finetune.attach_lora(t2i, g.adapt_rank, g.adapt_modules, seed=ctx.seed(cycle, 8, 1))
    t2i.galot_adapter = None  # what the denoiser holds is being changed
    previous = ctx.folder.read_adapter(cycle - 1, "lora") if cycle > 1 else None
    if previous is not None:
        finetune.load_lora_state(t2i, previous[0], str(ctx.folder.adapter_path(cycle - 1, "lora")))
    finetune.set_lora_scale(t2i, 1.0)  # fitted as it will be at scale 1
    cond = t2i.encode(ctx.prompts())
    losses = finetune.fit_lora(t2i, x0, cond[y], t2i.uncond, steps=g.adapt_steps, lr=g.adapt_lr, batch=g.adapt_batch,
                               generator=gen)
    return finetune.lora_state(t2i), losses


def adapt_generator(ctx: Context, cycle: int) -> dict[str, Any]:
    """Fit the generator to the labelled pool images (``gal.adapt``); returns the fit's record."""
    kind, run = ctx.cfg.gal.adapt, ctx.folder
    if kind == "none":
        return {}
    state = ctx.pool_state()
    labelled, labels = [int(i) for i in state.labelled], [int(c) for c in state.labels]
    digest = inputs_sha256(ctx, cycle, labelled, labels)
    path = run.adapter_path(cycle, kind)
    done = run.read_adapter(cycle, kind)
    if done is not None:
        if done[1]["inputs_sha256"] != digest:
            raise GalotError(f"{path}: fitted on other inputs than this cycle's (labels, parameters or the "
                             "previous cycle's fit changed); delete it to fit again")
        return summary(done[1])
    if not labelled:
        raise GalotError(f"cycle {cycle}: gal.adapt: {kind} has no labelled image to fit; label the cycle's batch first")
    with ctx.t2i_lock:
        t2i = ctx.t2i
        before = t2i.num_denoiser_calls
        x0 = _labelled_latents(ctx, labelled)
        gen = torch.Generator().manual_seed(ctx.seed(cycle, 8))
        fit = _fit_lora if kind == "lora" else _fit_embedding
        tensors, losses = fit(ctx, cycle, x0, torch.tensor(labels), gen)
        failpoint("adapt.before_write")
        record = {"inputs_sha256": digest, "losses": [round(v, 6) for v in losses], "labelled": len(labelled),
                  "classes": sorted(set(labels)), "unet_calls": t2i.num_denoiser_calls - before, **_fit_parameters(ctx)}
        run.write_adapter(cycle, kind, tensors, record)
        if kind == "lora":
            t2i.galot_adapter = (_stamp(path), 1.0)  # the denoiser holds this fit, at scale 1
    return summary(record)


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers a task returns and the metrics keep: first and last loss (mean of 10 steps), calls."""
    losses = record["losses"]
    k = max(1, min(10, len(losses) // 2))
    return {"adapt_loss_start": sum(losses[:k]) / k if losses else None,
            "adapt_loss_end": sum(losses[-k:]) / k if losses else None,
            "labelled": record["labelled"], "unet_calls": record["unet_calls"]}


def _stamp(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(path), st.st_mtime_ns, st.st_size


def use_adapter(ctx: Context, cycle: int) -> str | None:
    """Make ``ctx.t2i`` the cycle's generator (``gal.adapt: lora``: its LoRA at ``adapt_scale``);
    returns the SHA-256 of the fit it uses, or None without one. Call it holding ``ctx.t2i_lock``.

    The model is shared by every cycle a process runs (and by the threads of one cycle), so each
    user of the generator asks for the cycle it works on; loading happens only when it changed.
    """
    kind, run = ctx.cfg.gal.adapt, ctx.folder
    if kind == "none":
        return None
    path = run.adapter_path(cycle, kind)
    if not path.exists():
        raise GalotError(f"cycle {cycle}: the generator is not adapted yet ({path.name} is missing); run the cycle "
                         "again")
    if kind == "lora":
        t2i, want = ctx.t2i, (_stamp(path), ctx.cfg.gal.adapt_scale)
        if getattr(t2i, "galot_adapter", None) != want:
            tensors, _ = run.read_adapter(cycle, kind)  # type: ignore[misc]
            g = ctx.cfg.gal
            if finetune.ADAPTER not in getattr(t2i.denoiser, "peft_config", {}):
                finetune.attach_lora(t2i, g.adapt_rank, g.adapt_modules, seed=0)
            finetune.load_lora_state(t2i, tensors, str(path))
            finetune.set_lora_scale(t2i, g.adapt_scale)
            t2i.galot_adapter = want
    return hashlib.sha256(path.read_bytes()).hexdigest()


def centres(ctx: Context, cycle: int) -> torch.Tensor | None:
    """``gal.adapt: embedding``: the cycle's fitted s*_c per class (None otherwise)."""
    if ctx.cfg.gal.adapt != "embedding":
        return None
    fit = ctx.folder.read_adapter(cycle, "embedding")
    if fit is None:
        raise GalotError(f"cycle {cycle}: the class embeddings are not adapted yet "
                         f"({ctx.folder.adapter_path(cycle, 'embedding').name} is missing); run the cycle again")
    return fit[0]["centres"]
