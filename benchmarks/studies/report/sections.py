"""docs/results.md's sections on the mnist5k study: status, protocol, Table 1, Fig. 3, Table 2, Fig. 4, ablations, cost."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt

from benchmarks.common import Stat, md_table, prose
from benchmarks.studies import study
from benchmarks.studies.study import EXPERIMENTS, TEMPLATES, TRANSFER_ARCHS, TRANSFERS
from benchmarks.studies.report.world import (BASIC, CHANCE, FULL, GAL_ONLY, GALOT, MARGIN, POOL, SIGMAS,
                                             WorldResults, diff, fmt, pp, save)
from benchmarks.studies.report.claims import pseudo_stat, sigma_key, template_key


def protocol(start: str) -> str:
    """The paragraph of study.py's docstring that begins with ``start`` (each world's protocol)."""
    text = study.__doc__.split(start, 1)[1].split("\n\n", 1)[0]
    return start + (" " if text[:1].isspace() else "") + " ".join(text.split())


def header(wr: WorldResults) -> list[str]:
    jobs = study.plan([*EXPERIMENTS, "table2_transfer"], wr.world.seeds)
    paths = [study.result_path(*j[1:3], j[4]) if j[0] == "run" else
             study.result_path("table2_transfer", f"{j[1]}_{j[2]}", j[3]) for j in jobs]
    runs = [json.loads(p.read_text()) for p in paths if p.exists()]
    wall = sum(r.get("wall_seconds", 0.0) for r in runs)
    transfer = sum(r.get("seconds", 0.0) for r in runs if r.get("group") == "table2_transfer")
    cells = [*((g, n) for g, names in EXPERIMENTS.items() for n in names),
             *(("table2_transfer", f"{s}_{a}") for s in TRANSFERS for a in TRANSFER_ARCHS)]
    short: dict[int, list[str]] = {}
    for g, n in cells:
        if (k := len(list((wr.world.results / g / n).glob("seed*.json")))) < len(wr.world.seeds):
            short.setdefault(k, []).append(f"{g}/{n}")
    pending = " ".join(f"With {k} of {len(wr.world.seeds)} seeds: {', '.join(v)}." for k, v in sorted(short.items())[::-1])
    return [prose("results/header", done=len(runs), planned=len(jobs), hours=f"{(wall + transfer) / 3600:.1f}",
                  transfer=f" plus {transfer / 60:.0f} min of transfer training (transfer files record training time "
                           "only)" if transfer else "", half_hours=f"{(wall + transfer) / 7200:.1f}",
                  pending=pending or "Every cell has all its seeds.", protocol=protocol("The protocol"),
                  b_al=wr.b_al(), cycles=len(wr.cycles()), seeds=len(wr.world.seeds)), ""]


def table1(wr: WorldResults, prefix: str = "") -> list[str]:
    rows = [(k[1].removeprefix("al_"), k) for k in wr.al_keys] + [("GALOT (basic, ε = 0)", BASIC), ("GALOT", GALOT)]
    imp = []
    for c in [*wr.cycles(), None]:
        name, best = wr.best_baseline(c)
        imp.append(f"{fmt(d, True)} ({name})" if (d := diff(wr.acc(GALOT, c), best)) else "pending")
    curves = {k[1][3:]: [r["test_accuracy"] for run in wr.load(k) for r in run["cycles"]] for k in wr.al_keys}
    same = [f"{a} and {b}" for i, a in enumerate(curves) for b in [*curves][i + 1:] if curves[a] == curves[b] != []]
    note = [f"Identical results, seed for seed: {'; '.join(same)}." + (
        " galot's VarRatio is 1 − max p, which ranks the pool exactly as LeastConfidence does."
        if "LeastConfidence and VarRatio" in same else ""), ""] if same else []
    return [f"## {prefix.replace('_', ' ').title()}Table 1: GALOT vs AL strategies", "",
            f"Fully supervised (the whole {POOL[wr.world.name]}-image pool): {fmt(wr.acc(FULL))}. The last row is GALOT minus the best "
            "AL mean at each budget (named), in pp. GALOT basic differs from GALOT only by ε = 0 (the paper's Table 8 "
            "also gives its basic version the template \"{label}\").", "",
            *wr.curve_table(rows)[:-1], "| Improvement (GALOT − best AL) | " + " | ".join(imp) + " |", "", *note,
            wr.plot_curves(f"{prefix}table1.png", [("GALOT", GALOT), ("GALOT basic", BASIC), ("MarginSampling", MARGIN)],
                        "Table 1: GALOT vs AL strategies", grey=tuple(k for k in wr.al_keys if k != MARGIN)), ""]


def fig3(wr: WorldResults, prefix: str = "") -> list[str]:
    rows = [("AL only (margin)", MARGIN), ("GAL only (0 real labels)", GAL_ONLY), ("AL+GAL (GALOT)", GALOT)]
    return [f"## {prefix.replace('_', ' ').title()}Figure 3: AL only, GAL only, AL+GAL, fully supervised", "",
            "GAL only trains on generated images alone; its x value is the |L| an AL run would have, which sets its "
            f"B_GAL. Fully supervised (the whole {POOL[wr.world.name]}-image pool, one training; dashed line): {fmt(wr.acc(FULL))}.", "",
            wr.plot_curves(f"{prefix}fig3.png", rows, "Figure 3: baselines",
                        hlines=(("fully supervised", wr.acc(FULL)), ("chance", Stat(CHANCE, 0, 99)))), "",
            *wr.curve_table(rows)]


def table2(wr: WorldResults) -> list[str]:
    rows, n = [], len(wr.cycles())
    for a in TRANSFER_ARCHS:
        y, x = wr.transfer_stat("galot", a), wr.transfer_stat("al_MarginSampling", a)
        rows.append([a, fmt(y), fmt(x), fmt(diff(y, x), True), wr.verdict(diff(y, x))])
    files = sorted((wr.world.results / "table2_transfer").glob("*/seed*.json"))
    t = json.loads(files[0].read_text())["settings"]["transfer"] if files else None
    return ["## Table 2: transfer to other architectures", "",
            f"Each architecture trains once on a finished run's final dataset (|L| = {n * wr.b_al()} real labels, plus "
            f"{n * wr.b_al()} generated images for the GALOT data; the AL-only data is al_MarginSampling's selection) and "
            "is tested on the same test set; nothing is generated again. " + (
                f"Transfer training: {t['epochs']} epochs, ≥ {t['min_steps']} steps, lr {t['lr']}: shorter than the "
                "study's small_cnn training, so the small_cnn row is the like-for-like reference." if t else
                "Transfer settings: pending (no transfer result yet)."), "",
            *md_table(["architecture", "GALOT data", "AL-only data", "GALOT − AL (pp)", "verdict"], rows),
            "Verdict: the GALOT data beats the AL-only data on the same architecture by > 1 SEM. For context, Table 1 "
            f"at |L| = {n * wr.b_al()} (small_cnn, full training): GALOT {fmt(wr.acc(GALOT, n))}, AL margin "
            f"{fmt(wr.acc(MARGIN, n))}.", ""]


def fig4(wr: WorldResults, data: dict | None) -> list[str]:
    title = "## Figure 4 / Table 9: pseudo-label accuracy vs ε"
    if data is None:
        return [title, "", "Pending: run `OMP_NUM_THREADS=1 python -m benchmarks.studies.pseudo_labels`.", ""]
    p, eps = data["protocol"], data["protocol"]["epsilons"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axvspan(0, 0.2, color="0.9", label="radii GALOT uses (≤ 0.2)")
    for t in TEMPLATES:
        ss = [pseudo_stat(data, t, e) for e in eps]
        ax.errorbar(eps, [s.mean for s in ss], yerr=[0 if s.n < 2 else s.sem for s in ss], marker="o", ms=3,
                    capsize=2, label=f'"{t}"')
    judged = [("GALOT basic, ε = 0", 0.0, BASIC), ("GALOT, ε → 0.1", 0.1, ("table4_epsilon", "eps_0.1")),
              ("GALOT, ε → 0.2 (default)", 0.2, GALOT), ("GALOT, ε → 0.4", 0.4, ("table4_epsilon", "eps_0.4")),
              ("GALOT, σ_GAL = random, ε → 0.2", None, ("fig5_sigma_gal", "gal_RandomSampling"))]
    last = {e: s for _, e, k in judged if e is not None and (s := wr.acc(k, len(wr.cycles()), "judged_accuracy"))}
    if last:
        ax.plot([*last], [s.mean for s in last.values()], "k--x", label="GALOT runs' last cycle (TextOpt, margin)")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.set(xlabel="ε / ‖s*‖₂ (coloured: random walk, per template)", ylabel="judged pseudo-label accuracy")
    plot = save(fig, ax, "fig4_pseudo_labels.png", "Figure 4: pseudo-label accuracy vs ε (judge: fully supervised)")
    per = p["images_per_class"] * len(p["seeds"])
    t9 = []
    for e in (0.0, max(eps)):
        for t in TEMPLATES:
            rs = [r for r in data["results"] if r["template"] == t and r["epsilon_relative"] == e]
            counts = [sum(r["correct_per_class"][c] for r in rs) for c in p["classes"]]
            t9.append([f"{e:g}", f'"{t}"', *map(str, counts), f"{sum(counts)}/{per * len(counts)}"])
    flat = max((e for e in eps if all(pseudo_stat(data, t, e).mean >= 0.99 for t in TEMPLATES)), default=0.0)
    return [title, "",
            "The paper counts correct images by human annotation; offline, the judge is the fully-supervised "
            f"classifier ({p['judge']}), the stand-in for a human annotator: an image is correct if the judge "
            "gives it its prompted class. Per template and relative radius ε, every class's s* is moved as galot "
            f"does for σ_GAL = RandomSampling ({p['textopt']['n']} sign steps of α = ε/5 in random directions, each "
            f"projected onto the ε-ball), then {p['images_per_class']} images per class are generated (galot-mini, "
            f"{p['steps']} steps, guidance {p['guidance_scale']}). Seeds {p['seeds']}, each with its own walk and "
            f"noise. Wall time {data['wall_seconds'] / 60:.0f} min on {p['threads']} thread.", "", plot, "",
            *md_table(["template", *(f"ε = {e:g}" for e in eps)],
                      [[f'"{t}"', *(fmt(pseudo_stat(data, t, e)) for e in eps)] for t in TEMPLATES]),
            f"Table 9: correct images per class, summed over seeds (out of {per}):", "",
            *md_table(["ε", "template", *p["classes"], "total"], t9, 2),
            "The pseudo-labels the study's runs trained on, judged the same way (there TextOpt moves s* to raise the "
            "classifier's uncertainty, not at random; ε is the radius of the last cycle):", "",
            *md_table(["run", "last cycle", "average over cycles"],
                      [[label, fmt(wr.acc(k, len(wr.cycles()), "judged_accuracy")), fmt(wr.acc(k, None, "judged_accuracy"))]
                       for label, _, k in judged]),
            f"Along random directions every template keeps ≥ 99% judged accuracy up to ε = {flat:g}·‖s*‖ "
            f"({flat / 0.2:g}× the radius GALOT reaches); " + (
                "along TextOpt's direction the last cycle's images fall to " + ", ".join(
                    f"{fmt(s)} at ε = {e:g}" for e, s in last.items() if e > 0) + "." if last else
                "the study's TextOpt runs are pending."), ""]


def steps(n: int, epochs: int) -> int:
    """SGD steps of one training (galot_core.train.fit): max(epochs · ⌈n / 32⌉, 300)."""
    return max(epochs * math.ceil(n / 32), 300)


def ablations(wr: WorldResults) -> list[str]:
    t3 = [(f'"{t}"', template_key(i, t)) for i, t in enumerate(TEMPLATES)]
    t4 = [("ε = 0 (basic)", BASIC), ("ε = 0.1", ("table4_epsilon", "eps_0.1")), ("ε = 0.2 (default)", GALOT),
          ("ε = 0.4", ("table4_epsilon", "eps_0.4"))]
    f5 = [(s, ("fig5_sigma_gal", f"gal_{s}")) for s in ("RandomSampling", "EntropySampling", "LeastConfidence")]
    f6 = [("0 (AL only)", MARGIN), ("0.5|L|", ("fig6_budget_gal", "bgal_0.5")), ("1.0|L| (default)", GALOT),
          ("1.5|L|", ("fig6_budget_gal", "bgal_1.5"))]
    t5 = [("AL margin, 40 epochs", MARGIN), ("GALOT, 40 epochs", GALOT),
          ("AL margin, 80 epochs", ("table5_equal_iterations", "al_MarginSampling_2x_epochs"))]
    sr = [("sign step (Eq. 5, default)", GALOT), ("L2-normalised step", ("step_rule", "l2_step"))]
    ls = [c * wr.b_al() for c in wr.cycles()]
    step_rows = [["AL margin, 40 epochs", *(str(steps(n, 40)) for n in ls)],
                 ["AL margin, 80 epochs", *(str(steps(n, 80)) for n in ls)],
                 ["GALOT, 40 epochs (|L| + |L| images)", *(str(steps(2 * n, 40)) for n in ls)]]
    t7 = [(f"{a} for both" + (" (default)" if a == "MarginSampling" else ""), sigma_key(a)) for a in SIGMAS]
    return ["## Ablations", "",
            "Every ablation runs the full protocol and changes only the key it names; the default cell is the "
            "Table 1 GALOT run. ε grows linearly from 0, so in cycle 1 every variant that changes only ε or σ_GAL "
            "generates from s* itself, exactly as GALOT basic does.", "",
            "### Table 3: prompt template", "", *wr.curve_table(t3),
            "### Table 4: ε (relative radius reached in the last cycle)", "", *wr.curve_table(t4),
            "### Figure 5: σ_GAL (σ_AL = margin)", "",
            wr.plot_curves("fig5_sigma_gal.png", [*f5, ("MarginSampling (default)", GALOT)], "Figure 5: σ_GAL"), "",
            *wr.curve_table([*f5, ("MarginSampling (default)", GALOT)]),
            "### Figure 6: B_GAL", "", wr.plot_curves("fig6_budget_gal.png", f6, "Figure 6: B_GAL = factor · |L|"), "",
            *wr.curve_table(f6),
            "### Table 5: equal training iterations", "", *wr.curve_table(t5),
            "SGD steps per cycle (from galot_core.train.fit: max(epochs · ⌈images / 32⌉, 300)):", "",
            *md_table(["method", *map(str, ls)], step_rows),
            "### Table 7: σ_AL = σ_GAL", "",
            "As the paper's Table 7: one strategy for both the real selection and TextOpt (Fig. 5 varies σ_GAL "
            "alone).", "", *wr.curve_table(t7),
            "### Step rule: sign (paper Eq. 5) vs L2-normalised (authors' code)", "", *wr.curve_table(sr)]


def cost(wr: WorldResults) -> list[str]:
    """Timings of the fastest seed of each method: other load on the machine only ever adds time."""
    stages, calls = ("select", "textopt", "generate", "train", "export"), ("textopt", "generate")
    rows, fastest = [], {}
    for label, k in [("GALOT", GALOT), ("GALOT basic", BASIC), ("AL margin", MARGIN), ("GAL only", GAL_ONLY)]:
        if not (runs := wr.load(k)):
            rows.append([label, *["pending"] * 10])
            continue
        run = fastest[label] = min(runs, key=lambda r: r["wall_seconds"])
        per = [sum(r["seconds"].get(s, 0) for r in run["cycles"]) for s in stages]
        unet = [sum(r["unet_calls"].get(s, 0) for r in run["cycles"]) for s in calls]
        rows.append([label, *(f"{x:.0f}" for x in [*per, sum(per), run["wall_seconds"]]),
                     " / ".join(f"{r['wall_seconds']:.0f}" for r in runs), *map(str, unet)])
    per_cycle = [[str(r["cycle"] * wr.b_al()), f"{r['epsilon']:.2f}",
                  *(f"{r['seconds'].get(s, 0):.1f}" for s in stages[:4]),
                  *(str(r["unet_calls"].get(s, 0)) for s in calls)]
                 for r in fastest.get("GALOT", {"cycles": []})["cycles"]]
    d = diff(wr.acc(GALOT), wr.acc(MARGIN))
    price = (f"GALOT − AL margin, on average: {pp(d)}, for "
             f"{fastest['GALOT']['wall_seconds'] / fastest['AL margin']['wall_seconds']:.1f}× the wall time of an AL "
             "margin run (fastest seeds)." if d and {"GALOT", "AL margin"} <= set(fastest) else "")
    stage_table = md_table(["method", *stages, "stages total", "wall", "wall, each seed", "UNet calls TextOpt",
                            "UNet calls generation"], rows)
    cycle_table = md_table(["|L|", "ε", *(f"{s} s" for s in stages[:4]), "UNet TextOpt", "UNet generation"], per_cycle)
    return [prose("results/cost", cycles=len(wr.cycles()), stages="\n".join(stage_table[:-1]), price=price,
                  per_cycle="\n".join(cycle_table[:-1])), ""]
