"""How good is each embedded world's text-to-image model? Pseudo-labels, CAS, speed, diversity, ε.

    python -m benchmarks.studies.t2i_quality                       # mnist5k: benchmarks/results/t2i_quality.json
    python -m benchmarks.studies.t2i_quality --world fashion       # benchmarks/results/t2i_quality_fashion.json
    python -m benchmarks.studies.t2i_quality --world fashion --only cas   # recompute one part, keep the rest
    python -m benchmarks.studies.t2i_quality --report              # docs/t2i.md from both JSON files

Each world is a galot project folder (the repository for mnist5k, worlds/fashion/ for the
Fashion world); its params.yaml names the dataset, the galot-mini folder and the judge.

1. ``eps0``: judged pseudo-label accuracy at ε = 0, overall and per class, on 50 images per
   class prompted with the paper's template "a realistic photo of a {label}", which galot-mini
   never saw in pretraining. The judge is the fully-supervised classifier (whole real pool);
   also the generation throughput (images/s, classifier-free guidance).
2. ``grid``: a 10 × 8 sample grid (docs/img/).
3. ``sweep``: judged accuracy as ε grows (paper Fig. 4): (a) random directions s* + ε·u/‖u‖;
   (b) TextOpt's directions — sign-PGD maximising the margin acquisition of a weak classifier
   (trained on 20 real labels, like an early AL cycle), n = 10, k = 6.
5. ``guidance``: judged accuracy, FD and diversity at ε = 0 for guidance scales 1, 3, 5 and 7.5
   (50 images per class, the world's t2i.steps): how much class fidelity classifier-free guidance
   buys, and what it costs in realism and variety.
4. ``cas``: the Classification Accuracy Score (Ravuri & Vinyals, NeurIPS 2019): the study's
   classifier (small_cnn, train.* of the world's params.yaml) trained on N generated images only
   (ε = 0, N/10 per class, the world's t2i.steps and guidance) and tested on the real test set,
   against the same classifier trained on N real pool images (N/10 per class, drawn at random);
   N = 1,000 and 5,000 (mnist5k's pool has 2,000 images: N = 1,000 and 2,000 there).
6. ``realism``: what ``galot t2i-quality`` (the DVC stage t2i_quality) measures: at ε = 0 with the
   world's t2i.steps and guidance, 50 images per class; the Fréchet distance to the real test set
   in the judge's penultimate features and the per-class diversity, each beside its real floor
   (the same statistic for 50 real pool images per class; galot_core/quality.py).

Every result names the model it measured (``model_sha256``, the UNet weights' sha256 prefix);
``--report`` writes one line instead of a world's numbers when the model on disk is another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition, textopt
from galot_core.config import TrainConfig
from galot_core.params_file import load_config
from galot_core.quality import model_sha, realism, stale_model
from galot_core.data import load_dataset
from galot_core.judge import judged_accuracy, load_or_train_judge, preprocess_for
from galot_core.models import build_model
from galot_core.synthetic import resize_uint8, save_grid
from galot_core.t2i import DiffusersT2I
from galot_core.train import accuracy, fit
from galot_core.transforms import to_uint8

TEMPLATE = "a realistic photo of a {label}"
WORLDS = {  # name -> (project folder, results file, grid image)
    "mnist5k": (ROOT, ROOT / "benchmarks/results/t2i_quality.json", "galot-mini-grid.png"),
    "fashion": (ROOT / "worlds" / "fashion", ROOT / "benchmarks/results/t2i_quality_fashion.json",
                "galot-mini-fashion-grid.png"),
}
PARTS = ("eps0", "grid", "sweep", "cas", "guidance", "realism")


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


def eps0(t2i, s_star, judge, d, args) -> dict:
    t = time.perf_counter()
    images, labels = generate_per_class(t2i, s_star, args.per_class, 0, args.steps, args.guidance)
    seconds = time.perf_counter() - t
    per_class = [judged_accuracy(judge, images[labels == c], labels[labels == c], d) for c in range(len(s_star))]
    return {"images": len(images), "judged_accuracy": judged_accuracy(judge, images, labels, d),
            "per_class": per_class, "images_per_second": len(images) / seconds}


def sweep(t2i, s_star, judge, d, args) -> list[dict]:
    norm = float(s_star.flatten(1).norm(dim=1).mean())
    g = torch.Generator().manual_seed(7)
    u = torch.randn(s_star.shape, generator=g)
    u = u / u.flatten(1).norm(dim=1).view(-1, 1, 1)
    torch.manual_seed(0)
    pre = preprocess_for(d)
    weak = build_model("small_cnn", d.channels, d.num_classes)
    idx = torch.cat([torch.nonzero(d.pool.labels == c).flatten()[:2] for c in range(d.num_classes)])
    fit(weak, d.pool.images[idx], d.pool.labels[idx], pre, TrainConfig(device="cpu"), natural=d.natural, seed=0)
    weak.eval().requires_grad_(False)

    def objective(images):
        return acquisition.objective("MarginSampling", weak(pre(images)))

    rows = []
    for r in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6):
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
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cas(t2i, s_star, judge, d, cfg) -> dict:
    """CAS at each N: generated-only vs real-only training of the study's classifier, real test set."""
    pre = preprocess_for(d)
    sizes = [n for n in (1000, 5000) if n <= len(d.pool)] or [len(d.pool)]
    sizes += [len(d.pool)] if len(d.pool) < 5000 else []
    out: dict = {"steps": cfg.t2i.steps, "guidance": cfg.t2i.guidance_scale, "train": cfg.train.model_dump(mode="json"),
                 "rows": []}
    gen_all, gen_labels = generate_per_class(t2i, s_star, max(sizes) // d.num_classes, 3, cfg.t2i.steps,
                                             cfg.t2i.guidance_scale)
    gen_all = resize_uint8(to_uint8(gen_all), d.image_size, d.channels)  # what a PNG on disk gives training
    g = torch.Generator().manual_seed(0)
    real_order = [torch.nonzero(d.pool.labels == c).flatten() for c in range(d.num_classes)]
    real_order = [idx[torch.randperm(len(idx), generator=g)] for idx in real_order]
    for n in sizes:
        per = n // d.num_classes
        gi = torch.cat([torch.nonzero(gen_labels == c).flatten()[:per] for c in range(d.num_classes)])
        ri = torch.cat([idx[:per] for idx in real_order])
        row = {"n": n}
        for name, (x, y) in (("generated", (gen_all[gi], gen_labels[gi])), ("real", (d.pool.images[ri], d.pool.labels[ri]))):
            torch.manual_seed(0)
            model = build_model(cfg.model.arch, d.channels, d.num_classes, dropout=cfg.model.dropout)
            t = time.perf_counter()
            fit(model, x, y, pre, cfg.train, natural=d.natural, seed=0)
            row[name] = accuracy(model, d.test.images, d.test.labels, pre)
            row[f"{name}_judged"] = judged_accuracy(judge, x, y, d)
            row[f"{name}_seconds"] = time.perf_counter() - t
        row["cas_ratio"] = row["generated"] / row["real"]
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    return out


