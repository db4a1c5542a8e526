"""Step 3 (Algorithm 1, line 9): B_GAL images from the optimised embeddings, pseudo-labelled by class.

Generation is split into shards, fixed lists of (class, index) images, so it can fan out
over processes or machines. Every image has its own seed, so a shard's images do not depend
on which worker makes them or what else it makes; each shard keeps its progress in a part
file and :func:`merge_generated` folds the parts into the cycle's manifest, then keeps
B_GAL of the candidates (:mod:`galot_core.steps.choose`, ``gal.candidates``/``gal.label_check``).
"""

from __future__ import annotations

import hashlib

import torch
from tqdm.auto import tqdm

from galot_core import synthetic
from galot_core.context import Context
from galot_core.faults import failpoint, simulated_oom
from galot_core.io import atomic_write_bytes
from galot_core.steps.adapt import use_adapter
from galot_core.steps.choose import select_generated
from galot_core.transforms import to_uint8

Item = tuple[int, int]  # (class, index within the class)


def generation_items(ctx: Context, cycle: int) -> list[Item]:
    """Every image the cycle generates as (class, index): B_GAL, or m·B_GAL candidates (gal.candidates)."""
    m = ctx.cfg.gal.candidates
    return [(c, i) for c, n in enumerate(ctx.per_class_budget(cycle)) for i in range(m * n)]


