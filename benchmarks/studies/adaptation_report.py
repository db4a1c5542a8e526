"""docs/results.md's section "A generator that learns from the labels", from benchmarks/results/adaptation_*.json.

Called by benchmarks/studies/report.py (which writes docs/results.md); nothing here is typed by
hand but the protocol. The arm chosen per world is the one with the best mean validation
accuracy of real ∪ generated over the |L| measured — never the test set.
"""

from __future__ import annotations

import json

from benchmarks.common import ROOT, verdict_2sem
from benchmarks.probes import gal_probe
RESULTS = {w: ROOT / "benchmarks" / "results" / f"adaptation_{w}.json" for w in ("mnist5k", "fashion")}
PROBE = ROOT / "benchmarks" / "results" / "gal_probe_fashion.json"
TITLES = {"mnist5k": "mnist5k", "fashion": "Fashion"}

# A cycle's cost in image-passes through the denoiser (one image through it once), for the
# estimate on real checkpoints: a LoRA or embedding optimiser step on a batch of B images is a
# forward and a backward pass, about 3 forward passes (the backward costs about twice the forward).
BACKWARD_FACTOR = 3


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def load() -> dict[str, dict]:
    return {w: json.loads(p.read_text()) for w, p in RESULTS.items() if p.exists()}


def other_generators() -> list[str]:
    """Cells measured on another galot-mini than the world's table (``--out adaptation_W_<sha>.json``):
    their own subsection each, never mixed into the tables or the verdict above."""
    lines = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("adaptation_*_*.json")):
        r = json.loads(path.read_text())
        if not r.get("cells"):
            continue
        names, at = r["class_names"], max(c["labelled"] for c in r["cells"].values())
        best = max((c for c in r["cells"].values() if c["labelled"] == at), key=lambda c: c["judged"])
        worst = min(best["judged_per_class"])
        lines += [f"### {TITLES[r['world']]} on a re-pretrained galot-mini {r['model_sha256'][:12]} "
                  f"({path.name}: the world's params.yaml and seed, weights that differ from the table's; "
                  f"{r['t2i_steps']} steps, guidance {r['guidance']:g})", "", *world_table(r), "", *per_class_table(r, at),
                  f"Label-fidelity target at |L| = {at} (judged ≥ 95 %, no class below 85 %): "
                  + ("met" if best["judged"] >= 0.95 and worst >= 0.85 else "not met")
                  + f" — the best arm, {best['arm']}, is judged {pct(best['judged'])} %, its worst class "
                  f"{names[best['judged_per_class'].index(worst)]} {pct(worst)} %.", ""]
    return lines


def common_sizes(r: dict) -> list[int]:
    """The |L| at which every arm of the file was measured: arms are compared only there."""
    arms = {c["arm"] for c in r["cells"].values()}
    sizes = sorted({c["labelled"] for c in r["cells"].values()})
    return [n for n in sizes if all(f"{a}@{n}" in r["cells"] for a in arms)]


def missing_cells(r: dict) -> list[str]:
    """``arm@|L|`` cells another |L| has but this one lacks (a run that stopped before them)."""
    arms = sorted({c["arm"] for c in r["cells"].values()})
    sizes = sorted({c["labelled"] for c in r["cells"].values()})
    return [f"{a}@{n}" for n in sizes for a in arms if f"{a}@{n}" not in r["cells"]]


def chosen_arm(r: dict) -> str | None:
    """The arm with the best mean validation accuracy of real ∪ generated over the common |L|."""
    sizes = common_sizes(r)
    if not sizes:
        return None
    arms = sorted({c["arm"] for c in r["cells"].values()})
    return max(arms, key=lambda a: sum(r["cells"][f"{a}@{n}"]["with_real_val"] for n in sizes))


