"""docs/results.md's diagnosis of claim (b): what TextOpt does to the images (benchmarks/results/textopt_effect.json)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from benchmarks.common import Stat, md_table, prose, stat
from benchmarks.studies.report.world import BASIC, EFFECT, GALOT, Key, WorldResults, fmt, pp, save

KINDS = ("template", "optimised")  # images from s* / from TextOpt's s', as textopt_effect.py names them

STUDY_KEYS: dict[str, Key] = {"galot": GALOT, "eps_0.1": ("table4_epsilon", "eps_0.1"),
                              "eps_0.4": ("table4_epsilon", "eps_0.4"), "l2_step": ("step_rule", "l2_step")}


def informative(cycles_: list[dict], kind: str) -> int:
    """Images of ``kind`` (template / optimised) the judge accepts and the classifier still gets wrong."""
    return sum(x[kind]["classifier_errors_judged_correct"] for x in cycles_)


def wrong_labels(cycles_: list[dict], kind: str) -> int:
    return sum(round(x["images"] * (1 - x[kind]["judged_accuracy"])) for x in cycles_)


def change(runs: list[dict], field: str) -> Stat | None:
    """``field`` of the TextOpt images minus that of their template twins, averaged over each run's cycles."""
    return stat([sum(x["optimised"][field] - x["template"][field] for x in r["cycles"]) / len(r["cycles"])
                 for r in runs])


def cell(runs: list[dict], cycle: int, get) -> Stat | None:
    return stat([get(c) for r in runs for c in r["cycles"] if c["cycle"] == cycle])


def margin(s: Stat | None) -> str:
    """σ_GAL = margin objective = −(p₁ − p₂); shown as the margin itself."""
    return "pending" if s is None else f"{-s.mean:.3f}" + (f" ± {s.sem:.3f}" if s.n > 1 else f" ({s.n} seed)")


