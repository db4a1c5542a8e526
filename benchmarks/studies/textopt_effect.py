"""What TextOpt does to the images of a finished GALOT run: more informative, less correct?

    OMP_NUM_THREADS=1 python -m benchmarks.studies.textopt_effect            # the study's GALOT runs, ~5 min
    python -m benchmarks.studies.textopt_effect --runs-dir DIR --run galot-s0  # any run folders

Writes benchmarks/results/textopt_effect.json; ``benchmarks/studies/report.py`` renders it.

Why: in the study GALOT and GALOT basic (ε = 0) end level, although TextOpt's whole point is
Eq. 2 — images the current classifier finds more uncertain. This script separates the two
things that could be going on, per cycle c ≥ 2 of a run:

- does the optimisation reach its objective? σ_GAL (the run's own acquisition, e.g. margin
  uncertainty, higher = more uncertain) of the classifier TextOpt optimised against (the one
  trained in cycle c−1) on the images the run generated from s', against images generated
  from the template embedding s* with the *same per-image seeds* (common random numbers, so
  the pair differs only by the embedding);
- for scale, σ_GAL of the same classifier on the real images σ_AL picked in that cycle;
- what it costs: the share of each set the judge (the fully-supervised classifier, the
  offline stand-in for a human, as in benchmarks/studies/pseudo_labels.py) puts in its prompted
  class, and the σ_GAL gain left once the images the judge rejects are dropped.

The s' images are the run's own PNGs (read from its synthetic/ folder, checked against their
manifest hashes); only the s* images are generated here, with the run's T2I settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition, synthetic
from galot_core.checkpoint import load_classifier
from galot_core.config import config_from_dict
from galot_core.experiment import Experiment
from galot_core.t2i import DiffusersT2I
from galot_core.train import predict
from galot_core.transforms import to_uint8

OUT = ROOT / "benchmarks" / "results" / "textopt_effect.json"
RUNS = ROOT / "benchmarks" / "runs" / "study"
# The study's TextOpt runs with σ_GAL = margin: the default GALOT (table1), the ε ablation (table4)
# and the L2-normalised step (step_rule), both seeds.
DEFAULT_RUNS = ("galot-s0", "galot-s1", "eps_0.1-s0", "eps_0.1-s1", "eps_0.4-s0", "eps_0.4-s1", "l2_step-s0",
                "l2_step-s1")


def load_pngs(folder: Path, entries: list[synthetic.ManifestEntry]) -> torch.Tensor:
    """The run's generated images as uint8 (N, C, H, W), each checked against its manifest hash."""
    out = []
    for e in entries:
        data = (folder / e.file).read_bytes()
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise SystemExit(f"{folder / e.file}: does not match its manifest hash; the run folder was changed")
        out.append(synthetic.decode_png(data))
    return torch.stack(out)


def generate(t2i, cfg, s: torch.Tensor, entries: list[synthetic.ManifestEntry]) -> torch.Tensor:
    """Images for ``entries`` from the per-class embeddings ``s``, with the run's per-image seeds."""
    noise = torch.cat([t2i.initial_noise(1, torch.Generator().manual_seed(e.seed)) for e in entries])
    with torch.no_grad():
        images = t2i.generate(s[[e.label for e in entries]], num_inference_steps=cfg.t2i.steps,
                              guidance_scale=cfg.t2i.guidance_scale, latents=noise)
    return to_uint8(images)


def score(images: torch.Tensor, labels: torch.Tensor, model, judge, pre, strategy: str) -> dict:
    """σ_GAL of the classifier TextOpt optimised against, the judge's and the classifier's agreement."""
    logits = predict(model, images, pre)["logits"]
    sigma = acquisition.objective(strategy, logits)  # σ_GAL, higher = more uncertain: what TextOpt ascends
    judged = predict(judge, images, pre)["logits"].argmax(1) == labels
    own = logits.argmax(1) == labels
    return {"sigma": float(sigma.mean()), "judged_accuracy": float(judged.float().mean()),
            "sigma_judged_correct": float(sigma[judged].mean()) if judged.any() else None,
            # the classifier's own agreement with the pseudo-label: what it still had to learn
            "classifier_accuracy": float(own.float().mean()),
            "classifier_errors_judged_correct": int((~own & judged).sum())}


