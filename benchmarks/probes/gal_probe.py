"""One-cycle probes of the ways to make the synthetic set (issue 15), chosen on validation data.

    python -m benchmarks.probes.gal_probe --world fashion                 # every arm, |L| = 40, 80, 120
    python -m benchmarks.probes.gal_probe --world mnist5k --arms basic paper select4_dc
    python -m benchmarks.probes.gal_probe --world fashion --report        # print the table only

A full run differs from another by ~0.7 pp per cycle (two seeds cannot see 0.3 pp), so each
variant is first measured on ONE cycle, everything else held fixed. The protocol, fixed before
any result was looked at:

1. The source: a GALOT basic run (ε = 0) of the world's params.yaml, seed 0, run here by the
   real ``Experiment`` up to the largest probed cycle (benchmarks/runs/probe_<world>/source).
2. For each real-label budget |L| = 40, 80, 120 (cycle c = |L|/B_AL): the labelled set of cycle
   c and the classifier of cycle c − 1 (the one TextOpt and selection optimise against) are
   copied into a fresh run folder per arm; the arm's ``gal.*`` overrides make cycle c's
   synthetic set through the same ``Experiment`` steps a run uses (TextOpt, generation,
   selection), B_GAL = |L|.
3. Five classifiers (seeds 0–4, the world's train.*) are trained on L ∪ G and scored on the
   **validation split** (fashion: its 2,000-image ``val`` split; mnist5k, which has none: 500
   pool images, 50 per class, drawn by a fixed seed, minus any the source labelled). The test
   set is never read here.
4. Per arm and budget: validation accuracy (mean ± SEM over the 5 seeds), the judge's agreement
   with the pseudo-labels (judged accuracy), informative-and-correct images (judge agrees, the
   cycle c − 1 classifier does not) and wrong pseudo-labels (judge disagrees), the c − 1
   classifier's error on the generated images and on real validation images, UNet calls and
   seconds. Raw results: benchmarks/results/gal_probe_<world>.json (resumable per arm × budget).
5. Each row names the galot-mini it was made with (the first 12 hex digits of its UNet's
   sha256). Arms are compared only with ``basic`` of the same model; a re-pretrained model is
   not bit-identical, so a new model means a new ``basic`` (rows of the first Fashion galot-mini,
   lost with its machine, carry ``"first"``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, mean_sem, verdict_2sem
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import synthetic
from galot_core.params_file import load_config
from galot_core.data import ImageSet, PoolState
from galot_core.experiment import Experiment
from galot_core.judge import load_or_train_judge, preprocess_for
from galot_core.models import build_model
from galot_core.train import accuracy, fit, predict
from benchmarks.studies.study import unet_sha

WORLDS = {"mnist5k": ROOT, "fashion": ROOT / "worlds" / "fashion"}
BUDGETS = (40, 80, 120)
SEEDS = (0, 1, 2, 3, 4)
# arm -> overrides of the world's params.yaml: bare keys are gal.*, dotted keys name their section
# (the GALOT default there: ε linear to 0.2·‖s*‖).
ARMS: dict[str, dict[str, object]] = {
    "basic": {"epsilon": 0.0},
    "paper": {},
    "ball": {"step_scale": "ball"},
    "ball_constant": {"step_scale": "ball", "epsilon_schedule": "constant"},
    "diverse": {"epsilon": 0.0, "diversity": 0.4},
    "dc": {"epsilon": 0.0, "label_check": "diffusion"},
    "select4": {"epsilon": 0.0, "candidates": 4},
    "select4_dc": {"epsilon": 0.0, "candidates": 4, "label_check": "diffusion"},
    "select4_dc_diverse": {"epsilon": 0.0, "candidates": 4, "label_check": "diffusion", "diversity": 0.4},
    "anchor0.3": {"epsilon": 0.0, "anchor_strength": 0.3},
    "anchor0.5": {"epsilon": 0.0, "anchor_strength": 0.5},
    "anchor0.7": {"epsilon": 0.0, "anchor_strength": 0.7},
    "anchor0.5_diverse": {"epsilon": 0.0, "anchor_strength": 0.5, "diversity": 0.4},
    "anchor0.5_select4_dc": {"epsilon": 0.0, "anchor_strength": 0.5, "candidates": 4, "label_check": "diffusion"},
    # Added after the first arms' results: guidance 5 judged 88% against 83% at 3 (docs/t2i.md).
    "guidance5": {"epsilon": 0.0, "t2i.guidance_scale": 5.0},
    "guidance5_diverse": {"epsilon": 0.0, "t2i.guidance_scale": 5.0, "diversity": 0.4},
    # Added after every arm above: keep the candidates whose own class the classifier gets most wrong
    # (hard positives) instead of the most uncertain ones, with and without the zero-shot label check.
    "select4_hard": {"epsilon": 0.0, "candidates": 4, "select_by": "intended_loss"},
    "select4_hard_dc": {"epsilon": 0.0, "candidates": 4, "select_by": "intended_loss", "label_check": "diffusion"},
    # Issue 28: the generator fitted to the cycle's labelled images (gal.adapt), with ε = 0 ("adapted basic")
    # and with TextOpt around the adapted generator (the paper's claim retested on it). One cycle: the fit
    # starts from the pretrained generator (a full run warm-starts it from the previous cycle's fit).
    "adapt_embedding": {"epsilon": 0.0, "adapt": "embedding", "adapt_lr": 0.005},
    "adapt_embedding_textopt": {"adapt": "embedding", "adapt_lr": 0.005},
    "adapt_lora": {"epsilon": 0.0, "adapt": "lora"},
    "adapt_lora_textopt": {"adapt": "lora"},
}


def config(world: str, name: str, gal: dict[str, object], cycles: int | None = None):
    """The world's params.yaml with the arm's gal.* overrides (its ε schedule over all N cycles)."""
    overrides = [f"experiment.runs_dir={ROOT / 'benchmarks' / 'runs' / f'probe_{world}'}", f"experiment.name={name}",
                 "experiment.seed=0", "tracking.mlflow=false"] + ([f"experiment.cycles={cycles}"] if cycles else [])
    overrides += [f"{k if '.' in k else 'gal.' + k}={v}" for k, v in gal.items()]  # bare keys are gal.*
    return load_config("params.yaml", overrides)


def validation(exp: Experiment, world: str) -> ImageSet:
    d = exp.dataset
    if d.val is not None:
        return d.val
    g = torch.Generator().manual_seed(20261202)
    labelled = set(exp.pool_state().labelled)
    idx = torch.cat([torch.nonzero(d.pool.labels == c).flatten()[torch.randperm(int((d.pool.labels == c).sum()),
                                                                              generator=g)[:50]]
                     for c in range(d.num_classes)])
    idx = torch.tensor(sorted(i for i in idx.tolist() if i not in labelled))
    return d.pool.subset(idx)


def prepare_arm(world: str, arm: str, budget: int, source: Experiment) -> Experiment:
    """A run folder holding the source's labels of cycle c and its classifier of cycle c − 1."""
    cycle = budget // source.cfg.al.budget_per_cycle
    exp = Experiment(config(world, f"{arm}-L{budget}", ARMS[arm]))
    if exp.dir.exists():
        shutil.rmtree(exp.dir)  # half-made by a killed probe: start the arm over
    exp.start()
    state = source.pool_state()
    keep = [k for k, c in enumerate(state.cycles) if c <= cycle]
    PoolState(state.pool_size, [state.labelled[k] for k in keep], [state.labels[k] for k in keep],
              [state.cycles[k] for k in keep]).save(exp.dir / "pool.json")
    exp.cycle_dir(cycle - 1).mkdir(parents=True)
    shutil.copy(source.cycle_dir(cycle - 1) / "model.safetensors", exp.cycle_dir(cycle - 1) / "model.safetensors")
    return exp


