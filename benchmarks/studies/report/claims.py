"""docs/results.md's claims: each of the paper's claims against the embedded worlds' numbers, with its verdict."""

from __future__ import annotations

from benchmarks.common import Stat, md_table, prose, stat
from benchmarks.studies import study
from benchmarks.studies.study import TEMPLATES, TRANSFER_ARCHS
from benchmarks.studies.report.world import (BASIC, CHANCE, FULL, GAL_ONLY, GALOT, MARGIN, SIGMAS, Key, WorldResults,
                                             combine, diff, fmt, pp, results)


def pseudo_stat(data: dict, template: str, eps: float) -> Stat | None:
    return stat([r["accuracy"] for r in data["results"] if r["template"] == template and r["epsilon_relative"] == eps])


def template_key(i: int, t: str) -> Key:
    return GALOT if t == "a realistic photo of a {label}" else ("table3_templates", f"template_{i}")


def sigma_key(a: str) -> Key:
    """σ_AL = σ_GAL = ``a`` (the paper's Table 7 rows); margin is the default GALOT run."""
    return GALOT if a == "MarginSampling" else ("table7_sigma_al_x_gal", f"al_{a}_gal_{a}")


def core_claims(wr: WorldResults) -> list[list[str]]:
    """The claims both worlds test (a–d), plus the headroom they need: [claim, paper, result, verdict]."""
    name, best = wr.best_baseline(None)
    g = wr.acc(GALOT)
    rows = [["(a) GALOT beats the best AL baseline at every budget", "yes, at all 30 budgets of Table 1",
             *wr.per_budget(GALOT, None)],
            ["(a) … and on average", "+3.8 / +7.7 / +3.4 pp (CIFAR-10 / 100 / TinyImageNet)",
             f"GALOT {fmt(g)} vs {name} {fmt(best)}: {pp(diff(g, best))}", wr.verdict(diff(g, best))]]
    d = diff(g, wr.acc(BASIC))
    why = (" (why: [below](#why-textopt-adds-little-here-what-it-does-to-the-images))" if wr.world is study.MNIST else "")
    rows.append(["(b) GALOT beats GALOT basic (TextOpt helps), on average", "+2.2 pp (CIFAR-10)",
                 f"{pp(d)}; {wr.per_budget(GALOT, BASIC)[0]}{why}", wr.verdict(d)])
    s = wr.acc(GAL_ONLY)
    lo = min(filter(None, (wr.acc(GAL_ONLY, c) for c in wr.cycles())), key=lambda x: x.mean, default=None)
    rows.append(["(c) GAL only (zero real labels) beats chance (10%), on average", "58.6% (CIFAR-10)",
                 f"{fmt(s)}; lowest budget {fmt(lo)}", wr.verdict(diff(s, Stat(CHANCE, 0.0, 99)))])
    d = diff(g, wr.acc(MARGIN))
    rows.append(["(d) AL+GAL beats AL only (margin), on average", "yes (Fig. 3)",
                 f"{pp(d)}; {wr.per_budget(GALOT, MARGIN)[0]}", wr.verdict(d)])
    last = max(wr.cycles())
    d = diff(wr.acc(FULL), wr.acc(GALOT, last))
    rows.append(["headroom: GALOT at the last budget is below fully supervised (methods can still differ)", "yes",
                 f"fully supervised {fmt(wr.acc(FULL))} vs GALOT {fmt(wr.acc(GALOT, last))} at |L| = {last * wr.b_al()}: "
                 f"{pp(d)}", wr.verdict(d)])
    return rows


def side_by_side() -> list[str]:
    """The shared claims of both worlds in one table: where a world can tell methods apart."""
    out = {name: core_claims(results(name)) for name in study.WORLDS}
    rows = [[a[0], f"{a[2]} — **{a[3]}**", f"{b[2]} — **{b[3]}**"] for a, b in zip(out["mnist5k"], out["fashion"])]
    return ["## Both worlds, side by side", "",
            f"The claims both embedded worlds test, with their verdicts (rule below). mnist5k: {len(study.MNIST.seeds)} "
            f"seeds, 2,000-image pool; Fashion: {len(study.FASHION.seeds)} seeds, 5,000-image pool "
            "([its section](#the-fashion-world)).", "",
            *md_table(["claim", "mnist5k", "Fashion"], rows, 3)]


