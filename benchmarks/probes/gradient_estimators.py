"""How well do the cheap gradient estimators track GALOT's expected acquisition gradient?

    python -m benchmarks.probes.gradient_estimators    # writes benchmarks/results/gradient_estimators.json
                                                # and docs/gradient_estimators.md

GALOT (paper Sec. 3.3, Eq. 5) ascends grad_s E_{x0 ~ p(x0|s)} sigma(x0, f_theta); Proposition 1
replaces backprop through the whole sampler by the last denoising step. ``DiffusersT2I.acquisition_grad``
offers four Monte-Carlo estimators of that gradient ("last_step", "last_m", "tweedie", "full"),
each averaging over ``k`` samples. For the prompt "a realistic photo of a {label}", galot-mini,
DDIM (trailing) and the margin acquisition of a *weak* classifier (20 real labels, as in
benchmarks/studies/t2i_quality.py; a saturated judge gives near-zero gradients), this script measures

1. for every estimator and k: cosine to ``full`` with the same k on the SAME noise (common
   random numbers: how close to exact backprop is the estimator), cosine to a reference
   expected gradient (mean of ``full`` over ``k_ref`` samples on independent noise: how close to
   what Eq. 5 asks for), and cost (seconds and UNet calls per call);
   plus the Monte-Carlo noise floor: cosine between two ``full`` estimates on different noise;
2. variance reduction: cosine to the reference against k (and seconds) for the cheapest good
   estimator, and whether "more samples with a cheaper estimator" beats "full with k = 6" at
   equal seconds.

All numbers in the report are computed here; the conclusions are derived from them by fixed rules.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition
from galot_core.config import TrainConfig
from galot_core.data.mnist5k import load_mnist5k
from galot_core.judge import preprocess_for
from galot_core.models import build_model
from galot_core.t2i import DiffusersT2I
from galot_core.train import fit

TEMPLATE = "a realistic photo of a {label}"
ESTIMATORS = ("last_step", "last_m", "tweedie", "full")
REF_SEED = 10_000_000  # reference noise seeds start here: disjoint from every estimate's seed


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine between two gradients of one embedding (flattened); nan if either is zero."""
    a, b = a.flatten().double(), b.flatten().double()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    if len(xs) < 2:
        return float("nan")
    mu = sum(xs) / len(xs)
    return (sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def estimate_seed(seed_index: int, k: int) -> int:
    """Generator seed of one estimate: the same for every estimator (common random numbers),
    different across seed indices and k."""
    return 1000 * (seed_index + 1) + k


def current_command(recorded: str) -> str:
    """The command a result file records, in today's form (before benchmarks/ was a package, a script path)."""
    return recorded.replace("python benchmarks/gradient_estimators.py", "python -m benchmarks.probes.gradient_estimators")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models/galot-mini"))
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 3, 7], help="class indices (prompts)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM inference steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--m", type=int, default=2, help="window of the last_m estimator")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 6, 24])
    ap.add_argument("--seeds", type=int, default=8,
                    help="noise seeds per (estimator, k <= 6) and for the equal-time run; >= 2 gives the noise floor")
    ap.add_argument("--seeds-large-k", type=int, default=3, help="noise seeds for k > 6 in part 1 (time)")
    ap.add_argument("--k-ref", type=int, default=256, help="samples of full in the reference (split in two halves)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="samples per UNet batch in every call (memory/cache; results do not depend on it)")
    ap.add_argument("--sweep-ks", type=int, nargs="+", default=[96, 384],
                    help="extra k for the chosen cheap estimator (part 2), beyond --ks and its equal-time k")
    ap.add_argument("--sweep-seeds", type=int, default=2, help="noise seeds for part 2's extra k")
    ap.add_argument("--weak-labels-per-class", type=int, default=2)
    ap.add_argument("--weak-min-steps", type=int, default=300, help="SGD steps of the weak classifier")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on this 2-core machine shared with other jobs, 2 threads "
                         "made each call several times slower and erratic (see --thread-check)")
    ap.add_argument("--thread-check", action=argparse.BooleanOptionalAction, default=True,
                    help="time full k = 6 with 1 and 2 torch threads first (recorded in the report)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gradient_estimators.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs/gradient_estimators.md"))
    ap.add_argument("--report-only", action="store_true", help="only rewrite --doc from an existing --out JSON")
    args = ap.parse_args()
    if args.report_only:
        write_report(json.loads(Path(args.out).read_text()), Path(args.doc))
        return
    if args.seeds < 1 or args.seeds_large_k < 1 or args.k_ref < 2 or 6 not in args.ks:
        ap.error("need --seeds >= 1, --seeds-large-k >= 1, --k-ref >= 2 and 6 in --ks (the k = 6 full baseline)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731

    # ---- the model, the prompts, the weak classifier whose acquisition is maximised
    d = load_mnist5k()
    t2i = DiffusersT2I.from_pretrained(args.model, device="cpu", dtype="fp32")
    names = [d.class_names[c] for c in args.classes]
    s = t2i.encode([TEMPLATE.format(label=n) for n in names])  # (C, L, D): all classes in one call
    torch.manual_seed(0)
    weak = build_model("small_cnn", d.channels, d.num_classes)
    idx = torch.cat([torch.nonzero(d.pool.labels == c).flatten()[: args.weak_labels_per_class]
                     for c in range(d.num_classes)])
    pre = preprocess_for(d)
    fit(weak, d.pool.images[idx], d.pool.labels[idx], pre,
        TrainConfig(device="cpu", min_steps=args.weak_min_steps), natural=d.natural, seed=0)
    weak.eval().requires_grad_(False)
    log(f"weak classifier trained on {len(idx)} real labels")

    def objective(images: torch.Tensor) -> torch.Tensor:
        return acquisition.objective("MarginSampling", weak(pre(images)))

    noise = t2i.initial_noise(1, torch.Generator().manual_seed(0))  # sets the schedule (flow matching: its shift)
    windows = {e: t2i._gradient_window(e, args.steps, args.m, None, noise) for e in ESTIMATORS}
    windows_calls = {e: (w[1] if w[1] is not None else args.steps - 1) - w[0] + 1 for e, w in windows.items()}

    def run(estimator: str, k: int, seed: int) -> dict:
        calls0 = t2i.num_unet_calls
        wall0, cpu0 = time.perf_counter(), time.process_time()
        grad, values = t2i.acquisition_grad(
            s, objective, k=k, generator=torch.Generator().manual_seed(seed), num_inference_steps=args.steps,
            guidance_scale=args.guidance, estimator=estimator, m=args.m, batch_size=args.batch_size)
        return {"grad": grad, "objective": values.tolist(), "seconds": time.perf_counter() - wall0,
                "cpu_seconds": time.process_time() - cpu0, "unet_calls": t2i.num_unet_calls - calls0}

    run("full", 1, 0)  # warm-up (allocator, autograd), untimed
    log("warm-up done")
    thread_check = {}
    if args.thread_check:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            thread_check[threads] = [run("full", 6, estimate_seed(0, 6))["seconds"] for _ in range(2)]
            log(f"thread check: full k=6 with {threads} thread(s): {thread_check[threads]}")
        torch.set_num_threads(args.threads)

    # ---- reference: mean of full over k_ref samples, two halves on independent noise
    half = args.k_ref // 2
    halves = [run("full", half, REF_SEED + h) for h in range(2)]
    ref = (halves[0]["grad"] + halves[1]["grad"]) / 2
    split_half = [cosine(halves[0]["grad"][c], halves[1]["grad"][c]) for c in range(len(names))]
    log(f"reference: k_ref={2 * half}, split-half cosine per class {[round(x, 3) for x in split_half]}")
    # How well can anything agree with a reference that is itself a k_ref-sample mean? In high dimension
    # with independent noise, the cosine between two independent estimates of the same mean is their
    # "reliability" |mu|^2 / E|x|^2; Spearman-Brown turns the split-half cosine rho of two k_ref/2 means
    # into the reliability 2 rho / (1 + rho) of the k_ref mean, and a noise-free unbiased gradient would
    # have cosine ~ sqrt(that) to the reference (the ceiling).
    rho = mean(split_half)
    rel_ref = max(0.0, 2 * rho / (1 + rho)) if rho > -1 else float("nan")
    ceiling = math.sqrt(rel_ref)

    # ---- part 1: every estimator x k x seed, same noise across estimators
    ks = sorted(set(args.ks))
    raw: dict[str, dict[int, list[dict]]] = {e: {k: [] for k in ks} for e in ESTIMATORS}
    for seed_index in range(max(args.seeds, args.seeds_large_k)):
        for k in ks:
            if k <= 6 and seed_index >= args.seeds:
                continue
            if k > 6 and seed_index >= args.seeds_large_k:
                continue
            for e in ESTIMATORS:
                raw[e][k].append(run(e, k, estimate_seed(seed_index, k)))
            log(f"seed {seed_index} k={k}: " + ", ".join(
                f"{e} {raw[e][k][-1]['seconds']:.1f}s" for e in ESTIMATORS))

    def summarise(e: str, k: int, runs: list[dict], full_runs: list[dict] | None) -> dict:
        per_class = lambda fn: [[fn(r, c) for c in range(len(names))] for r in runs]  # noqa: E731
        to_ref = per_class(lambda r, c: cosine(r["grad"][c], ref[c]))
        row = {
            "estimator": e, "k": k, "n_estimates": len(runs),
            "cos_to_ref_per_seed_class": to_ref,
            "cos_to_ref": mean([x for xs in to_ref for x in xs]),
            "cos_to_ref_std": std([x for xs in to_ref for x in xs]),
            "cos_to_ref_se": std([x for xs in to_ref for x in xs]) / len([x for xs in to_ref for x in xs]) ** 0.5,
            # min over repeats: other jobs share the CPU, and contention only ever adds time
            "seconds": min(r["seconds"] for r in runs),
            "seconds_all": [r["seconds"] for r in runs],
            "cpu_seconds": min(r["cpu_seconds"] for r in runs),
            "backprop_unet_calls": windows_calls[e],
            "unet_calls": mean([r["unet_calls"] for r in runs]),
            "grad_norm": mean([float(r["grad"][c].norm()) for r in runs for c in range(len(names))]),
            "objective": mean([v for r in runs for v in r["objective"]]),
        }
        # Self-agreement (mean cosine between this estimate on different noise seeds) is its reliability;
        # dividing the cosine to the reference by sqrt(reliability x reference reliability) corrects for
        # both noises ("disattenuation") and estimates cos(E[estimate], E[full]): ~1 for an unbiased
        # estimator, < 1 measures the estimator's bias in direction. Only when both are well above 0.
        if len(runs) >= 2:
            self_pairs = [cosine(runs[a]["grad"][c], runs[b]["grad"][c]) for a in range(len(runs))
                          for b in range(a + 1, len(runs)) for c in range(len(names))]
            row["self_agreement"] = mean(self_pairs)
            ok = row["self_agreement"] > 0.3 and rel_ref > 0.3 and row["cos_to_ref"] > 0
            row["cos_expected_to_expected_full"] = (row["cos_to_ref"] / math.sqrt(row["self_agreement"] * rel_ref)
                                                    if ok else None)
        if full_runs is not None:
            same = [[cosine(r["grad"][c], f["grad"][c]) for c in range(len(names))]
                    for r, f in zip(runs, full_runs)]
            row["cos_to_full_same_noise_per_seed_class"] = same
            row["cos_to_full_same_noise"] = mean([x for xs in same for x in xs])
        return row

    table = [summarise(e, k, raw[e][k], raw["full"][k]) for e in ESTIMATORS for k in ks]
    noise_floor = {}
    for k in ks:
        if len(raw["full"][k]) >= 2:
            pairs = [cosine(raw["full"][k][a]["grad"][c], raw["full"][k][b]["grad"][c])
                     for a in range(len(raw["full"][k])) for b in range(a + 1, len(raw["full"][k]))
                     for c in range(len(names))]
            noise_floor[k] = {"cos_full_vs_full_other_noise": mean(pairs), "pairs": pairs}

    # ---- choose the cheapest good estimator by a fixed rule (from part-1 numbers only)
    k_top = max(ks)
    by = {(r["estimator"], r["k"]): r for r in table}
    full_top = by[("full", k_top)]["cos_to_ref"]
    cheap = [e for e in ESTIMATORS if e != "full"]
    good = [e for e in cheap if by[(e, k_top)]["cos_to_ref"] >= 0.8 * full_top]
    if good:
        chosen = min(good, key=lambda e: by[(e, k_top)]["seconds"])
        rule = (f"cheapest (seconds at k = {k_top}) among the estimators whose cosine to the reference at "
                f"k = {k_top} is at least 0.8 x that of full")
    else:
        chosen = max(cheap, key=lambda e: by[(e, k_top)]["cos_to_ref"])
        rule = (f"no cheap estimator reached 0.8 x full's cosine to the reference at k = {k_top}; "
                "taking the one with the highest cosine")
    log(f"chosen for the k sweep: {chosen} ({rule})")

    # ---- part 2: the chosen estimator at larger k, plus its equal-time k vs full k = 6
    t_full6 = by[("full", 6)]["seconds"]
    # Seconds per call ~ a + b k (fit on part-1 times): the k the chosen estimator can afford in t_full6.
    xs_k = list(ks)
    ys_t = [by[(chosen, k)]["seconds"] for k in ks]
    kbar, tbar = mean(xs_k), mean(ys_t)
    slope = sum((x - kbar) * (y - tbar) for x, y in zip(xs_k, ys_t)) / max(1e-9, sum((x - kbar) ** 2 for x in xs_k))
    intercept = tbar - slope * kbar
    k_equal = max(1, int((t_full6 - intercept) / slope)) if slope > 0 else max(ks)
    sweep_runs = {k: raw[chosen][k] for k in ks}
    # The fit ignores batching steps (a new UNet batch every --batch-size samples): check the predicted k on
    # seed 0 and shrink it until it really takes at most ~full k = 6's time.
    k_equal_tries = []
    for _ in range(4):
        if k_equal not in sweep_runs:
            sweep_runs[k_equal] = [run(chosen, k_equal, estimate_seed(0, k_equal))]
        measured = min(x["seconds"] for x in sweep_runs[k_equal])
        k_equal_tries.append({"k": k_equal, "seconds": measured})
        log(f"equal-time check {chosen} k={k_equal}: {measured:.2f}s (full k=6: {t_full6:.2f}s)")
        if measured <= 1.1 * t_full6 or k_equal == 1:
            break
        k_equal = max(1, min(k_equal - 1, int(k_equal * t_full6 / measured)))
    if len(sweep_runs[k_equal]) < args.seeds:  # the equal-time k on every seed, like full k = 6
        sweep_runs[k_equal] += [run(chosen, k_equal, estimate_seed(i, k_equal))
                                for i in range(len(sweep_runs[k_equal]), args.seeds)]
    for k in sorted(set(args.sweep_ks) - set(sweep_runs)):
        sweep_runs[k] = [run(chosen, k, estimate_seed(i, k)) for i in range(args.sweep_seeds)]
        log(f"sweep {chosen} k={k}: " + ", ".join(f"{x['seconds']:.1f}s" for x in sweep_runs[k]))
    sweep = [summarise(chosen, k, sweep_runs[k], None) for k in sorted(sweep_runs)]
    equal = next(r for r in sweep if r["k"] == k_equal)

    result = {
        "command": " ".join(["python -m benchmarks.probes.gradient_estimators", *map(shlex.quote, sys.argv[1:])]),
        "args": vars(args), "template": TEMPLATE, "class_names": names,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count()},
        "scheduler": {"class": type(t2i.scheduler).__name__,
                      "timestep_spacing": t2i.scheduler.config.timestep_spacing,
                      "timesteps": [int(t) for t in t2i.scheduler.timesteps]},
        "gradient_windows": {e: {"grad_from_step": w[0], "tweedie_at_step": w[1], "scale": w[2],
                                 "differentiated_unet_calls": windows_calls[e]}
                             for e, w in windows.items()},
        "thread_check_full_k6_seconds": thread_check,
        "weak_classifier": {"labels": len(idx), "min_steps": args.weak_min_steps},
        "reference": {"k_ref": 2 * half, "split_half_cosine_per_class": split_half, "split_half_cosine": rho,
                      "reliability": rel_ref,
                      "ceiling_cosine": ceiling, "seconds": sum(h["seconds"] for h in halves),
                      "grad_norm_per_class": [float(ref[c].norm()) for c in range(len(names))]},
        "table": table,
        "noise_floor": noise_floor,
        "chosen": {"estimator": chosen, "rule": rule},
        "sweep": sweep,
        "equal_time": {"full_k6_seconds": t_full6, "time_fit_intercept": intercept, "time_fit_slope": slope,
                       "k_equal": k_equal, "k_equal_tries": k_equal_tries, "chosen_cos_to_ref": equal["cos_to_ref"], "chosen_seconds": equal["seconds"],
                       "chosen_n_estimates": equal["n_estimates"], "chosen_cos_to_ref_se": equal["cos_to_ref_se"],
                       "full_k6_cos_to_ref": by[("full", 6)]["cos_to_ref"],
                       "full_k6_cos_to_ref_se": by[("full", 6)]["cos_to_ref_se"],
                       "full_k6_n_estimates": by[("full", 6)]["n_estimates"]},
        "total_seconds": time.perf_counter() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    write_report(result, Path(args.doc))
    log(f"wrote {args.out} and {args.doc}")


def f3(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def conclusions(r: dict) -> list[str]:
    """Plain statements derived from the numbers by fixed rules."""
    out = []
    table = r["table"]
    ks = sorted({row["k"] for row in table})
    by = {(row["estimator"], row["k"]): row for row in table}
    k_top = ks[-1]
    runs = table + [row for row in r["sweep"] if (row["estimator"], row["k"]) not in by]
    # 1. Best cosine to the reference for a given time: the Pareto frontier over all measured runs.
    frontier = [x for x in sorted(runs, key=lambda x: x["seconds"])
                if not any(y["seconds"] <= x["seconds"] and y["cos_to_ref"] > x["cos_to_ref"] for y in runs if y is not x)]
    out.append("Best cosine to the reference for the seconds spent (runs no other run beats while being at most as "
               "slow): " + ", ".join(f"{x['estimator']} k={x['k']} ({x['seconds']:.1f} s, {x['cos_to_ref']:.3f})"
                                     for x in frontier) + ".")
    budget = by[("full", 6)]["seconds"]
    affordable = [x for x in runs if x["seconds"] <= 1.1 * budget]
    best = max(affordable, key=lambda x: x["cos_to_ref"])
    out.append(f"Within full k = 6's time ({budget:.1f} s, +10%) the best measured run is **{best['estimator']} k={best['k']}** "
               f"(cosine {best['cos_to_ref']:.3f} to the reference vs {by[('full', 6)]['cos_to_ref']:.3f} for full k = 6).")
    # 2. Closeness to exact backprop on the same noise at k = 6.
    same6 = {e: by[(e, 6)]["cos_to_full_same_noise"] for e in ESTIMATORS if e != "full"}
    best_same = max(same6, key=same6.get)
    out.append(f"On the same noise (k = 6) the estimator closest to exact backprop is **{best_same}** ("
               + ", ".join(f"{e} {v:.3f}" for e, v in same6.items()) + ").")
    # 3. Monte-Carlo noise vs the estimators' approximation error.
    nf = r["noise_floor"].get("6", r["noise_floor"].get(6))
    if nf is not None:
        floor, worst = nf["cos_full_vs_full_other_noise"], min(same6.values())
        if floor < worst:
            out.append(f"Two full k = 6 estimates on different noise agree only to cosine {floor:.3f}, less than even "
                       f"the weakest cheap estimator agrees with full on the same noise ({worst:.3f}): at k = 6 the "
                       "Monte-Carlo noise, not the estimator's approximation, dominates the gradient's error.")
        else:
            out.append(f"Two full k = 6 estimates on different noise agree to cosine {floor:.3f}, at least as well as "
                       f"the weakest cheap estimator agrees with full on the same noise ({worst:.3f}): the "
                       "approximation error is not negligible next to the Monte-Carlo noise.")
    # 4. More samples.
    full_lo, full_hi = by[("full", ks[0])], by[("full", k_top)]
    out.append(f"full: cosine to the reference {full_lo['cos_to_ref']:.3f} at k = {ks[0]} -> {full_hi['cos_to_ref']:.3f} "
               f"at k = {k_top} ({full_lo['seconds']:.1f} s -> {full_hi['seconds']:.1f} s per call).")
    eq = r["equal_time"]
    ch = r["chosen"]["estimator"]
    diff = eq["chosen_cos_to_ref"] - eq["full_k6_cos_to_ref"]
    z = diff / max(1e-12, (eq["chosen_cos_to_ref_se"] ** 2 + eq["full_k6_cos_to_ref_se"] ** 2) ** 0.5)
    if z > 2:
        verdict = f"**more samples with {ch} beat full k = 6** (difference {diff:+.3f} = {z:.1f} standard errors)."
    elif z < -2:
        verdict = f"**full k = 6 is better** (difference {diff:+.3f} = {z:.1f} standard errors)."
    else:
        verdict = (f"the difference ({diff:+.3f}, {z:.1f} standard errors) is **within the noise** of this "
                   "measurement: neither is clearly better.")
    out.append(f"Equal seconds: in the time of full k = 6 ({eq['full_k6_seconds']:.1f} s) {ch} affords k = {eq['k_equal']} "
               f"({eq['chosen_seconds']:.1f} s measured), with cosine to the reference {eq['chosen_cos_to_ref']:.3f} vs "
               f"{eq['full_k6_cos_to_ref']:.3f} for full k = 6 (same seeds and classes): " + verdict)
    top = max(r["sweep"], key=lambda x: x["k"])
    out.append(f"{ch} at k = {top['k']} ({top['seconds']:.1f} s) reaches cosine {top['cos_to_ref']:.3f} to the reference; "
               f"full at k = {k_top} ({full_hi['seconds']:.1f} s) reaches {full_hi['cos_to_ref']:.3f}. The reference "
               f"(k_ref = {r['reference']['k_ref']}) has split-half cosine {r['reference']['split_half_cosine']:.3f}, "
               f"so about {r['reference']['ceiling_cosine']:.3f} is the most any estimator can be expected to reach.")
    bias = {(x["estimator"], x["k"]): x["cos_expected_to_expected_full"] for x in runs
            if x.get("cos_expected_to_expected_full") is not None}
    if bias:
        parts = ", ".join(f"{e} k={k}: {v:.2f}" for (e, k), v in sorted(bias.items(), key=lambda kv: (kv[0][1], kv[0][0])))
        out.append("Bias (noise-corrected cosine between the estimator's expected gradient and full's, "
                   f"≈ 1 = unbiased; from seed-to-seed agreement, approximate): {parts}.")
        top_bias = bias.get((ch, top["k"]))
        full_bias = bias.get(("full", k_top))
        if top_bias is not None:
            if top_bias < 0.9 and (full_bias is None or full_bias >= 0.9):
                out.append(f"{ch}'s expected gradient points about {math.degrees(math.acos(min(1.0, top_bias))):.0f}° "
                           f"away from full's (noise-corrected cosine {top_bias:.2f} at k = {top['k']}"
                           + (f"; full at k = {k_top}: {full_bias:.2f}" if full_bias is not None else "")
                           + f"): more samples shrink its noise but not this bias, so {ch} can only win at small budgets; "
                           "with enough time, full is the better estimate of Eq. 5's gradient.")
            elif top_bias >= 0.9:
                out.append(f"{ch}'s noise-corrected cosine to full's expected gradient is {top_bias:.2f} at k = {top['k']}: "
                           "no clear sign of a bias at this precision.")
    ses = sorted(row["cos_to_ref_se"] for row in table if not math.isnan(row["cos_to_ref_se"]))
    out.append(f"Precision: the standard errors of these mean cosines are {ses[0]:.2f}–{ses[-1]:.2f} (median "
               f"{ses[len(ses) // 2]:.2f}); differences smaller than about twice that are noise.")
    return out


def write_report(r: dict, path: Path) -> None:
    a = r["args"]
    ks = sorted({row["k"] for row in r["table"]})
    windows = r["gradient_windows"]
    lines = [
        "# Gradient estimators for GALOT's Eq. 5",
        "",
        f"Generated by `{current_command(r['command'])}` (writes `benchmarks/results/gradient_estimators.json`); do not edit by hand. "
        f"Total runtime {r['total_seconds'] / 60:.1f} min on {r['machine']['cpu_count']} CPU cores "
        f"({r['machine']['torch_threads']} torch thread(s); other jobs shared the machine, so seconds are noisy).",
        "",
        f"Setup: galot-mini, prompts \"{r['template']}\" for {', '.join(r['class_names'])} (all classes in one call), "
        f"{a['steps']} DDIM steps ({r['scheduler']['timestep_spacing']} spacing, timesteps "
        f"{r['scheduler']['timesteps']}), guidance {a['guidance']}, objective = margin acquisition of a weak "
        f"small CNN trained on {r['weak_classifier']['labels']} real labels. Estimators "
        "(`DiffusersT2I.acquisition_grad`): "
        + "; ".join(f"`{e}` differentiates {w['differentiated_unet_calls']} UNet call(s) from step {w['grad_from_step']}"
                    for e, w in windows.items()) + f" (last_m: m = {a['m']}).",
        "",
        f"Reference = mean of `full` over k_ref = {r['reference']['k_ref']} samples on independent noise, "
        f"computed as two halves: split-half cosine {f3(r['reference']['split_half_cosine'])} "
        f"(per class {', '.join(f3(x) for x in r['reference']['split_half_cosine_per_class'])}), so even a "
        f"noise-free unbiased gradient would have cosine ≈ {f3(r['reference']['ceiling_cosine'])} to it "
        "(Spearman–Brown, isotropic-noise approximation). Cosines are per class, then averaged over "
        f"{len(r['class_names'])} classes × {a['seeds']} noise seeds (k > 6: {a['seeds_large_k']}; part 2's extra k: {a['sweep_seeds']}; "
        "column n = noise seeds, each over all classes; ± = standard error of the mean over seeds × classes, "
        "sd in the JSON). The reference's noise seeds are disjoint from every estimate's.",
        "",
    ]
    tc = r.get("thread_check_full_k6_seconds") or {}
    if tc:
        lines += ["Thread check (full, k = 6, same noise, two calls each, before the run): " + "; ".join(
            f"{t} thread(s): {', '.join(f'{x:.2f}' for x in v)} s" for t, v in tc.items())
            + f". Fastest call in this check: {min(tc, key=lambda t: min(tc[t]))} thread(s). The run uses "
            f"{r['machine']['torch_threads']}: the default is 1 because, with other jobs sharing the 2 cores, 2 threads "
            "made calls several times slower and erratic in trials of this script (the check shows what it was like "
            "during this run).", ""]
    lines += [
        "## 1. Estimators × k",
        "",
        "Cost is per call of `acquisition_grad` for all classes × k samples: wall seconds (minimum over the "
        "noise seeds, since other jobs only ever add time), process CPU seconds (also the minimum), UNet calls "
        "(a guided [uncond, cond] batch is one call) and how many of them are differentiated. `mean margin` is "
        "the weak classifier's margin acquisition of the images the objective saw (Tweedie x̂₀ images for the "
        "one-step estimators); −1 = confident, 0 = maximally uncertain.",
        "",
        "| estimator | k | n | cos to full, same noise | cos to reference (± s.e.) | seconds | CPU s | UNet calls "
        "(backprop) | mean margin |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["table"]:
        lines.append(f"| {row['estimator']} | {row['k']} | {row['n_estimates']} | {f3(row.get('cos_to_full_same_noise'))} | "
                     f"{f3(row['cos_to_ref'])} ± {f3(row['cos_to_ref_se'])} | {row['seconds']:.2f} | "
                     f"{row['cpu_seconds']:.2f} | {row['unet_calls']:.0f} ({row['backprop_unet_calls']}) | "
                     f"{row['objective']:.3f} |")
    if r["noise_floor"]:
        lines += ["", "Monte-Carlo noise floor: cosine between two `full` estimates on different noise "
                  "(same k, all seed pairs × classes):", "",
                  "| k | cos(full, full') |", "|---:|---:|"]
        for k in ks:
            nf = r["noise_floor"].get(str(k), r["noise_floor"].get(k))
            if nf is None:
                continue
            lines.append(f"| {k} | {f3(nf['cos_full_vs_full_other_noise'])} |")
    ch = r["chosen"]
    lines += ["", "## 2. Variance reduction: more samples of a cheap estimator", "",
              f"Chosen estimator: **{ch['estimator']}** — {ch['rule']}. `full` from part 1 for comparison. "
              "Self-agreement = mean cosine between estimates on different noise seeds (its reliability). "
              "Noise-corrected cosine = cos to reference / √(self-agreement × reference reliability "
              f"{f3(r['reference']['reliability'])}): an estimate of the cosine between this estimator's *expected* "
              "gradient and full's, i.e. of its bias in direction (≈ 1 = unbiased; approximate, assumes isotropic "
              "noise; shown only when both reliabilities exceed 0.3).", "",
              "| estimator | k | n | cos to reference (± s.e.) | seconds | self-agreement | noise-corrected cos(E est, E full) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    rows = r["sweep"] + [row for row in r["table"] if row["estimator"] == "full"]
    for row in rows:
        lines.append(f"| {row['estimator']} | {row['k']} | {row['n_estimates']} | {f3(row['cos_to_ref'])} ± "
                     f"{f3(row['cos_to_ref_se'])} | {row['seconds']:.2f} | {f3(row.get('self_agreement'))} | "
                     f"{f3(row.get('cos_expected_to_expected_full'))} |")
    eq = r["equal_time"]
    lines += ["", f"Equal time: seconds per call of {ch['estimator']} ≈ {eq['time_fit_intercept']:.2f} + "
              f"{eq['time_fit_slope']:.3f}·k (fit on part 1), so in full k = 6's {eq['full_k6_seconds']:.2f} s it "
              f"affords k = {eq['k_equal']}.", "", "## Conclusion (derived by the script)", ""]
    lines += [f"- {c}" for c in conclusions(r)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
