"""Pseudo-label accuracy vs ε per prompt template (paper Sec. 4.4, Fig. 4 / Table 9), offline.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.pseudo_labels   # ~12 min on one CPU core;
                                                          # needs models/galot-mini and the judge

Writes benchmarks/results/pseudo_labels.json; ``benchmarks/studies/report.py`` renders it.

The paper (App. A, Sec. 4.4): "we use random sampling to randomly optimize the text embedding
with different constraints of ε", generate images per class and count how many show their
prompted class. Here, for each template of benchmarks/studies/study.py's TEMPLATES and each relative
radius ε (a fraction of ‖s*‖₂ per class, as galot's ``gal.epsilon_relative``), s* of every
class is moved exactly as galot moves it for σ_GAL = RandomSampling: ``textopt.optimize`` with
``textopt.random_direction_grad``, α = ε/5, n = 10 sign steps. PER_CLASS images per class are
generated with galot-mini (10 DDIM steps, trailing spacing, guidance 3) and judged by the
fully-supervised classifier models/judge-mnist5k.safetensors — the offline stand-in for the
paper's human annotators. Each seed has its own random walk and its own initial noise; within
a seed the noise is shared by every template and ε (common random numbers), so the curves
differ only by the embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import textopt
from galot_core.checkpoint import load_classifier
from galot_core.data.mnist5k import load_mnist5k
from galot_core.judge import preprocess_for
from galot_core.t2i import DiffusersT2I
from galot_core.train import predict
from benchmarks.studies.study import TEMPLATES

OUT = ROOT / "benchmarks" / "results" / "pseudo_labels.json"
MODEL = ROOT / "models" / "galot-mini"
JUDGE = ROOT / "models" / "judge-mnist5k.safetensors"
# Relative radii, doubling. galot's default reaches 0.2 in its last cycle; the larger radii show where the fall starts.
EPSILONS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
SEEDS = (0, 1)
PER_CLASS = 20
STEPS, GUIDANCE, ALPHA_RATIO, PGD_STEPS = 10, 3.0, 0.2, 10


def moved_embeddings(s_star: torch.Tensor, eps_rel: float, seed: int) -> torch.Tensor:
    """s* of every class after galot's σ_GAL = RandomSampling TextOpt at relative radius eps_rel."""
    eps = textopt.resolve_epsilon(eps_rel, s_star, relative=True)
    walk = textopt.random_direction_grad(torch.Generator().manual_seed(seed))
    return textopt.optimize(s_star, walk, eps, ALPHA_RATIO * eps, PGD_STEPS, step="sign")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for path in (MODEL / "model_index.json", JUDGE):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `galot prepare` and `galot pretrain-t2i` first")
    dataset = load_mnist5k()
    classes = dataset.class_names
    judge = load_classifier(JUDGE)[0].eval().requires_grad_(False)
    pre = preprocess_for(dataset)
    t2i = DiffusersT2I.from_pretrained(MODEL, device="cpu", timestep_spacing="trailing")
    labels = torch.arange(len(classes)).repeat_interleave(PER_CLASS)
    start = time.perf_counter()
    rows = []
    for seed in SEEDS:
        noise = t2i.initial_noise(len(labels), torch.Generator().manual_seed(1000 + seed))
        for template in TEMPLATES:
            s_star = t2i.encode([template.format(label=c) for c in classes])
            for eps_rel in EPSILONS:
                s = moved_embeddings(s_star, eps_rel, seed)
                with torch.no_grad():
                    images = torch.cat([t2i.generate(s[labels[i:i + 100]], num_inference_steps=STEPS,
                                                     guidance_scale=GUIDANCE, latents=noise[i:i + 100])
                                        for i in range(0, len(labels), 100)])
                pred = predict(judge, images, pre)["logits"].argmax(1)
                correct = pred == labels
                row = {"template": template, "epsilon_relative": eps_rel, "seed": seed,
                       "distance": [round(float(d), 3) for d in (s - s_star).flatten(1).norm(dim=1)],
                       "accuracy": float(correct.float().mean()),
                       "correct_per_class": {c: int(correct[labels == k].sum()) for k, c in enumerate(classes)}}
                rows.append(row)
                print(f"[{time.perf_counter() - start:6.0f} s] seed {seed} {template!r:45} eps {eps_rel:4.2f}: "
                      f"{row['accuracy']:.3f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "protocol": {"model": "models/galot-mini", "judge": "models/judge-mnist5k.safetensors",
                     "images_per_class": PER_CLASS, "steps": STEPS, "guidance_scale": GUIDANCE,
                     "timestep_spacing": "trailing", "textopt": {"direction": "random_direction_grad",
                                                                 "alpha": "epsilon/5", "n": PGD_STEPS,
                                                                 "step_rule": "sign"},
                     "epsilon": "relative to ||s*||_2 per class", "epsilons": list(EPSILONS),
                     "seeds": list(SEEDS), "classes": classes, "threads": torch.get_num_threads()},
        "results": rows, "wall_seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
