"""Does TextOpt's PGD use its steps? The paper's step size against steps scaled to the ball (issue 15).

    python -m benchmarks.probes.pgd_steps --world fashion     # benchmarks/results/pgd_steps_fashion.json

The paper's sign step moves each of the D = 16 × 384 coordinates by α = ε/5: an L2 step of
α·√D ≈ 16·ε, so every step leaves the ball and the projection puts it back on the sphere; the
result is ε·sgn(g_last)/√D, one noisy gradient estimate, and 9 of 10 steps' UNet calls are
wasted. ``gal.step_scale: ball`` divides the sign step by √D (L2 length α).

Protocol (fixed before any result): the classifier of cycle 1 (|L| = 20) of gal_probe.py's
GALOT-basic source run of the world; per class, s* of "a realistic photo of a {label}";
ε = 0.2·‖s*‖ (the default's last-cycle radius); TextOpt with n = 10 steps, k = 6 images per
estimate (the last-step estimator, the default), sign steps with ``paper`` and ``ball`` scale,
and the ``l2`` step for reference; three seeds each. Measured per class:

* cos(s′ − s*, ḡ): the final displacement against a 96-sample estimate ḡ of the expected
  gradient at s* (16 estimates of k = 6 with independent noise, averaged);
* the margin objective σ_GAL (higher = less sure) of 60 images generated from s′ minus that of
  the same 60 noises from s*, and that change per 1,000 TextOpt UNet calls.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition, textopt
from galot_core.experiment import Experiment

from benchmarks.probes import gal_probe

RULES = {"paper": ("sign", 1.0), "ball": ("sign", None), "l2": ("l2", 1.0)}  # None: 1/√D


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=list(gal_probe.WORLDS), default="fashion")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    os.chdir(gal_probe.WORLDS[args.world])
    source: Experiment = gal_probe.source_run(args.world, [40])
    t2i, d, cfg = source.t2i, source.dataset, source.cfg
    model = source.load_model(1)[0].eval().requires_grad_(False)
    pre = source.preprocess
    steps, guidance = cfg.t2i.steps, cfg.t2i.guidance_scale

    def objective(images: torch.Tensor) -> torch.Tensor:
        return acquisition.objective("MarginSampling", model(pre(images)))

    def grad(s: torch.Tensor, seed: int, k: int = 6) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return t2i.acquisition_grad(s, objective, k=k, generator=gen, num_inference_steps=steps,
                                    guidance_scale=guidance)[0]

    def sigma(s: torch.Tensor, n: int = 60) -> float:
        noise = t2i.initial_noise(n, torch.Generator().manual_seed(999))
        with torch.no_grad():
            images = t2i.generate(s.expand(n, -1, -1), num_inference_steps=steps, guidance_scale=guidance,
                                  latents=noise)
            return float(objective(images).mean())

    s_all = t2i.encode([cfg.gal.template.format(label=n) for n in d.class_names]).float()
    rows, t0 = [], time.perf_counter()
    for c in range(d.num_classes):
        s_star = s_all[c:c + 1]
        eps = 0.2 * float(s_star.norm())
        expected = torch.stack([grad(s_star, 10_000 + j) for j in range(16)]).mean(0)
        base = sigma(s_star)
        for name, (rule, scale) in RULES.items():
            for seed in range(args.seeds):
                seeds = iter(range(100 * seed, 100 * seed + 100))
                calls = t2i.num_denoiser_calls
                alpha = 0.2 * eps * (scale if scale is not None else 1 / s_star.numel() ** 0.5)
                s = textopt.optimize(s_star, lambda x: grad(x, next(seeds)), eps, alpha, 10, step=rule)
                calls = t2i.num_denoiser_calls - calls
                change = sigma(s) - base
                rows.append({"class": c, "rule": name, "seed": seed, "distance_over_eps": float((s - s_star).norm()) / eps,
                             "cosine": float(torch.nn.functional.cosine_similarity((s - s_star).flatten(),
                                                                                   expected.flatten(), dim=0)),
                             "sigma_change": change, "unet_calls": calls,
                             "sigma_change_per_1000_calls": 1000 * change / calls})
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / f"pgd_steps_{args.world}.json"
    summary = {}
    for name in RULES:
        sel = [r for r in rows if r["rule"] == name]
        summary[name] = {k: sum(r[k] for r in sel) / len(sel) for k in
                         ("cosine", "distance_over_eps", "sigma_change", "sigma_change_per_1000_calls")}
    out.write_text(json.dumps({"world": args.world, "summary": summary, "rows": rows,
                               "wall_seconds": time.perf_counter() - t0}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