def analyse(run_dir: Path, judge, t2i_cache: dict) -> dict:
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()), source=str(run_dir / "config.json"))
    exp = Experiment(cfg)
    exp.dir = run_dir  # the folder may have moved since the run (its config names a relative runs_dir)
    strategy = cfg.gal.strategy
    if strategy == "RandomSampling":
        raise SystemExit(f"{run_dir}: σ_GAL = RandomSampling has no objective to measure")
    key = (cfg.t2i.model, cfg.t2i.timestep_spacing)
    if key not in t2i_cache:
        t2i_cache[key] = DiffusersT2I.from_pretrained(ROOT / cfg.t2i.model if not Path(cfg.t2i.model).is_absolute()
                                                      else cfg.t2i.model, device="cpu",
                                                      timestep_spacing=cfg.t2i.timestep_spacing)
    t2i = t2i_cache[key]
    pre = exp.preprocess
    s_star = t2i.encode(exp.prompts()).float()
    pool = exp.pool_state()
    cycles = []
    for cycle in range(2, cfg.experiment.cycles + 1):
        folder = synthetic.cycle_folder(run_dir, cycle)
        entries = [e for e in synthetic.read_manifest(folder) if e.cycle == cycle]
        previous = exp.load_model(cycle - 1)  # the classifier TextOpt optimised against
        if not entries or previous is None:
            break
        model = previous[0].eval().requires_grad_(False)
        emb = load_file(str(exp.cycle_dir(cycle) / "embeddings.safetensors"))
        labels = torch.tensor([e.label for e in entries])
        optimised = load_pngs(folder, entries)
        template = torch.cat([generate(t2i, cfg, s_star, entries[i:i + cfg.t2i.batch_size])
                              for i in range(0, len(entries), cfg.t2i.batch_size)])
        # The seeds and settings must be the run's: regenerating a few s' images has to give its PNGs back
        # (up to one grey level: a different batch composition changes the last bits of the arithmetic).
        check = entries[:10]
        diff = (generate(t2i, cfg, emb["s"], check).int() - optimised[:len(check)].int()).abs().max()
        if int(diff) > 1:
            raise SystemExit(f"{run_dir} cycle {cycle}: regenerating from s' does not give the run's images back "
                             f"(up to {int(diff)} grey levels apart); its T2I settings are not the ones here")
        row = {"cycle": cycle, "images": len(entries),
               "epsilon": float(emb["epsilon"].max()),
               "distance": float((emb["s"] - s_star).flatten(1).norm(dim=1).mean())}
        for name, images in (("template", template), ("optimised", optimised)):
            row[name] = score(images, labels, model, judge, pre, strategy)
        # For scale: the real images σ_AL picked from the pool in the same cycle, scored the same way.
        picked = [i for i, c in zip(pool.labelled, pool.cycles) if c == cycle]
        if picked:
            real = exp.dataset.pool.images[torch.tensor(picked)]
            sigma = acquisition.objective(strategy, predict(model, real, pre)["logits"])
            row["real_selected"] = {"images": len(picked), "sigma": float(sigma.mean())}
        cycles.append(row)
        print(f"  cycle {cycle:2d}: σ {row['template']['sigma']:.3f} -> {row['optimised']['sigma']:.3f}, "
              f"judged {row['template']['judged_accuracy']:.3f} -> {row['optimised']['judged_accuracy']:.3f}",
              flush=True)
    return {"run": run_dir.name, "strategy": strategy, "epsilon_last_cycle": cfg.gal.epsilon,
            "step_rule": cfg.gal.step_rule,
            "seed": cfg.experiment.seed, "cycles": cycles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, default=RUNS, help="folder holding the run folders (default: the study's)")
    ap.add_argument("--run", nargs="+", default=list(DEFAULT_RUNS), help="run folder names (missing ones are skipped)")
    ap.add_argument("--judge", type=Path, default=ROOT / "models" / "judge-mnist5k.safetensors")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not args.judge.exists():
        raise SystemExit(f"--judge: {args.judge} is missing; run `galot prepare` first")
    judge = load_classifier(args.judge)[0].eval().requires_grad_(False)
    start = time.perf_counter()
    results, t2i_cache = [], {}
    for name in args.run:
        run_dir = args.runs_dir / name
        if not (run_dir / "summary.json").exists():
            print(f"{name}: not finished in {args.runs_dir}, skipped")
            continue
        print(name, flush=True)
        results.append(analyse(run_dir, judge, t2i_cache))
    if not results:
        raise SystemExit(f"--run: none of {args.run} is a finished run in {args.runs_dir}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"protocol": {
        "pairs": "per image, the run's own PNG from s' and an image generated from s* with the same seed",
        "classifier": "the one trained in cycle c-1 (TextOpt's target in cycle c)",
        "judge": str(args.judge.relative_to(ROOT)) if args.judge.is_relative_to(ROOT) else str(args.judge),
        "threads": torch.get_num_threads()}, "runs": results,
        "wall_seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
