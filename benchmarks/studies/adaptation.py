"""Does fitting the generator to the labels bought so far (gal.adapt) fix label fidelity, and does it teach?

    python -m benchmarks.studies.adaptation --world mnist5k     # benchmarks/results/adaptation_mnist5k.json
    python -m benchmarks.studies.adaptation --world fashion     # benchmarks/results/adaptation_fashion.json
    python -m benchmarks.studies.adaptation --report            # docs/results.md's section from both JSON files

For each world, labelled sets of |L| = 20, 60 and 200 real images taken from the world's AL run
(runs/default-baselines/MarginSampling/pool.json: the first |L| images σ_AL bought, in the order
it bought them; `galot run --baseline MarginSampling` in the world's folder makes it). For each
set and each arm the generator is fitted exactly as the cycle's step fits it
(galot_core/t2i/finetune.py, the same functions and parameters), then:

- ``judged``: 100 images per class at ε = 0 with the template prompt, the world's t2i.steps and
  guidance; the fully-supervised judge's agreement with the prompted class, per class, and the
  Fréchet distance / diversity in the judge's features (galot_core/quality.py);
- ``cas``: the classifier (small_cnn, the world's train.*) trained on those 1,000 generated
  images only and tested on real images: the validation split (1,000 pool images never
  labelled, what arms are chosen on) and the test set (reported only);
- ``with_real``: what a GALOT cycle trains on: the |L| real images ∪ |L| generated ones
  (B_GAL = |L|, balanced over classes), mean of 3 training seeds, validation and test; beside it
  real only, the AL baseline's classifier at that |L|.

Arms: ``none`` (the pretrained generator, GALOT basic's images), ``embedding`` (per class s*_c,
adapt_steps 300, lr 5e-3, radius 0.3·‖s*_c‖), ``lora`` (rank 8 on to_q/k/v/out, lr 1e-3, batch 32,
300 steps) and ``lora1000`` (1,000 steps). The fit's time, UNet calls and loss curve's ends are
recorded. Each cell is written as it finishes, so the script resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core.data import load_dataset
from galot_core.judge import judged_accuracy, load_or_train_judge, preprocess_for
from galot_core.models import build_model
from galot_core.params_file import load_config
from galot_core.quality import model_sha, realism
from galot_core.synthetic import resize_uint8
from galot_core.t2i import DiffusersT2I
from galot_core.t2i import finetune as ft
from galot_core.train import accuracy, fit
from galot_core.transforms import to_uint8

WORLDS = {"mnist5k": ROOT, "fashion": ROOT / "worlds" / "fashion"}
SIZES = (20, 60, 200)
ARMS = {  # name -> (gal.adapt, its parameters as in params.yaml)
    "none": ("none", {}),
    "embedding": ("embedding", {"steps": 300, "lr": 5e-3, "radius": 0.3, "batch": 32}),
    "lora": ("lora", {"steps": 300, "lr": 1e-3, "rank": 8, "batch": 32}),
    "lora1000": ("lora", {"steps": 1000, "lr": 1e-3, "rank": 8, "batch": 32}),
}
MODULES = ("to_q", "to_k", "to_v", "to_out.0")
PER_CLASS = 100


def result_path(world: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"adaptation_{world}.json"


def labelled_sets(folder: Path) -> dict[int, tuple[list[int], list[int]]]:
    """|L| → (pool indices, labels): the first |L| images the world's MarginSampling AL run bought."""
    pool = json.loads((folder / "runs/default-baselines/MarginSampling/pool.json").read_text())
    order = sorted(range(len(pool["labelled"])), key=lambda k: pool["cycles"][k])  # stable: buying order
    return {n: ([pool["labelled"][k] for k in order[:n]], [pool["labels"][k] for k in order[:n]]) for n in SIZES}


def validation_split(d, exclude: set[int], n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """n pool images no labelled set contains, drawn once (seed 0): the data arms are chosen on."""
    rest = torch.tensor([i for i in range(len(d.pool)) if i not in exclude])
    pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[:n]]
    return d.pool.images[pick], d.pool.labels[pick]


def fitted_generator(t2i, arm: str, x0, y, s_star, seed: int) -> tuple[torch.Tensor, dict]:
    """The arm's generator: the conditioning to generate from (and the LoRA attached to ``t2i``)."""
    kind, p = ARMS[arm]
    if ft.ADAPTER in getattr(t2i.denoiser, "peft_config", {}):
        t2i.denoiser.delete_adapters(ft.ADAPTER)
    if kind == "none":
        return s_star, {}
    before, t = t2i.num_denoiser_calls, time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    if kind == "embedding":
        s, losses = ft.fit_embeddings(t2i, x0, y, s_star, steps=p["steps"], lr=p["lr"], radius=p["radius"],
                                      batch=p["batch"], generator=gen)
    else:
        ft.attach_lora(t2i, p["rank"], MODULES, seed=seed)
        losses = ft.fit_lora(t2i, x0, s_star[y], t2i.uncond, steps=p["steps"], lr=p["lr"], batch=p["batch"],
                             generator=gen)
        s = s_star
    k = min(10, len(losses))
    return s, {"fit_seconds": time.perf_counter() - t, "fit_unet_calls": t2i.num_denoiser_calls - before,
               "loss_start": sum(losses[:k]) / k, "loss_end": sum(losses[-k:]) / k, **p}


