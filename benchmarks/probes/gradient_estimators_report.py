"""docs/gradient_estimators.md from benchmarks/results/gradient_estimators.json (written by
``python -m benchmarks.probes.gradient_estimators``; ``--report-only`` rewrites the doc alone)."""

from __future__ import annotations

import math
from pathlib import Path

ESTIMATORS = ("last_step", "last_m", "tweedie", "full")  # DiffusersT2I.acquisition_grad's, cheapest first


def current_command(recorded: str) -> str:
    """The command a result file records, in today's form (before benchmarks/ was a package, a script path)."""
    return recorded.replace("python benchmarks/gradient_estimators.py", "python -m benchmarks.probes.gradient_estimators")


def f3(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def conclusions(r: dict) -> list[str]:
    """Plain statements derived from the numbers by fixed rules."""
    table = r["table"]
    ks = sorted({row["k"] for row in table})
    by = {(row["estimator"], row["k"]): row for row in table}
    runs = table + [row for row in r["sweep"] if (row["estimator"], row["k"]) not in by]
    ses = sorted(row["cos_to_ref_se"] for row in table if not math.isnan(row["cos_to_ref_se"]))
    return [*speed_and_noise(r, by, runs), *more_samples(r, by, ks), *direction_bias(r, runs, ks),
            f"Precision: the standard errors of these mean cosines are {ses[0]:.2f}–{ses[-1]:.2f} (median "
            f"{ses[len(ses) // 2]:.2f}); differences smaller than about twice that are noise."]


def speed_and_noise(r: dict, by: dict, runs: list[dict]) -> list[str]:
    """The best cosine for the time spent, closeness to exact backprop, and the Monte-Carlo noise next to it."""
    out = []
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
    return out


def more_samples(r: dict, by: dict, ks: list[int]) -> list[str]:
    """What more samples buy: full over k, the chosen estimator at equal seconds and at its largest k."""
    out = []
    k_top = ks[-1]
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
    return out


def direction_bias(r: dict, runs: list[dict], ks: list[int]) -> list[str]:
    """The estimators' noise-corrected bias in direction, where the seed-to-seed agreement allows it."""
    out = []
    k_top, ch = ks[-1], r["chosen"]["estimator"]
    top = max(r["sweep"], key=lambda x: x["k"])
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
    return out


def write_report(r: dict, path: Path) -> None:
    lines = [*setup(r), *part1(r), *part2(r), "", "## Conclusion (derived by the script)", "",
             *(f"- {c}" for c in conclusions(r))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def setup(r: dict) -> list[str]:
    """The title, the run and the reference the cosines are measured against."""
    a = r["args"]
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
    return lines


def part1(r: dict) -> list[str]:
    """Every estimator × k, and the Monte-Carlo noise floor."""
    ks = sorted({row["k"] for row in r["table"]})
    lines = [
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
    return lines


def part2(r: dict) -> list[str]:
    """The chosen cheap estimator at more samples, and the equal-time k."""
    ch = r["chosen"]
    lines = ["", "## 2. Variance reduction: more samples of a cheap estimator", "",
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
              f"affords k = {eq['k_equal']}."]
    return lines