def probe(world: str, arm: str, budget: int, source: Experiment, judge) -> dict:
    exp = prepare_arm(world, arm, budget, source)
    cycle, d = budget // exp.cfg.al.budget_per_cycle, exp.dataset
    t = time.perf_counter()
    exp.adapt(cycle)
    exp.optimize_embeddings(cycle)
    exp.generate(cycle)
    seconds = time.perf_counter() - t
    gen_x, gen_y = synthetic.load_synthetic([synthetic.cycle_folder(exp.dir, cycle)], d.image_size, d.channels)
    previous = exp.load_model(cycle - 1)[0]
    pre = preprocess_for(d)
    judged = predict(judge, gen_x, pre)["logits"].argmax(1) == gen_y
    classifier_right = predict(previous, gen_x, pre)["logits"].argmax(1) == gen_y
    val = validation(exp, world)
    real_x, real_y = exp.training_set(cycle)
    accs = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = build_model(exp.cfg.model.arch, d.channels, d.num_classes, exp.cfg.model.dropout)
        fit(model, real_x, real_y, pre, exp.cfg.train, natural=d.natural, seed=seed)
        accs.append(accuracy(model, val.images, val.labels, pre))
    return {"arm": arm, "budget": budget, "overrides": ARMS[arm], "val_accuracy": accs,
            "generated": len(gen_y), "judged_accuracy": float(judged.float().mean()),
            "informative_correct": int((judged & ~classifier_right).sum()), "wrong": int((~judged).sum()),
            "classifier_error_generated": float((~classifier_right).float().mean()),
            "classifier_error_real_val": 1 - accuracy(previous, val.images, val.labels, pre),
            "unet_calls": exp.unet_calls(cycle), "seconds": seconds}