def claims(wr: WorldResults, data: dict | None) -> list[str]:
    g = wr.acc(GALOT)
    rows = core_claims(wr)[:-1]
    ds = {a: diff(wr.transfer_stat("galot", a), wr.transfer_stat("al_MarginSampling", a)) for a in TRANSFER_ARCHS[1:]}
    rows.append([f"(e) {', '.join(ds)} trained on the GALOT data beat the same architectures on the AL-only data "
                 "(final budget)", "all four beat the ResNet18 AL baselines on average",
                 "; ".join(f"{a} {pp(x)}" for a, x in ds.items()),
                 combine([wr.verdict(x) for x in ds.values()])])
    if data is None:
        rows.append(["(f) pseudo-label accuracy falls as ε grows", "yes (Fig. 4, Table 9)", "no data", "pending"])
    else:
        top = max(data["protocol"]["epsilons"])
        ds = {t: diff(pseudo_stat(data, t, 0.0), pseudo_stat(data, t, top)) for t in TEMPLATES}
        vs, ms = [wr.verdict(x) for x in ds.values()], [100 * x.mean for x in ds.values() if x]
        rows.append([f"(f) pseudo-label accuracy falls as ε grows (ε = 0 vs {top:g}·‖s*‖, every template)",
                     "yes (Fig. 4, Table 9)", f"lower by > 1 SEM for {vs.count('holds')} of {len(vs)} templates "
                     f"(by {min(ms):.1f} to {max(ms):.1f} pp)", combine(vs)])
        rows.append([f"(f) … \"{{label}}\" is the least robust template (lowest accuracy at ε = {top:g})",
                     "yes: 49% vs ≥ 74% at ε = 10 (Table 9)",
                     *wr.ranked('"{label}"', {f'"{t}"': pseudo_stat(data, t, top) for t in TEMPLATES}, lowest=True)])
    rows.append(['Table 3: "{label}" is the worst template for GALOT, on average', "yes: 75.2% vs ≥ 76.4%",
                 *wr.ranked('"{label}"', {f'"{t}"': wr.acc(template_key(i, t)) for i, t in enumerate(TEMPLATES)}, True)])
    d = diff(g, wr.acc(("table5_equal_iterations", "al_MarginSampling_2x_epochs")))
    rows.append(["Table 5: GALOT beats AL margin trained 2× as long, on average", "+4.8 pp (5 budgets)",
                 pp(d), wr.verdict(d)])
    f5 = {s[:-8].lower(): wr.acc(("fig5_sigma_gal", f"gal_{s}")) for s in ("RandomSampling", "EntropySampling")}
    f5 |= {"least confidence": wr.acc(("fig5_sigma_gal", "gal_LeastConfidence")), "margin": g}
    rows.append(["Fig. 5: σ_GAL = random is the best σ_GAL, on average", "yes, mainly in the last 3 cycles",
                 *wr.ranked("random", f5)])
    t7 = {a[:-8].lower(): wr.acc(sigma_key(a)) for a in SIGMAS}
    rows.append(["Table 7: σ_AL = σ_GAL = margin is the best pair, on average", "yes (of the 3 pairs listed)",
                 *wr.ranked("margin", t7)])
    tally = {k: sum(r[3].startswith(k) for r in rows) for k in ("holds", "does not hold", "pending")}
    return ["## Claims", "", prose("results/verdict_rule"), "", *md_table(["claim", "paper", "embedded world", "verdict"], rows, 4),
            f"**{tally['holds']} hold, {tally['does not hold']} do not hold, {tally['pending']} pending.** "
            "Accuracies in %, differences in percentage points (pp); \"on average\" is the mean over the "
            f"{len(wr.cycles())} budgets of each seed's curve.", ""]