def generate(t2i, s, cfg, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(len(s)).repeat_interleave(PER_CLASS)
    g, out = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for i in range(0, len(labels), 100):
            out.append(t2i.generate(s[labels[i:i + 100]], num_inference_steps=cfg.t2i.steps,
                                    guidance_scale=cfg.t2i.guidance_scale, generator=g))
    return torch.cat(out), labels


def trained(cfg, d, x, y, seed: int):
    torch.manual_seed(seed)
    model = build_model(cfg.model.arch, d.channels, d.num_classes, dropout=cfg.model.dropout)
    fit(model, x, y, preprocess_for(d), cfg.train, natural=d.natural, seed=seed)
    return model


def scores(model, d, val) -> dict:
    pre = preprocess_for(d)
    return {"val": accuracy(model, val[0], val[1], pre), "test": accuracy(model, d.test.images, d.test.labels, pre)}


def mean_scores(runs: list[dict]) -> dict:
    return {k: sum(r[k] for r in runs) / len(runs) for k in ("val", "test")}


def cell(t2i, cfg, d, judge, val, s_star, labelled, arm: str) -> dict:
    idx, labels = labelled
    real_x, real_y = d.pool.images[torch.tensor(idx)], torch.tensor(labels)
    x0 = ft.training_latents(t2i, real_x.float() / 255)
    s, info = fitted_generator(t2i, arm, x0, real_y, s_star, seed=len(idx))
    images, prompted = generate(t2i, s, cfg)
    q = realism(judge, d, images, prompted, d.test, seed=0)
    images = resize_uint8(to_uint8(images), d.image_size, d.channels)  # what a PNG on disk gives training
    cas = scores(trained(cfg, d, images, prompted, 0), d, val)
    # B_GAL = |L| generated images beside the |L| real ones, balanced over classes
    per = [len(idx) // d.num_classes + (1 if c < len(idx) % d.num_classes else 0) for c in range(d.num_classes)]
    gi = torch.cat([torch.nonzero(prompted == c).flatten()[:per[c]] for c in range(d.num_classes)])
    xs, ys = torch.cat([real_x, images[gi]]), torch.cat([real_y, prompted[gi]])
    with_real = mean_scores([scores(trained(cfg, d, xs, ys, seed), d, val) for seed in range(3)])
    return {"arm": arm, "labelled": len(idx), **info, "judged": q["judged_accuracy"],
            "judged_per_class": q["judged_per_class"], "fd": q["fd"], "fd_real_floor": q["fd_real_floor"],
            "diversity_ratio": sum(q["diversity_per_class"]) / sum(q["diversity_real_per_class"]),
            "judged_generated_for_training": judged_accuracy(judge, images[gi], prompted[gi], d),
            "cas_val": cas["val"], "cas_test": cas["test"], "with_real_val": with_real["val"],
            "with_real_test": with_real["test"]}


def measure(world: str, arms: list[str], sizes: tuple[int, ...] = SIZES, out: Path | None = None) -> None:
    folder = WORLDS[world]
    os.chdir(folder)  # the world's params.yaml names its paths relative to its folder
    cfg = load_config("params.yaml", [])
    d = load_dataset(cfg.data)
    judge = load_or_train_judge(d, cfg.experiment.judge)
    t2i = DiffusersT2I.from_pretrained(cfg.t2i.model, device="cpu", dtype="fp32")
    s_star = t2i.encode([cfg.gal.template.format(label=n) for n in d.class_names]).float()
    sets = labelled_sets(folder)
    val = validation_split(d, set(sets[max(SIZES)][0]))
    out = out or result_path(world)
    result = json.loads(out.read_text()) if out.exists() else {}
    sha = model_sha(cfg.t2i.model)
    if result.get("model_sha256", sha) != sha:  # cells of two generators must never share a table
        raise SystemExit(f"{out.name} was measured on galot-mini {result['model_sha256'][:12]}, the model on disk "
                         f"is {sha[:12]}: move the file away to measure this model")
    result.update({"world": world, "class_names": d.class_names, "model_sha256": sha,
                   "t2i_steps": cfg.t2i.steps, "guidance": cfg.t2i.guidance_scale, "per_class": PER_CLASS,
                   "threads": torch.get_num_threads()})
    result.setdefault("real_only", {})
    result.setdefault("cells", {})
    for n in sizes:  # the validation split is the same whatever the sizes: it avoids |L| = 200's images
        if str(n) not in result["real_only"]:
            idx, labels = sets[n]
            x, y = d.pool.images[torch.tensor(idx)], torch.tensor(labels)
            result["real_only"][str(n)] = mean_scores([scores(trained(cfg, d, x, y, s), d, val) for s in range(3)])
            out.write_text(json.dumps(result, indent=1))
        for arm in arms:
            key = f"{arm}@{n}"
            if key in result["cells"]:
                continue
            result["cells"][key] = row = cell(t2i, cfg, d, judge, val, s_star, sets[n], arm)
            print(json.dumps({k: v for k, v in row.items() if k != "judged_per_class"}), flush=True)
            out.write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", choices=list(WORLDS), default="mnist5k")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--sizes", nargs="+", type=int, choices=SIZES, default=list(SIZES), help="the |L| to measure")
    ap.add_argument("--out", type=Path, help="the result file (default benchmarks/results/adaptation_WORLD.json); "
                    "another generator's cells go to another file")
    ap.add_argument("--report", action="store_true", help="only regenerate docs/results.md from the JSON files")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not args.report:
        measure(args.world, args.arms, tuple(args.sizes), args.out and args.out.resolve())
    from benchmarks.studies.report import write as study_report  # docs/results.md, whose section "A generator that learns from the labels" this feeds

    study_report.main([])


if __name__ == "__main__":
    main()