def source_run(world: str, budgets: list[int]) -> Experiment:
    b_al = load_config("params.yaml", []).al.budget_per_cycle
    exp = Experiment(config(world, "source", {"epsilon": 0.0}, cycles=max(budgets) // b_al))
    exp.run()
    return exp


def by_model(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by the model that made them, in the order the models first appear."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("model", "first"), []).append(r)
    return groups


def versus_basic(rows: list[dict]) -> dict[str, tuple[float, float, float, list[int]]]:
    """Per arm: the validation-accuracy difference to basic averaged over the probed budgets, its SEM
    (per-budget SEMs of both arms combined as independent), the mean judged accuracy and the budgets."""
    by = {(r["arm"], r["budget"]): mean_sem(r["val_accuracy"]) for r in rows}
    out = {}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in rows)]:
        budgets = sorted(b for a, b in by if a == arm and ("basic", b) in by)
        if not budgets or arm == "basic":
            continue
        d = sum(by[arm, b][0] - by["basic", b][0] for b in budgets) / len(budgets)
        se = math.sqrt(sum(by[arm, b][1] ** 2 + by["basic", b][1] ** 2 for b in budgets)) / len(budgets)
        judged = sum(r["judged_accuracy"] for r in rows if r["arm"] == arm) / len(budgets)
        out[arm] = (d, se, judged, budgets)
    return out


def summary(rows: list[dict]) -> str:
    """Per arm against basic of the same model, averaged over the probed budgets (``versus_basic``)."""
    lines = ["| arm | budgets | vs basic, mean over budgets (pp) | judged | verdict |", "|---|---:|---:|---:|---|"]
    for arm, (d, se, judged, budgets) in versus_basic(rows).items():
        lines.append(f"| {arm} | {', '.join(map(str, budgets))} | {100 * d:+.1f} ± {100 * se:.1f} | {judged:.1%} | "
                     f"{verdict_2sem(d, se)} |")
    return "\n".join(lines)


def report(rows: list[dict]) -> str:
    base = {r["budget"]: mean_sem(r["val_accuracy"])[0] for r in rows if r["arm"] == "basic"}
    lines = ["| arm | \\|L\\| | val acc | vs basic (pp) | judged | informative & correct | wrong | "
             "clf error gen / real | UNet calls | s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (list(ARMS).index(r["arm"]), r["budget"])):
        m, s = mean_sem(r["val_accuracy"])
        delta = f"{100 * (m - base[r['budget']]):+.1f}" if r["budget"] in base else "–"
        lines.append(f"| {r['arm']} | {r['budget']} | {100 * m:.1f} ± {100 * s:.1f} | {delta} | "
                     f"{r['judged_accuracy']:.1%} | {r['informative_correct']} | {r['wrong']} | "
                     f"{r['classifier_error_generated']:.1%} / {r['classifier_error_real_val']:.1%} | "
                     f"{sum(r['unet_calls'].values())} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=list(WORLDS), default="fashion")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    out = ROOT / "benchmarks" / "results" / f"gal_probe_{args.world}.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    if not args.report:
        os.chdir(WORLDS[args.world])  # the world's params.yaml names its paths relative to its folder
        source = source_run(args.world, args.budgets)
        judge = load_or_train_judge(source.dataset, source.cfg.experiment.judge)
        model = unet_sha(Path(source.cfg.t2i.model))
        for budget in args.budgets:
            for arm in args.arms:
                if any(r["arm"] == arm and r["budget"] == budget and r.get("model", "first") == model for r in rows):
                    continue
                row = {**probe(args.world, arm, budget, source, judge), "model": model}
                rows.append(row)
                out.write_text(json.dumps(rows, indent=1) + "\n")
                m, s = mean_sem(row["val_accuracy"])
                print(f"{arm} |L|={budget}: val {100 * m:.1f} ± {100 * s:.1f}, judged {row['judged_accuracy']:.3f}, "
                      f"{row['seconds']:.0f} s", flush=True)
    for model, group in by_model(rows).items():
        print(f"galot-mini {model}:")
        print(summary(group))
        print(report(group))


if __name__ == "__main__":
    main()
