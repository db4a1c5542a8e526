"""Fewer UNet calls for the same result: each saving measured against the judge (issue: performance).

    python -m benchmarks.perf.unet_savings     # ~6 min on 2 CPU cores; needs models/galot-mini,
                                               # models/judge-mnist5k.safetensors and a finished
                                               # GALOT run (`make run` leaves runs/default)

Writes benchmarks/results/unet_savings.json; ``benchmarks/perf/run.py --report-only`` puts it in
docs/performance.md. Two savings, both on galot-mini with the default guidance 3:

1. **All classes' TextOpt samples in one batch** (``runner.textopt_classes_per_task: 0``, the
   default) against one task per class (``1``): one PGD gradient estimate for the 10 classes,
   k = 6. UNet calls are batched forward passes (a classifier-free-guidance pair counts once);
   the gradients must agree, since every class draws the same noise either way.
2. **Fewer denoising steps with a multistep solver** (``t2i.scheduler``, ``t2i.steps``): images
   for every class from the template embedding s* (ε = 0) and from the TextOpt-optimised
   embeddings of the last cycle of a finished GALOT run (ε = 0.2·‖s*‖, the hardest case: TextOpt
   pushes them towards the classifier's decision boundaries), each judged by the
   fully-supervised classifier. A setting saves calls only if its judged pseudo-label accuracy
   stays within the sampling error of the default (DDIM, 10 steps).

    python -m benchmarks.perf.unet_savings --run runs/default   # the run whose last cycle is used
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import load_file

from galot_core import acquisition
from galot_core.checkpoint import load_classifier
from galot_core.data.mnist5k import load_mnist5k
from galot_core.judge import judged_accuracy, preprocess_for
from galot_core.t2i import DiffusersT2I

OUT = ROOT / "benchmarks" / "results" / "unet_savings.json"
MODEL = ROOT / "models" / "galot-mini"
JUDGE = ROOT / "models" / "judge-mnist5k.safetensors"
SETTINGS = [("ddim", 10), ("ddim", 6), ("ddim", 4), ("dpm++", 6), ("dpm++", 4), ("unipc", 6), ("unipc", 4)]
PER_CLASS = 50  # images per class and ε: 500 per setting, so a judged accuracy of ~0.98 has SE ≈ 0.006


def load(scheduler: str) -> DiffusersT2I:
    return DiffusersT2I.from_pretrained(MODEL, device="cpu", timestep_spacing="trailing", scheduler=scheduler)


def textopt_batching(t2i: DiffusersT2I, judge, dataset, k: int = 6, repeats: int = 3) -> dict:
    pre = preprocess_for(dataset)
    emb = t2i.encode([f"a realistic photo of a {n}" for n in dataset.class_names])
    classes = len(emb)

    def objective(images):
        return acquisition.objective("MarginSampling", judge(pre(images)))

    def batched():
        gen = torch.Generator().manual_seed(1)
        return t2i.acquisition_grad(emb, objective, k=k, generator=gen, num_inference_steps=10,
                                    guidance_scale=3.0, batch_size=100)[0]

    def per_class():
        noise = t2i.initial_noise(classes * k, torch.Generator().manual_seed(1))
        noise = noise.view(classes, k, *noise.shape[1:])
        return torch.cat([t2i.acquisition_grad(emb[c:c + 1], objective, k=k, noise=noise[c],
                                               generator=torch.Generator().manual_seed(1), num_inference_steps=10,
                                               guidance_scale=3.0, batch_size=100)[0] for c in range(classes)])

    out = {}
    grads = {}
    for name, fn in (("batched", batched), ("per_class", per_class)):
        fn()  # warm-up
        times, calls0 = [], t2i.num_denoiser_calls
        for _ in range(repeats):
            t = time.perf_counter()
            grads[name] = fn()
            times.append(time.perf_counter() - t)
        out[name] = {"seconds": statistics.median(times), "unet_calls": (t2i.num_denoiser_calls - calls0) // repeats}
    diff = (grads["batched"] - grads["per_class"]).abs().max().item()
    same_sign = (torch.sign(grads["batched"]) == torch.sign(grads["per_class"])).float().mean().item()
    return {"classes": classes, "k": k, **out, "max_abs_grad_difference": diff, "same_sign_fraction": same_sign,
            "seconds_saved": out["per_class"]["seconds"] - out["batched"]["seconds"],
            "calls_saved": out["per_class"]["unet_calls"] - out["batched"]["unet_calls"]}


def last_textopt_embeddings(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """s* and the TextOpt-optimised s of the run's last cycle (the largest ε of its schedule)."""
    cycles = sorted((run / "cycles").glob("cycle_*/embeddings.safetensors"))
    if not cycles:
        raise SystemExit(f"{run}: no cycles/cycle_*/embeddings.safetensors; pass --run a finished GALOT run folder")
    emb = load_file(str(cycles[-1]))
    return emb["s_star"], emb["s"]


def sweep(judge, dataset, run: Path) -> list[dict]:
    rows = []
    s_star, optimised = last_textopt_embeddings(run)
    for scheduler, steps in SETTINGS:
        t2i = load(scheduler)
        row = {"scheduler": scheduler, "steps": steps}
        seconds, calls0 = 0.0, t2i.num_denoiser_calls
        for name, emb in (("eps0", s_star), ("textopt", optimised)):
            labels = torch.arange(len(emb)).repeat_interleave(PER_CLASS)
            noise = t2i.initial_noise(len(labels), torch.Generator().manual_seed(11))
            t = time.perf_counter()
            with torch.no_grad():
                images = torch.cat([t2i.generate(emb[labels[i:i + 100]], num_inference_steps=steps,
                                                 guidance_scale=3.0, latents=noise[i:i + 100])
                                    for i in range(0, len(labels), 100)])
            seconds += time.perf_counter() - t
            acc = judged_accuracy(judge, images, labels, dataset)
            row[f"judged_{name}"] = acc
            row[f"judged_{name}_se"] = math.sqrt(acc * (1 - acc) / len(labels))
        n_images = 2 * PER_CLASS * len(dataset.class_names)
        row["images_per_s"] = n_images / seconds
        row["unet_calls_per_100_images"] = (t2i.num_denoiser_calls - calls0) * 100 / n_images
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "default", help="a finished GALOT run folder")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for path in (MODEL / "model_index.json", JUDGE):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `galot prepare` and `galot pretrain-t2i` first")
    dataset = load_mnist5k()
    judge = load_classifier(JUDGE)[0].eval().requires_grad_(False)
    t = time.perf_counter()
    batching = textopt_batching(load("ddim"), judge, dataset)
    print(json.dumps(batching), flush=True)
    rows = sweep(judge, dataset, args.run)
    s_star, optimised = last_textopt_embeddings(args.run)
    radius = ((optimised - s_star).flatten(1).norm(dim=1) / s_star.flatten(1).norm(dim=1)).max().item()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"textopt_batching": batching, "steps_sweep": rows, "threads": torch.get_num_threads(),
                               "textopt_run": args.run.name, "textopt_relative_radius": radius,
                               "wall_seconds": round(time.perf_counter() - t, 1)}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