def guidance_sweep(t2i, s_star, judge, d, cfg) -> list[dict]:
    rows = []
    for w in (1.0, 3.0, 5.0, 7.5):
        images, labels = generate_per_class(t2i, s_star, 50, 4, cfg.t2i.steps, w)
        q = realism(judge, d, images, labels, d.test, seed=0)
        rows.append({"guidance": w, "steps": cfg.t2i.steps, "judged_accuracy": q["judged_accuracy"],
                     "per_class": q["judged_per_class"], "fd": q["fd"], "fd_real_floor": q["fd_real_floor"],
                     "diversity_ratio": sum(q["diversity_per_class"]) / sum(q["diversity_real_per_class"])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", choices=list(WORLDS), default="mnist5k")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to (re)compute")
    ap.add_argument("--report", action="store_true", help="only write docs/t2i.md from the JSON files")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of eps0, grid and sweep")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--sweep-per-class", type=int, default=20)
    args = ap.parse_args()
    if not args.report:
        measure(args)
    write_report({w: json.loads(f.read_text()) for w, (_, f, _) in WORLDS.items() if f.exists()}, ROOT / "docs/t2i.md")


def measure(args) -> None:
    folder, out, grid = WORLDS[args.world]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.chdir(folder)  # the world's params.yaml names its paths relative to its folder
    cfg = load_config("params.yaml", [])
    d = load_dataset(cfg.data)
    judge = load_or_train_judge(d, cfg.experiment.judge)
    t2i = DiffusersT2I.from_pretrained(cfg.t2i.model, device="cpu", dtype="fp32")
    s_star = t2i.encode([TEMPLATE.format(label=n) for n in d.class_names])
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update({"world": args.world, "dataset": d.name, "class_names": d.class_names, "template": TEMPLATE,
                   "steps": args.steps, "guidance": args.guidance,
                   "judge_test_accuracy": judged_accuracy(judge, d.test.images, d.test.labels, d),
                   "s_star_norm_per_class": s_star.flatten(1).norm(dim=1).tolist(),
                   "pretrain": json.loads((Path(cfg.t2i.model) / "galot_pretrain.json").read_text()),
                   "model_sha256": model_sha(cfg.t2i.model)})
    if "eps0" in args.only:
        result["eps0"] = eps0(t2i, s_star, judge, d, args)
        print(json.dumps(result["eps0"]), flush=True)
    if "grid" in args.only:  # 8 samples per class (rows = classes)
        grid_imgs, _ = generate_per_class(t2i, s_star, 8, 1, args.steps, args.guidance)
        save_grid(to_uint8(grid_imgs), nrow=8, path=ROOT / "docs/img" / grid)
    if "sweep" in args.only:
        result["sweep"] = sweep(t2i, s_star, judge, d, args)
    if "cas" in args.only:
        result["cas"] = cas(t2i, s_star, judge, d, cfg)
    if "guidance" in args.only:
        result["guidance_sweep"] = guidance_sweep(t2i, s_star, judge, d, cfg)
    if "realism" in args.only:
        images, labels = generate_per_class(t2i, s_star, 50, 5, cfg.t2i.steps, cfg.t2i.guidance_scale)
        result["realism"] = {"steps": cfg.t2i.steps, "guidance": cfg.t2i.guidance_scale,
                             **realism(judge, d, images, labels, d.test, seed=0)}
        print(json.dumps(result["realism"]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def world_section(world: str, r: dict) -> list[str]:
    p, names = r["pretrain"], r.get("class_names") or r["pretrain"]["class_names"]
    title = f"## {world}: galot-mini-{'fashion' if world == 'fashion' else 'mnist'}"
    model = WORLDS[world][0] / load_config(WORLDS[world][0] / "params.yaml", []).t2i.model \
        if (WORLDS[world][0] / "params.yaml").exists() else None
    if model is not None and model.is_dir():  # a clean clone has no model: the recorded sha says which it was
        stale = stale_model(r.get("model_sha256"), model, WORLDS[world][1].relative_to(ROOT).as_posix())
        if stale:
            print(f"t2i_quality: {stale}", file=sys.stderr)
            return [title, "", stale, ""]
    lines = [
        title, "",
        f"Measured on the galot-mini whose UNet weights' sha256 begins **{r.get('model_sha256') or 'unrecorded'}** "
        "(the results sections of docs/results.md name their model the same way).", "",
        f"Pretraining: {p['train_images']} images of the `{r.get('dataset', 'mnist5k')}` T2I split (disjoint from pool and test), "
        f"{p['total_seconds'] / 60:.1f} min on this machine"
        + (f" with {p['torch_threads']} torch thread(s)" if "torch_threads" in p else "") + f" (VAE {p['vae_seconds'] / 60:.1f}, UNet "
        f"{p['unet_seconds'] / 60:.1f}; {p['config']['vae_steps']} VAE and {p['config']['unet_steps']} UNet steps).",
        "",
        f"Judge (fully-supervised small CNN on the whole pool): {r['judge_test_accuracy']:.1%} on the real test set.",
        "",
    ]
    if "eps0" in r:
        e = r["eps0"]
        lines += [f"At ε = 0, prompt template \"{r['template']}\" (never seen in pretraining), {r['steps']} DDIM "
                  f"steps, guidance {r['guidance']}: **{e['judged_accuracy']:.1%}** of {e['images']} images judged as "
                  f"their prompted class; **{e['images_per_second']:.1f} images/s** on this machine.", ""]
        if "per_class" in e:
            lines += ["| " + " | ".join(names) + " |", "|" + "---:|" * len(names),
                      "| " + " | ".join(f"{a:.0%}" for a in e["per_class"]) + " |", ""]
    lines += [f"![samples: one row per class, {names[0]} to {names[-1]}](img/{WORLDS[world][2]})", ""]
    return lines + cas_lines(r) + guidance_lines(r, names) + realism_lines(r, names) + sweep_lines(r)


def cas_lines(r: dict) -> list[str]:
    """The Classification Accuracy Score table, if measured."""
    lines: list[str] = []
    if "cas" in r:
        c = r["cas"]
        lines += ["Classification Accuracy Score: the study's classifier trained on N images only, tested on the "
                  f"real test set; generated at ε = 0 with {c['steps']} steps, guidance {c['guidance']}; real drawn "
                  "at random from the pool (N/10 per class). Target: generated ≥ 75% of real.", "",
                  "| N | trained on generated | trained on real | CAS ratio | judged, generated |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {row['n']} | {row['generated']:.1%} | {row['real']:.1%} | {row['cas_ratio']:.2f} | "
                  f"{row['generated_judged']:.1%} |" for row in c["rows"]]
        lines.append("")
    return lines


def guidance_lines(r: dict, names: list[str]) -> list[str]:
    """Judged accuracy, FD and diversity by guidance scale, if measured."""
    lines: list[str] = []
    if "guidance_sweep" in r:
        lines += [f"By classifier-free guidance scale, at ε = 0 ({r['guidance_sweep'][0]['steps']} steps, 500 images): "
                  "judged accuracy overall and per class, FD to the real test set and diversity as a fraction of "
                  "real (summed over classes):", "",
                  "| guidance | judged | FD | diversity / real | " + " | ".join(names) + " |",
                  "|---:|---:|---:|---:|" + "---:|" * len(names)]
        lines += [f"| {g['guidance']} | {g['judged_accuracy']:.1%} | {g['fd']:.2f} | {g['diversity_ratio']:.2f} | "
                  + " | ".join(f"{a:.0%}" for a in g["per_class"]) + " |" if "fd" in g else
                  f"| {g['guidance']} | {g['judged_accuracy']:.1%} | – | – | "
                  + " | ".join(f"{a:.0%}" for a in g["per_class"]) + " |" for g in r["guidance_sweep"]]
        lines.append("")
    return lines


def realism_lines(r: dict, names: list[str]) -> list[str]:
    """FD to the real test set and per-class diversity, if measured."""
    lines: list[str] = []
    if "realism" in r:
        q = r["realism"]
        lines += [f"Realism and diversity at ε = 0 ({q['steps']} steps, guidance {q['guidance']}, {q['images']} images; "
                  "`galot t2i-quality`): Fréchet distance (FD) to the real test set in the judge's penultimate "
                  "features (no Inception weights exist offline, so FD is comparable only between models judged "
                  "by this judge), and per class the mean pairwise feature distance (diversity). The real floor: "
                  "the same figure for as many real pool images.", "",
                  f"FD generated **{q['fd']:.2f}**, real floor {q['fd_real_floor']:.2f}.", "",
                  "| | " + " | ".join(names) + " | mean |", "|---|" + "---:|" * (len(names) + 1)]
        for label, key in (("diversity, generated", "diversity_per_class"), ("diversity, real", "diversity_real_per_class")):
            v = q[key]
            lines.append(f"| {label} | " + " | ".join(f"{a:.2f}" for a in v) + f" | {sum(v) / len(v):.2f} |")
        ratio = [g / r_ if r_ else 0.0 for g, r_ in zip(q["diversity_per_class"], q["diversity_real_per_class"])]
        lines.append("| generated / real | " + " | ".join(f"{a:.2f}" for a in ratio) + f" | {sum(ratio) / len(ratio):.2f} |")
        lines.append("")
    return lines


def sweep_lines(r: dict) -> list[str]:
    """Pseudo-label accuracy vs ε, random and TextOpt directions, if measured."""
    lines: list[str] = []
    if "sweep" in r:
        lines += [
            "Pseudo-label accuracy vs ε (paper Fig. 4). ε is the L2 radius over the whole embedding (16 tokens × "
            f"384); ‖s*‖ ≈ {sum(r['s_star_norm_per_class']) / len(r['s_star_norm_per_class']):.1f}. Random: "
            "s* + ε·u/‖u‖. TextOpt: 10 sign-PGD steps (α = ε/5, k = 6) maximising the margin acquisition of a "
            "classifier trained on 20 real labels. `weak margin` is that acquisition on the generated images "
            "(higher = more uncertain).", "",
            "| ε / ‖s*‖ | ε | random: judged acc | TextOpt: judged acc | random: weak margin | TextOpt: weak margin |",
            "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {row['epsilon_relative']:.2f} | {row['epsilon']:.2f} | {row['random_judged_accuracy']:.1%} | "
                  f"{row['textopt_judged_accuracy']:.1%} | {row['random_weak_margin']:.3f} | "
                  f"{row['textopt_weak_margin']:.3f} |" for row in r["sweep"]]
        lines.append("")
    return lines


def write_report(results: dict[str, dict], path: Path) -> None:
    lines = ["# galot-mini: the embedded text-to-image models", "",
             "Generated by `python -m benchmarks.studies.t2i_quality [--world fashion]` from "
             "`benchmarks/results/t2i_quality.json` (mnist5k) and `benchmarks/results/t2i_quality_fashion.json` "
             "(Fashion); do not edit by hand. Each world has its own galot-mini, pretrained by `galot pretrain-t2i` "
             "on a split disjoint from its AL pool and test set.", ""]
    for world, r in results.items():
        lines += world_section(world, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
