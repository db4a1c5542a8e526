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

from benchmarks.common import DOCS, RESULTS, ROOT
from benchmarks.probes.gradient_estimators_report import ESTIMATORS, write_report
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition
from galot_core.config import TrainConfig
from galot_core.data.mnist5k import load_mnist5k
from galot_core.judge import preprocess_for
from galot_core.models import build_model
from galot_core.t2i import DiffusersT2I
from galot_core.train import fit

TEMPLATE = "a realistic photo of a {label}"
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


def parse_args() -> argparse.Namespace:
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
    ap.add_argument("--out", default=str(RESULTS / "gradient_estimators.json"))
    ap.add_argument("--doc", default=str(DOCS / "gradient_estimators.md"))
    ap.add_argument("--report-only", action="store_true", help="only rewrite --doc from an existing --out JSON")
    args = ap.parse_args()
    if not args.report_only and (args.seeds < 1 or args.seeds_large_k < 1 or args.k_ref < 2 or 6 not in args.ks):
        ap.error("need --seeds >= 1, --seeds-large-k >= 1, --k-ref >= 2 and 6 in --ks (the k = 6 full baseline)")
    return args


class Probe:
    """The model, the prompts and the weak classifier whose margin acquisition the estimators ascend."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t_start = time.perf_counter()
        d = load_mnist5k()
        self.t2i = t2i = DiffusersT2I.from_pretrained(args.model, device="cpu", dtype="fp32")
        self.names = [d.class_names[c] for c in args.classes]
        self.s = t2i.encode([TEMPLATE.format(label=n) for n in self.names])  # (C, L, D): all classes in one call
        torch.manual_seed(0)
        self.weak = build_model("small_cnn", d.channels, d.num_classes)
        self.idx = torch.cat([torch.nonzero(d.pool.labels == c).flatten()[: args.weak_labels_per_class]
                              for c in range(d.num_classes)])
        self.pre = preprocess_for(d)
        fit(self.weak, d.pool.images[self.idx], d.pool.labels[self.idx], self.pre,
            TrainConfig(device="cpu", min_steps=args.weak_min_steps), natural=d.natural, seed=0)
        self.weak.eval().requires_grad_(False)
        self.log(f"weak classifier trained on {len(self.idx)} real labels")
        noise = t2i.initial_noise(1, torch.Generator().manual_seed(0))  # sets the schedule (flow matching: its shift)
        self.windows = {e: t2i._gradient_window(e, args.steps, args.m, None, noise) for e in ESTIMATORS}
        self.windows_calls = {e: (w[1] if w[1] is not None else args.steps - 1) - w[0] + 1
                              for e, w in self.windows.items()}

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:6.1f}s] {msg}", flush=True)

    def objective(self, images: torch.Tensor) -> torch.Tensor:
        return acquisition.objective("MarginSampling", self.weak(self.pre(images)))

    def run(self, estimator: str, k: int, seed: int) -> dict:
        a, t2i = self.args, self.t2i
        calls0 = t2i.num_denoiser_calls
        wall0, cpu0 = time.perf_counter(), time.process_time()
        grad, values = t2i.acquisition_grad(
            self.s, self.objective, k=k, generator=torch.Generator().manual_seed(seed), num_inference_steps=a.steps,
            guidance_scale=a.guidance, estimator=estimator, m=a.m, batch_size=a.batch_size)
        return {"grad": grad, "objective": values.tolist(), "seconds": time.perf_counter() - wall0,
                "cpu_seconds": time.process_time() - cpu0, "unet_calls": t2i.num_denoiser_calls - calls0}

    def thread_check(self) -> dict:
        check = {}
        if self.args.thread_check:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                check[threads] = [self.run("full", 6, estimate_seed(0, 6))["seconds"] for _ in range(2)]
                self.log(f"thread check: full k=6 with {threads} thread(s): {check[threads]}")
            torch.set_num_threads(self.args.threads)
        return check

    def reference(self) -> dict:
        """Mean of full over k_ref samples, two halves on independent noise."""
        half = self.args.k_ref // 2
        halves = [self.run("full", half, REF_SEED + h) for h in range(2)]
        self.ref = ref = (halves[0]["grad"] + halves[1]["grad"]) / 2
        split_half = [cosine(halves[0]["grad"][c], halves[1]["grad"][c]) for c in range(len(self.names))]
        self.log(f"reference: k_ref={2 * half}, split-half cosine per class {[round(x, 3) for x in split_half]}")
        # How well can anything agree with a reference that is itself a k_ref-sample mean? In high dimension
        # with independent noise, the cosine between two independent estimates of the same mean is their
        # "reliability" |mu|^2 / E|x|^2; Spearman-Brown turns the split-half cosine rho of two k_ref/2 means
        # into the reliability 2 rho / (1 + rho) of the k_ref mean, and a noise-free unbiased gradient would
        # have cosine ~ sqrt(that) to the reference (the ceiling).
        rho = mean(split_half)
        self.rel_ref = rel_ref = max(0.0, 2 * rho / (1 + rho)) if rho > -1 else float("nan")
        return {"k_ref": 2 * half, "split_half_cosine_per_class": split_half, "split_half_cosine": rho,
                "reliability": rel_ref, "ceiling_cosine": math.sqrt(rel_ref),
                "seconds": sum(h["seconds"] for h in halves),
                "grad_norm_per_class": [float(ref[c].norm()) for c in range(len(self.names))]}

    def part1(self, ks: list[int]) -> dict[str, dict[int, list[dict]]]:
        """Every estimator x k x seed, same noise across estimators."""
        a = self.args
        raw: dict[str, dict[int, list[dict]]] = {e: {k: [] for k in ks} for e in ESTIMATORS}
        for seed_index in range(max(a.seeds, a.seeds_large_k)):
            for k in ks:
                if k <= 6 and seed_index >= a.seeds:
                    continue
                if k > 6 and seed_index >= a.seeds_large_k:
                    continue
                for e in ESTIMATORS:
                    raw[e][k].append(self.run(e, k, estimate_seed(seed_index, k)))
                self.log(f"seed {seed_index} k={k}: " + ", ".join(
                    f"{e} {raw[e][k][-1]['seconds']:.1f}s" for e in ESTIMATORS))
        return raw

    def summarise(self, e: str, k: int, runs: list[dict], full_runs: list[dict] | None) -> dict:
        classes = range(len(self.names))
        to_ref = [[cosine(r["grad"][c], self.ref[c]) for c in classes] for r in runs]
        flat = [x for xs in to_ref for x in xs]
        row = {
            "estimator": e, "k": k, "n_estimates": len(runs),
            "cos_to_ref_per_seed_class": to_ref,
            "cos_to_ref": mean(flat), "cos_to_ref_std": std(flat), "cos_to_ref_se": std(flat) / len(flat) ** 0.5,
            # min over repeats: other jobs share the CPU, and contention only ever adds time
            "seconds": min(r["seconds"] for r in runs),
            "seconds_all": [r["seconds"] for r in runs],
            "cpu_seconds": min(r["cpu_seconds"] for r in runs),
            "backprop_unet_calls": self.windows_calls[e],
            "unet_calls": mean([r["unet_calls"] for r in runs]),
            "grad_norm": mean([float(r["grad"][c].norm()) for r in runs for c in classes]),
            "objective": mean([v for r in runs for v in r["objective"]]),
        }
        # Self-agreement (mean cosine between this estimate on different noise seeds) is its reliability;
        # dividing the cosine to the reference by sqrt(reliability x reference reliability) corrects for
        # both noises ("disattenuation") and estimates cos(E[estimate], E[full]): ~1 for an unbiased
        # estimator, < 1 measures the estimator's bias in direction. Only when both are well above 0.
        if len(runs) >= 2:
            row["self_agreement"] = mean(pairwise_cosines(runs, len(self.names)))
            ok = row["self_agreement"] > 0.3 and self.rel_ref > 0.3 and row["cos_to_ref"] > 0
            row["cos_expected_to_expected_full"] = (
                row["cos_to_ref"] / math.sqrt(row["self_agreement"] * self.rel_ref) if ok else None)
        if full_runs is not None:
            same = [[cosine(r["grad"][c], f["grad"][c]) for c in classes] for r, f in zip(runs, full_runs)]
            row["cos_to_full_same_noise_per_seed_class"] = same
            row["cos_to_full_same_noise"] = mean([x for xs in same for x in xs])
        return row

    def equal_time_k(self, chosen: str, by: dict, ks: list[int], sweep_runs: dict) -> tuple[int, list[dict], dict]:
        """The k the chosen estimator can afford in full k = 6's seconds: fitted, then checked on seed 0."""
        t_full6 = by[("full", 6)]["seconds"]
        # Seconds per call ~ a + b k (fit on part-1 times).
        ys_t = [by[(chosen, k)]["seconds"] for k in ks]
        kbar, tbar = mean(list(ks)), mean(ys_t)
        slope = sum((x - kbar) * (y - tbar) for x, y in zip(ks, ys_t)) / max(1e-9, sum((x - kbar) ** 2 for x in ks))
        intercept = tbar - slope * kbar
        k_equal = max(1, int((t_full6 - intercept) / slope)) if slope > 0 else max(ks)
        # The fit ignores batching steps (a new UNet batch every --batch-size samples): check the predicted k on
        # seed 0 and shrink it until it really takes at most ~full k = 6's time.
        tries = []
        for _ in range(4):
            if k_equal not in sweep_runs:
                sweep_runs[k_equal] = [self.run(chosen, k_equal, estimate_seed(0, k_equal))]
            measured = min(x["seconds"] for x in sweep_runs[k_equal])
            tries.append({"k": k_equal, "seconds": measured})
            self.log(f"equal-time check {chosen} k={k_equal}: {measured:.2f}s (full k=6: {t_full6:.2f}s)")
            if measured <= 1.1 * t_full6 or k_equal == 1:
                break
            k_equal = max(1, min(k_equal - 1, int(k_equal * t_full6 / measured)))
        return k_equal, tries, {"full_k6_seconds": t_full6, "time_fit_intercept": intercept, "time_fit_slope": slope}

    def part2(self, chosen: str, by: dict, ks: list[int], raw: dict) -> tuple[list[dict], dict]:
        """The chosen estimator at larger k, plus its equal-time k vs full k = 6."""
        a = self.args
        sweep_runs = {k: raw[chosen][k] for k in ks}
        k_equal, tries, fit_ = self.equal_time_k(chosen, by, ks, sweep_runs)
        if len(sweep_runs[k_equal]) < a.seeds:  # the equal-time k on every seed, like full k = 6
            sweep_runs[k_equal] += [self.run(chosen, k_equal, estimate_seed(i, k_equal))
                                    for i in range(len(sweep_runs[k_equal]), a.seeds)]
        for k in sorted(set(a.sweep_ks) - set(sweep_runs)):
            sweep_runs[k] = [self.run(chosen, k, estimate_seed(i, k)) for i in range(a.sweep_seeds)]
            self.log(f"sweep {chosen} k={k}: " + ", ".join(f"{x['seconds']:.1f}s" for x in sweep_runs[k]))
        sweep = [self.summarise(chosen, k, sweep_runs[k], None) for k in sorted(sweep_runs)]
        equal = next(r for r in sweep if r["k"] == k_equal)
        full6 = by[("full", 6)]
        return sweep, {**fit_, "k_equal": k_equal, "k_equal_tries": tries, "chosen_cos_to_ref": equal["cos_to_ref"],
                       "chosen_seconds": equal["seconds"], "chosen_n_estimates": equal["n_estimates"],
                       "chosen_cos_to_ref_se": equal["cos_to_ref_se"], "full_k6_cos_to_ref": full6["cos_to_ref"],
                       "full_k6_cos_to_ref_se": full6["cos_to_ref_se"], "full_k6_n_estimates": full6["n_estimates"]}

    def header(self, thread_check: dict) -> dict:
        """What the result file records about the run before its numbers."""
        sched = self.t2i.scheduler
        return {
            "command": " ".join(["python -m benchmarks.probes.gradient_estimators", *map(shlex.quote, sys.argv[1:])]),
            "args": vars(self.args), "template": TEMPLATE, "class_names": self.names,
            "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                        "cpu_count": os.cpu_count()},
            "scheduler": {"class": type(sched).__name__, "timestep_spacing": sched.config.timestep_spacing,
                          "timesteps": [int(t) for t in sched.timesteps]},
            "gradient_windows": {e: {"grad_from_step": w[0], "tweedie_at_step": w[1], "scale": w[2],
                                     "differentiated_unet_calls": self.windows_calls[e]}
                                 for e, w in self.windows.items()},
            "thread_check_full_k6_seconds": thread_check,
            "weak_classifier": {"labels": len(self.idx), "min_steps": self.args.weak_min_steps},
        }