def world_table(r: dict) -> list[str]:
    lines = ["| |L| | arm | judged % | worst class % | FD (real floor) | diversity / real | CAS val % | CAS test % "
             "| real ∪ gen. val % | real ∪ gen. test % | fit s | fit UNet calls | fit loss start → end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = r["class_names"]
    for n in sorted({c["labelled"] for c in r["cells"].values()}):
        real = r["real_only"].get(str(n))
        if real:
            lines.append(f"| {n} | real only (AL) | | | | | | | {pct(real['val'])} | {pct(real['test'])} | | | |")
        for key, c in r["cells"].items():
            if c["labelled"] != n:
                continue
            worst = min(range(len(names)), key=lambda k: c["judged_per_class"][k])
            fit = (f"{c['fit_seconds']:.0f} | {c['fit_unet_calls']} | {c['loss_start']:.4f} → {c['loss_end']:.4f}"
                   if "fit_seconds" in c else "0 | 0 | –")
            lines.append(f"| {n} | {c['arm']} | {pct(c['judged'])} | {names[worst]} {pct(c['judged_per_class'][worst])} "
                         f"| {c['fd']:.2f} ({c['fd_real_floor']:.2f}) | {c['diversity_ratio']:.2f} | {pct(c['cas_val'])} "
                         f"| {pct(c['cas_test'])} | {pct(c['with_real_val'])} | {pct(c['with_real_test'])} | {fit} |")
    return lines


def per_class_table(r: dict, n: int) -> list[str]:
    cells = [c for c in r["cells"].values() if c["labelled"] == n]
    if not cells:
        return []
    names = r["class_names"]
    lines = [f"Judged % per class at |L| = {n}:", "", "| arm | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {c['arm']} | " + " | ".join(pct(v) for v in c["judged_per_class"]) + " |" for c in cells]
    return lines + [""]


def worst_classes(r: dict, k: int = 2) -> list[int]:
    """The k classes the pretrained generator gets wrong most often."""
    none = r["cells"]["none@20"]["judged_per_class"]
    return sorted(range(len(none)), key=lambda c: none[c])[:k]


def class_range(r: dict, c: int) -> str:
    fitted = [cell["judged_per_class"][c] for cell in r["cells"].values() if cell["arm"] != "none"]
    return (f"{r['class_names'][c]} {pct(r['cells']['none@20']['judged_per_class'][c])} % pretrained, "
            f"{pct(min(fitted))}–{pct(max(fitted))} % over the fitted cells")


def targets(results: dict[str, dict]) -> list[str]:
    out = []
    fashion = results.get("fashion")
    if fashion:
        at200 = [c for c in fashion["cells"].values() if c["labelled"] == 200]
        met = [c["arm"] for c in at200 if c["judged"] >= 0.95 and min(c["judged_per_class"]) >= 0.85]
        best = max(at200, key=lambda c: c["judged"], default=None)
        if best is not None:
            out.append("- **Fashion label fidelity at |L| = 200 (target: judged ≥ 95 %, no class below 85 %)**: "
                       + (f"met by {', '.join(met)}." if met else
                          f"not met; the best arm, {best['arm']}, is judged {pct(best['judged'])} % with its worst "
                          f"class at {pct(min(best['judged_per_class']))} %."))
        top = max(fashion["cells"].values(), key=lambda c: c["judged"])
        out.append(f"- **Fashion, best judged at any |L|**: {top['arm']} at |L| = {top['labelled']}, "
                   f"{pct(top['judged'])} % (worst class {pct(min(top['judged_per_class']))} %) against "
                   f"{pct(fashion['cells']['none@20']['judged'])} % for the pretrained generator; "
                   + "; ".join(class_range(fashion, k) for k in worst_classes(fashion)) + ".")
    for world, r in results.items():
        arm = chosen_arm(r)
        if arm is None:
            continue
        sizes = common_sizes(r)

        def mean(a: str, key: str) -> float:
            return sum(r["cells"][f"{a}@{n}"][key] for n in sizes) / len(sizes)

        out.append(f"- **{TITLES[world]}, chosen on validation**: {arm} (real ∪ generated, mean over |L| = "
                   f"{', '.join(map(str, sizes))}: validation {pct(mean(arm, 'with_real_val'))} % vs "
                   f"{pct(mean('none', 'with_real_val'))} % for the pretrained generator; test "
                   f"{pct(mean(arm, 'with_real_test'))} % vs {pct(mean('none', 'with_real_test'))} %).")
        if missing_cells(r):
            out.append(f"- **{TITLES[world]}, not measured**: {', '.join(missing_cells(r))} — the run stopped "
                       f"before them; `python -m benchmarks.studies.adaptation --world {world}` measures exactly these "
                       f"(it refuses if the galot-mini on disk is not {r['model_sha256']}).")
    return out + probe_lines()


def probe_lines() -> list[str]:
    """One-cycle probes of the adapted arms (benchmarks/probes/gal_probe.py) against GALOT basic and each other."""
    if not PROBE.exists():
        return []
    rows = [r for r in json.loads(PROBE.read_text()) if r["arm"] == "basic" or r["arm"].startswith("adapt_")]
    groups = {m: g for m, g in gal_probe.by_model(rows).items() if any(r["arm"] != "basic" for r in g)}
    out = []
    for model, g in groups.items():
        vs = gal_probe.versus_basic(g)
        seconds = {a: sum(r["seconds"] for r in g if r["arm"] == a) for a in {r["arm"] for r in g}}
        arms = "; ".join(f"{a} {100 * d:+.1f} ± {100 * se:.1f} pp ({verdict_2sem(d, se)}, "
                         f"{seconds[a] / seconds['basic']:.0f}× basic's time)" for a, (d, se, _, _) in vs.items())
        out.append(f"- **Fashion one-cycle probes (galot-mini {model}, validation, 5 trainings per cell, "
                   f"`python -m benchmarks.probes.gal_probe --world fashion --arms …`)**, vs GALOT basic averaged over "
                   f"|L| = {', '.join(map(str, sorted({r['budget'] for r in g})))}: {arms}.")
        pairs = [(a, f"{a}_textopt") for a in vs if f"{a}_textopt" in vs]
        for plain, opt in pairs:
            d = vs[opt][0] - vs[plain][0]
            se = (vs[opt][1] ** 2 + vs[plain][1] ** 2) ** 0.5
            out.append(f"- **The paper's claim around an adapted centre** ({opt} vs {plain}): {100 * d:+.1f} ± "
                       f"{100 * se:.1f} pp — {verdict_2sem(d, se)}.")
        if not any(verdict_2sem(d, se) == "better" for d, se, _, _ in vs.values()):
            out.append("- **Full runs (3 seeds)**: not started — the protocol runs the probes' best arms in full, "
                       "and no adapted arm beats GALOT basic on validation, so there is no candidate; "
                       "params.yaml keeps `gal.adapt: none`.")
    return out


def cost_estimate() -> list[str]:
    """A cycle's fit against its generation, in image-passes through the denoiser, at params.yaml's values."""
    steps, batch = 300, 32
    fit = steps * batch * BACKWARD_FACTOR
    rows = [("SD 1.5 / 2.1, SDXL, SD3 (25 steps, guidance: 2 passes per step)", 25, 2),
            ("FLUX.1-schnell, FLUX.2 klein distilled (4 steps, no guidance batch)", 4, 1)]
    lines = ["| model | generation of 200 images | a cycle's fit (300 steps × batch 32) | fit / generation |",
             "|---|---|---|---|"]
    for name, t, cfg in rows:
        gen = 200 * t * cfg
        lines.append(f"| {name} | {gen:,} | {fit:,} | {fit / gen:.1f}× |")
    return lines


def section(results: dict[str, dict] | None = None) -> list[str]:
    results = load() if results is None else results
    if not results:
        return []
    lines = ["## A generator that learns from the labels (gal.adapt, issue 28)", "",
             "`gal.adapt` fits the generator to the real images labelled so far, every cycle before TextOpt "
             "(galot_core/steps/adapt.py): `embedding` fits each class's prompt embedding s*_c by the denoising loss "
             "(inside 0.3·‖s*_c‖ of the template; TextOpt's ε-ball then sits on the fit), `lora` fits one peft LoRA on "
             "the denoiser's attention for all classes. Measured by `python -m benchmarks.studies.adaptation --world W` on the "
             "labelled sets the world's MarginSampling AL run bought (its first |L| labels), 100 images per class at "
             "ε = 0: judged = the fully-supervised judge agrees with the prompted class; FD in the judge's features "
             "beside the real floor; CAS = the study's classifier trained on the 1,000 generated images only; real ∪ "
             "gen. = trained on the |L| real ∪ |L| generated images, as a GALOT cycle does (mean of 3 training "
             "seeds). Validation = 1,000 pool images no labelled set contains (what the arm is chosen on); test = "
             "the world's test set. One fit per cell: a direction, not yet a verdict.", ""]
    results = {w: r for w, r in results.items() if r.get("cells")}
    for world, r in results.items():
        lines += [f"### {TITLES[world]} (galot-mini {r['model_sha256']}, {r['t2i_steps']} steps, guidance "
                  f"{r['guidance']:g}, {r['threads']} torch thread)", "", *world_table(r), "",
                  *per_class_table(r, max(c["labelled"] for c in r["cells"].values()))]
    lines += other_generators()
    lines += ["### What it says", "", *targets(results), ""]
    lines += ["### Cost on real checkpoints (an estimate, not a measurement)", "",
              "In image-passes through the denoiser (a forward and backward pass ≈ 3 forward passes); with "
              "B_GAL = |L| = 200 and params.yaml's fit. `benchmarks/perf/families.py` measures seconds per fit step "
              "and peak memory on a GPU when one is lent.", "", *cost_estimate(), "",
              "Memory (not measured here): the fit keeps the denoiser's weights frozen in their dtype and trains "
              "only the LoRA or the embedding, so it needs generation's footprint plus one backward pass's "
              "activations at batch `gal.adapt_batch` — the backward pass TextOpt already runs, which "
              "`t2i.gradient_checkpointing` shrinks the same way. For scale, diffusers' DreamBooth LoRA README for "
              "FLUX.1-dev says a rank-16 LoRA on all components can exceed 40 GB; on FLUX-sized models start with "
              "gradient checkpointing and a small `gal.adapt_batch`.", ""]
    return lines