def table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A table for a template placeholder (no blank line after it: the template has it)."""
    return "\n".join(md_table(header, rows, text_columns)[:-1])


def per_cycle(wr: WorldResults, default: list[dict], cyc: list[int]) -> str:
    """The default runs, cycle by cycle: margins, judged and classifier agreement, informative images."""
    rows = [[str(c * wr.b_al()), margin(cell(default, c, lambda x: x["real_selected"]["sigma"])),
             margin(cell(default, c, lambda x: x["template"]["sigma"])),
             margin(cell(default, c, lambda x: x["optimised"]["sigma"])),
             fmt(cell(default, c, lambda x: x["template"]["judged_accuracy"])),
             fmt(cell(default, c, lambda x: x["optimised"]["judged_accuracy"])),
             fmt(cell(default, c, lambda x: x["template"]["classifier_accuracy"])),
             fmt(cell(default, c, lambda x: x["optimised"]["classifier_accuracy"])),
             " / ".join(str(informative([x for r in default for x in r["cycles"] if x["cycle"] == c], k))
                        for k in KINDS)]
            for c in cyc]
    return table(["|L|", "margin, real picked", "margin, s*", "margin, s'", "judged, s*", "judged, s'",
                  "classifier agrees, s*", "classifier agrees, s'", "informative and correct"], rows)


def per_setting(wr: WorldResults, by_setting: dict[tuple[float, str], list[dict]]) -> str:
    """One row per ε and step rule, over all cycles ≥ 2 of its runs."""
    summary = []
    for eps, rule in sorted(by_setting):
        runs = by_setting[eps, rule]
        sigma, judged = change(runs, "sigma"), change(runs, "judged_accuracy")  # margin change = −σ change
        xs = [x for r in runs for x in r["cycles"]]
        hard, wrong = [informative(xs, k) for k in KINDS], [wrong_labels(xs, k) for k in KINDS]
        key = STUDY_KEYS.get(runs[0]["run"].rsplit("-s", 1)[0])
        summary.append([f"{eps:g}", "sign (Eq. 5)" if rule == "sign" else "L2-normalised", str(len(runs)),
                        f"{-sigma.mean:+.3f}" + (f" ± {sigma.sem:.3f}" if sigma.n > 1 else ""), pp(judged),
                        f"{hard[0]} → {hard[1]}", f"{wrong[0]} → {wrong[1]}", str(sum(x["images"] for x in xs)),
                        fmt(wr.acc(key)) if key else "n/a"])
    return table(["ε (last cycle)", "step", "runs", "margin change", "judged accuracy change", "informative and correct",
                  "wrong pseudo-labels", "images", "test accuracy, average"], summary, 2)


def plot_margins(wr: WorldResults, default: list[dict], cyc: list[int]) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [c * wr.b_al() for c in cyc]
    for label, get, style in (("real images σ_AL picked", lambda x: x["real_selected"]["sigma"], "k-o"),
                              ("generated from s* (template)", lambda x: x["template"]["sigma"], "C0-s"),
                              ("generated from s' (TextOpt, ε → 0.2)", lambda x: x["optimised"]["sigma"], "C3-^")):
        ss = [cell(default, c, get) for c in cyc]
        ax.errorbar(xs, [-s.mean for s in ss], yerr=[0 if s.n < 2 else s.sem for s in ss], fmt=style, ms=4,
                    capsize=2, label=label)
    ax.set(xlabel="|L| (real labels)", ylabel="margin p₁ − p₂ of the previous cycle's classifier", ylim=(0, 1.02))
    return save(fig, ax, "textopt_effect.png", "What TextOpt optimises: the classifier's margin on the images")


def textopt_effect(wr: WorldResults, data: dict | None) -> list[str]:
    """The diagnosis of claim (b): what TextOpt did to the images of the study's runs (benchmarks/studies/textopt_effect.py)."""
    if data is None:
        return ["## Why TextOpt adds little here: what it does to the images", "",
                "Pending: run `OMP_NUM_THREADS=1 python -m benchmarks.studies.textopt_effect`.", ""]
    if any(r["strategy"] != "MarginSampling" for r in data["runs"]):
        raise SystemExit(f"{EFFECT}: this section reads margins; rerun textopt_effect.py on the margin runs only")
    by_setting: dict[tuple[float, str], list[dict]] = {}
    for r in data["runs"]:
        by_setting.setdefault((r["epsilon_last_cycle"], r.get("step_rule", "sign")), []).append(r)
    default = by_setting.get((0.2, "sign"), [])
    cyc = sorted({c["cycle"] for r in default for c in r["cycles"]})
    last = max(cyc, default=0)

    def at_last(kind: str) -> str:
        return margin(cell(default, last, lambda x: x[kind]["sigma"]))

    reading = (f"The real images margin sampling picks sit at a margin of {at_last('real_selected')} in the last "
               f"cycle; the generated images at {at_last('template')} from s* and {at_last('optimised')} after "
               "TextOpt. " if last else "") + conclusion(default)
    return [prose("results/textopt_effect", minutes=f"{data['wall_seconds'] / 60:.0f}",
                  threads=data["protocol"]["threads"], plot=plot_margins(wr, default, cyc),
                  per_cycle=per_cycle(wr, default, cyc), per_setting=per_setting(wr, by_setting),
                  basic=fmt(wr.acc(BASIC)), reading=reading), ""]


def conclusion(runs: list[dict]) -> str:
    """The reading of the numbers above, stated only when the numbers support it."""
    xs = [x for r in runs for x in r["cycles"]]
    if not xs:
        return ""
    agree = sum(x["template"]["classifier_accuracy"] * x["images"] for x in xs) / sum(x["images"] for x in xs)
    hard, wrong = [informative(xs, k) for k in KINDS], [wrong_labels(xs, k) for k in KINDS]
    text = (f"Over cycles ≥ 2 of the default runs the classifier already gives {100 * agree:.1f}% of the template "
            f"images their prompted class; TextOpt turns {hard[0]} informative, correctly labelled images into "
            f"{hard[1]}, and {wrong[0]} wrong pseudo-labels into {wrong[1]}.")
    if agree >= 0.95 and wrong[1] - wrong[0] > hard[1] - hard[0]:
        text += (" So inside the ε-ball that keeps pseudo-labels right there is little left for the classifier to "
                 "learn, and most of what TextOpt buys in margin is paid for with wrong labels.")
    return text