def pairwise_cosines(runs: list[dict], classes: int) -> list[float]:
    """Cosines between the estimates of different noise seeds, per class."""
    return [cosine(runs[a]["grad"][c], runs[b]["grad"][c]) for a in range(len(runs))
            for b in range(a + 1, len(runs)) for c in range(classes)]


def choose(table: list[dict], ks: list[int]) -> tuple[str, str]:
    """The cheapest good estimator by a fixed rule (from part-1 numbers only), and the rule."""
    k_top = max(ks)
    by = {(r["estimator"], r["k"]): r for r in table}
    full_top = by[("full", k_top)]["cos_to_ref"]
    cheap = [e for e in ESTIMATORS if e != "full"]
    good = [e for e in cheap if by[(e, k_top)]["cos_to_ref"] >= 0.8 * full_top]
    if good:
        return min(good, key=lambda e: by[(e, k_top)]["seconds"]), (
            f"cheapest (seconds at k = {k_top}) among the estimators whose cosine to the reference at "
            f"k = {k_top} is at least 0.8 x that of full")
    return max(cheap, key=lambda e: by[(e, k_top)]["cos_to_ref"]), (
        f"no cheap estimator reached 0.8 x full's cosine to the reference at k = {k_top}; "
        "taking the one with the highest cosine")


