"""How good is the embedded text-to-image model? Pseudo-label accuracy, speed, diversity, and ε.

    python benchmarks/t2i_quality.py            # writes benchmarks/results/t2i_quality.json,
                                                # docs/t2i.md and docs/img/galot-mini-grid.png

1. Judged pseudo-label accuracy at ε = 0 on 50 images per class, prompted with the
   paper's template "a realistic photo of a {label}", which galot-mini never saw in
   pretraining. The judge is the fully-supervised classifier (whole real pool).
2. Generation throughput (images/s, classifier-free guidance, default steps and batch).
3. A 10 × 8 sample grid.
4. Judged accuracy as ε grows (paper Fig. 4): (a) random directions s* + ε·u/‖u‖;
   (b) TextOpt's directions — sign-PGD maximising the margin acquisition of a weak
   classifier (trained on 20 real labels, like an early AL cycle), n = 10, k = 6.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition, textopt  # noqa: E402
from galot_core.config import TrainConfig  # noqa: E402
from galot_core.data.mnist5k import load_mnist5k  # noqa: E402
from galot_core.judge import judged_accuracy, load_or_train_judge, preprocess_for  # noqa: E402
from galot_core.models import build_model  # noqa: E402
from galot_core.synthetic import save_grid  # noqa: E402
from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.train import fit  # noqa: E402
from galot_core.transforms import to_uint8  # noqa: E402

TEMPLATE = "a realistic photo of a {label}"


def generate_per_class(t2i, s, per_class, seed, steps, guidance, batch=100):
    """``per_class`` images for each row of ``s`` (C, L, D); returns images and prompted labels."""
    labels = torch.arange(len(s)).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            out.append(t2i.generate(s[labels[i:i + batch]], num_inference_steps=steps, guidance_scale=guidance,
                                    generator=g))
    return torch.cat(out), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models/galot-mini"))
    ap.add_argument("--judge", default=str(ROOT / "models/judge-mnist5k.safetensors"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--sweep-per-class", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/t2i_quality.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    d = load_mnist5k()
    judge = load_or_train_judge(d, args.judge)
    judge_test = judged_accuracy(judge, d.test.images, d.test.labels, d)
    t2i = DiffusersT2I.from_pretrained(args.model, device="cpu", dtype="fp32")
    prompts = [TEMPLATE.format(label=n) for n in d.class_names]
    s_star = t2i.encode(prompts)
    result: dict = {"template": TEMPLATE, "steps": args.steps, "guidance": args.guidance,
                    "judge_test_accuracy": judge_test, "s_star_norm_per_class": s_star.flatten(1).norm(dim=1).tolist()}

    # 1 + 2: accuracy at ε = 0 and throughput.
    t = time.perf_counter()
    images, labels = generate_per_class(t2i, s_star, args.per_class, 0, args.steps, args.guidance)
    seconds = time.perf_counter() - t
    result["eps0"] = {"images": len(images), "judged_accuracy": judged_accuracy(judge, images, labels, d),
                      "images_per_second": len(images) / seconds}
    print(json.dumps(result["eps0"]), flush=True)

    # 3: grid, 8 samples per class (rows = classes).
    grid_imgs, _ = generate_per_class(t2i, s_star, 8, 1, args.steps, args.guidance)
    save_grid(to_uint8(grid_imgs), nrow=8, path=ROOT / "docs/img/galot-mini-grid.png")

    # 4: ε sweep.
    norm = float(s_star.flatten(1).norm(dim=1).mean())
    rel = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    g = torch.Generator().manual_seed(7)
    u = torch.randn(s_star.shape, generator=g)
    u = u / u.flatten(1).norm(dim=1).view(-1, 1, 1)
    torch.manual_seed(0)
    weak = build_model("small_cnn", 1, 10)
    idx = torch.cat([torch.nonzero(d.pool.labels == c).flatten()[:2] for c in range(10)])
    fit(weak, d.pool.images[idx], d.pool.labels[idx], preprocess_for(d), TrainConfig(device="cpu"), natural=False, seed=0)
    weak.eval().requires_grad_(False)
    pre = preprocess_for(d)

    def objective(images):
        return acquisition.objective("MarginSampling", weak(pre(images)))

    sweep = []
    for r in rel:
        eps = r * norm
        s_rand = s_star + eps * u
        step_seed = iter(range(100))

        def grad_fn(s):
            gen = torch.Generator().manual_seed(1000 + next(step_seed))
            return t2i.acquisition_grad(s, objective, k=6, generator=gen, num_inference_steps=args.steps,
                                        guidance_scale=args.guidance)[0]

        s_opt = textopt.optimize(s_star, grad_fn, eps, eps / 5, 10) if eps > 0 else s_star
        row = {"epsilon_relative": r, "epsilon": eps}
        for name, s in (("random", s_rand), ("textopt", s_opt)):
            imgs, labs = generate_per_class(t2i, s, args.sweep_per_class, 2, args.steps, args.guidance)
            row[f"{name}_judged_accuracy"] = judged_accuracy(judge, imgs, labs, d)
            row[f"{name}_weak_margin"] = float(objective(imgs).mean())
        sweep.append(row)
        print(json.dumps(row), flush=True)
    result["sweep"] = sweep
    result["pretrain"] = json.loads((Path(args.model) / "galot_pretrain.json").read_text())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    write_report(result, ROOT / "docs/t2i.md")


def write_report(r: dict, path: Path) -> None:
    p = r["pretrain"]
    lines = [
        "# galot-mini: the embedded text-to-image model",
        "",
        "Generated by `python benchmarks/t2i_quality.py` from `benchmarks/results/t2i_quality.json`; "
        "do not edit by hand.",
        "",
        f"Pretraining: {p['train_images']} images of the `mnist5k` T2I split (disjoint from pool and test), "
        f"{p['total_seconds'] / 60:.1f} min on this machine (VAE {p['vae_seconds'] / 60:.1f}, UNet "
        f"{p['unet_seconds'] / 60:.1f}).",
        "",
        f"Judge (fully-supervised small CNN on the whole pool): {r['judge_test_accuracy']:.1%} on the real test set.",
        "",
        f"At ε = 0, prompt template \"{r['template']}\" (never seen in pretraining), {r['steps']} DDIM steps, "
        f"guidance {r['guidance']}: **{r['eps0']['judged_accuracy']:.1%}** of {r['eps0']['images']} images judged "
        f"as their prompted class; **{r['eps0']['images_per_second']:.1f} images/s** on this machine.",
        "",
        "![samples: one row per class, zero to nine](img/galot-mini-grid.png)",
        "",
        "## Pseudo-label accuracy vs ε (paper Fig. 4)",
        "",
        "ε is the L2 radius over the whole embedding (16 tokens × 384); ‖s*‖ ≈ "
        f"{sum(r['s_star_norm_per_class']) / len(r['s_star_norm_per_class']):.1f}. Random: s* + ε·u/‖u‖. "
        "TextOpt: 10 sign-PGD steps (α = ε/5, k = 6) maximising the margin acquisition of a classifier "
        "trained on 20 real labels. `weak margin` is that acquisition on the generated images (higher = more "
        "uncertain).",
        "",
        "| ε / ‖s*‖ | ε | random: judged acc | TextOpt: judged acc | random: weak margin | TextOpt: weak margin |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["sweep"]:
        lines.append(f"| {row['epsilon_relative']:.2f} | {row['epsilon']:.2f} | {row['random_judged_accuracy']:.1%} | "
                     f"{row['textopt_judged_accuracy']:.1%} | {row['random_weak_margin']:.3f} | "
                     f"{row['textopt_weak_margin']:.3f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