def generation_shards(ctx: Context, cycle: int) -> list[int]:
    """Shard ids of the cycle; shard k holds items ``[k·S, (k+1)·S)`` with S = runner.shard_size."""
    size = ctx.cfg.runner.shard_size
    return list(range((len(generation_items(ctx, cycle)) + size - 1) // size))


def conditioning(ctx: Context, cycle: int, items: list[Item], s: torch.Tensor) -> torch.Tensor:
    """Each image's text embedding: its class's (optimised) row of ``s``, plus, with
    ``gal.diversity > 0``, its own random offset of length diversity·‖s_c‖ (seeded per image).

    One embedding per class makes a class's images alike; random offsets keep the judged
    class up to 1.6·‖s*‖ on the embedded worlds (docs/results.md), so they buy variety for free.
    Exact zeros of ``s_c`` get no offset: they are padding (Z-Image's rows after a prompt's end),
    which must stay padding.
    """
    cond = s[[c for c, _ in items]].clone()
    r = ctx.cfg.gal.diversity
    if r > 0:
        for k, (c, i) in enumerate(items):
            u = torch.randn(s[c].shape, generator=torch.Generator().manual_seed(ctx.seed(cycle, 6, c, i)))
            u = u * (s[c] != 0)
            cond[k] += r * s[c].norm() * u / u.norm()
    return cond


def anchors(ctx: Context, cycle: int) -> dict[Item, int]:
    """Image-to-image anchors (``gal.anchor_strength > 0``): item (c, i) → a labelled pool index of class c.

    The real images σ_AL picked and the oracle labelled, cycled through in pool order: the
    generated images then vary the informative real ones instead of drawing the prompt's
    most typical picture (ActGen, ECCV 2024; DA-Fusion, ICLR 2024). A class without a
    labelled image yet is generated from noise.
    """
    if ctx.cfg.gal.anchor_strength <= 0 or ctx.cfg.experiment.mode == "gal":
        return {}
    state = ctx.pool_state()
    by_class: dict[int, list[int]] = {}
    for idx, label in sorted(zip(state.labelled, state.labels)):
        by_class.setdefault(label, []).append(idx)
    return {(c, i): by_class[c][i % len(by_class[c])] for c, i in generation_items(ctx, cycle) if c in by_class}


def images_for(ctx: Context, cond: torch.Tensor, noise: torch.Tensor, anchor: list[int | None]) -> torch.Tensor:
    """Text-to-image for items without an anchor, image-to-image from their anchor for the others."""
    tc, out = ctx.cfg.t2i, None
    groups = [[k for k, a in enumerate(anchor) if a is None], [k for k, a in enumerate(anchor) if a is not None]]
    with torch.no_grad():
        for rows, anchored in zip(groups, (False, True)):
            if not rows:
                continue
            image = (ctx.dataset.pool.images[[anchor[k] for k in rows]].float() / 255) if anchored else None
            images = ctx.t2i.generate(cond[rows], num_inference_steps=tc.steps, guidance_scale=tc.guidance_scale,
                                      latents=noise[rows], image=image, strength=ctx.cfg.gal.anchor_strength)
            if out is None:
                out = images.new_empty((len(anchor), *images.shape[1:]))
            out[rows] = images
    return out


def _file_names(ctx: Context, items: list[Item]) -> dict[Item, str]:
    classes = ctx.dataset.class_names
    return {(c, i): f"{synthetic.safe_dirname(c, classes[c])}/{i:06d}.png" for c, i in items}


def _entries(ctx: Context, cycle: int, batch: list[Item], seeds: list[int], pngs: list[bytes],
             cond: torch.Tensor, eps: torch.Tensor, anchor: dict[Item, int], adapter: str | None) -> list[dict]:
    """The manifest lines of a batch of images just written."""
    t2i, tc, names, prompts = ctx.t2i, ctx.cfg.t2i, _file_names(ctx, batch), ctx.prompts()
    sched = f"{type(t2i.scheduler).__name__}({t2i.scheduler.config.get('timestep_spacing', '')})"
    source = {item: f"pool[{a}] strength {ctx.cfg.gal.anchor_strength}" for item, a in anchor.items()}
    return [synthetic.entry_dict(synthetic.ManifestEntry(
        file=names[c, i], sha256=hashlib.sha256(data).hexdigest(), label=c, class_name=ctx.dataset.class_names[c],
        prompt=prompts[c], cycle=cycle, epsilon=float(eps[c]), embedding_sha256=synthetic.tensor_sha256(e), seed=sd,
        model_id=t2i.model_id, revision=t2i.revision, variant=t2i.variant, scheduler=sched, steps=tc.steps,
        guidance_scale=tc.guidance_scale, source=source.get((c, i)), adapter=adapter))
        for (c, i), sd, data, e in zip(batch, seeds, pngs, cond)]


def generate_shard(ctx: Context, cycle: int, shard: int) -> int:
    """Line 9 for one shard: its images from the optimised embeddings, to disk; returns how many it made."""
    run, size = ctx.folder, ctx.cfg.runner.shard_size
    folder = run.synthetic_dir(cycle)
    items = generation_items(ctx, cycle)[shard * size:(shard + 1) * size]
    name = _file_names(ctx, items)
    for c, i in items:  # a write that a crash cut short; never listed, so never used
        for tmp in (folder / name[c, i]).parent.glob(f".{i:06d}.png.*.tmp"):
            tmp.unlink()
    if run.selection_path(cycle).exists():
        return 0  # candidates were generated and selected: the rejected ones are not to be made again
    part = run.read_part(cycle, shard)
    done = {e.file for e in run.read_manifest(cycle)} | {e["file"] for e in part["entries"]}
    todo = [item for item in items if name[item] not in done]
    if not todo:
        return 0
    with ctx.t2i_lock:
        t2i = ctx.t2i
    emb, anchor = run.read_embeddings(cycle), anchors(ctx, cycle)
    size = ctx.batch_size("generation")
    queue = [todo[i:i + size] for i in range(0, len(todo), size)]
    bar = tqdm(total=len(todo), desc=f"generate cycle {cycle}", unit="img", leave=False)
    while queue:
        batch = queue.pop(0)
        seeds = [ctx.seed(cycle, 5, c, i) for c, i in batch]
        cond = conditioning(ctx, cycle, batch, emb["s"])
        with ctx.t2i_lock:  # one model per process: concurrent tasks take turns on it
            adapter = use_adapter(ctx, cycle)
            before = t2i.num_denoiser_calls
            noise = torch.cat([t2i.initial_noise(1, torch.Generator(t2i.device).manual_seed(sd)) for sd in seeds])
            try:
                simulated_oom(len(batch))
                images = images_for(ctx, cond, noise, [anchor.get(item) for item in batch])
            except torch.cuda.OutOfMemoryError:
                # Per-image seeds make the images independent of the batch they are made in.
                size = ctx.halve_batch("generation", len(batch))
                rest = batch + [item for b in queue for item in b]
                queue = [rest[i:i + size] for i in range(0, len(rest), size)]
                continue
            calls = t2i.num_denoiser_calls - before
        pngs = [synthetic.png_bytes(img) for img in to_uint8(images.cpu())]
        for k, (item, data) in enumerate(zip(batch, pngs)):
            atomic_write_bytes(folder / name[item], data)
            if k == len(batch) // 2:
                failpoint("generate.mid_batch")  # some PNGs on disk, the part file not yet updated
        part["entries"] += _entries(ctx, cycle, batch, seeds, pngs, cond, emb["epsilon"],
                                    {item: anchor[item] for item in batch if item in anchor}, adapter)
        part["unet_calls"] += calls
        run.write_part(cycle, shard, part)
        bar.update(len(batch))
        failpoint("generate.after_batch")
    bar.close()
    return len(todo)


def merge_generated(ctx: Context, cycle: int) -> int:
    """Fold the shards' part files into manifest.jsonl (sorted by file) and the UNet-call count,
    then keep B_GAL of the candidates; returns the number of images the cycle keeps."""
    run, folder = ctx.folder, ctx.folder.synthetic_dir(cycle)
    for tmp in folder.rglob(".*.tmp") if folder.exists() else []:
        tmp.unlink()  # every shard is done: these are writes a crash cut short
    parts, entries = run.part_paths(cycle), run.read_manifest(cycle)
    if not parts:
        return select_generated(ctx, cycle) if entries else 0
    known = {e.file for e in entries}
    # A part whose images are all in the manifest was merged by a run that died before
    # deleting it: its calls are already counted.
    loaded = [run.read_part(cycle, int(p.stem.split("-")[1])) for p in parts]
    loaded = [part for part in loaded if any(e["file"] not in known for e in part["entries"])]
    entries += [synthetic.ManifestEntry(**e) for part in loaded for e in part["entries"] if e["file"] not in known]
    entries.sort(key=lambda e: e.file)
    run.write_manifest(cycle, entries)
    run.write_generate_calls(cycle, (run.read_generate_calls(cycle) or 0) + sum(p["unet_calls"] for p in loaded))
    for p in parts:  # only now: a crash before this line merges the same parts again
        p.unlink()
    return select_generated(ctx, cycle)