def noise_floor(raw: dict, ks: list[int], classes: int) -> dict:
    """Cosine between two full estimates on different noise, per k."""
    return {k: {"cos_full_vs_full_other_noise": mean(pairs), "pairs": pairs}
            for k in ks if len(raw["full"][k]) >= 2 and (pairs := pairwise_cosines(raw["full"][k], classes))}


def main() -> None:
    args = parse_args()
    if args.report_only:
        write_report(json.loads(Path(args.out).read_text()), Path(args.doc))
        return
    torch.set_num_threads(args.threads)
    probe = Probe(args)
    probe.run("full", 1, 0)  # warm-up (allocator, autograd), untimed
    probe.log("warm-up done")
    result = probe.header(probe.thread_check())
    result["reference"] = probe.reference()
    ks = sorted(set(args.ks))
    raw = probe.part1(ks)
    table = [probe.summarise(e, k, raw[e][k], raw["full"][k]) for e in ESTIMATORS for k in ks]
    floor = noise_floor(raw, ks, len(probe.names))
    chosen, rule = choose(table, ks)
    probe.log(f"chosen for the k sweep: {chosen} ({rule})")
    sweep, equal_time = probe.part2(chosen, {(r["estimator"], r["k"]): r for r in table}, ks, raw)
    result |= {"table": table, "noise_floor": floor, "chosen": {"estimator": chosen, "rule": rule}, "sweep": sweep,
               "equal_time": equal_time, "total_seconds": time.perf_counter() - probe.t_start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    write_report(result, Path(args.doc))
    probe.log(f"wrote {args.out} and {args.doc}")


if __name__ == "__main__":
    main()
