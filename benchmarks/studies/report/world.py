"""One world's study results, read from benchmarks/results/study*/: the cells, their statistics and verdicts.

A ``WorldResults`` is bound to one world (mnist5k or Fashion) and reads each cell's seed files
once; every section of docs/results.md takes the one it reports on (``results(name)``).
"""

from __future__ import annotations

import functools
import json

import matplotlib.pyplot as plt

from benchmarks.common import DOCS, RESULTS, Stat, md_table, stat
from benchmarks.studies import study

DOC = DOCS / "results.md"
FIGS = DOCS / "results"
PSEUDO = RESULTS / "pseudo_labels.json"
EFFECT = RESULTS / "textopt_effect.json"
Key = tuple[str, str]
GALOT, BASIC, MARGIN = ("table1", "galot"), ("table1", "galot_basic"), ("table1", "al_MarginSampling")
GAL_ONLY, FULL = ("fig3", "gal_only"), ("fig3", "fully_supervised")
HARD = ("issue15", "hard_select4")
GAL_PLAIN, GAL_DIVERSE = ("issue15_gal_only", "gal_only"), ("issue15_gal_only", "gal_only_diverse")
FULL_BASIC = ("issue15_full", "basic")
# Issue 15's full runs on mnist5k (study.py group issue15_full, seeds 0-2): cell -> what it is.
FULL_RUNS = {"basic": "GALOT basic (ε = 0)", "paper": "GALOT (the paper's TextOpt)",
             "ball": "TextOpt, steps sized to the ball (`gal.step_scale: ball`)",
             "dc": "basic + Diffusion Classifier label check (`gal.label_check: diffusion`)",
             "diverse": "basic + per-image offsets (`gal.diversity: 0.4`)"}
FULL_SEEDS = (0, 1, 2)
POOL = {"mnist5k": "2,000", "fashion": "5,000"}
SIGMAS = ("RandomSampling", "EntropySampling", "MarginSampling")
CHANCE = 0.10


def diff(a: Stat | None, b: Stat | None) -> Stat | None:
    return a - b if a and b else None


def fmt(s: Stat | None, signed: bool = False) -> str:
    """Percent (percentage points if signed), with the seed count when short of the plan."""
    if s is None:
        return "pending"
    m = f"{100 * s.mean:+.1f}" if signed else f"{100 * s.mean:.1f}"
    return f"{m} ± {100 * s.sem:.1f}" if s.n > 1 else f"{m} ({s.n} seed)"


def pp(d: Stat | None) -> str:
    return f"{fmt(d, True)} pp" if d else "pending"


def combine(verdicts: list[str]) -> str:
    """One verdict for a claim made of several comparisons: all must hold."""
    pending = [v for v in verdicts if v.startswith("pending")]
    return pending[0] if pending else "holds" if all(v == "holds" for v in verdicts) else "does not hold"


def save(fig: plt.Figure, ax: plt.Axes, name: str, title: str) -> str:
    """Write the plot to docs/results/``name``; its Markdown image link."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGS / name, dpi=110)
    plt.close(fig)
    return f"![{title}](results/{name})"


@functools.cache
def results(name: str) -> WorldResults:
    """The results of world ``name`` (one reader per world, so each seed file is read once)."""
    return WorldResults(study.WORLDS[name])


class WorldResults:
    def __init__(self, world: study.World):
        self.world = world
        self.al_keys: list[Key] = [("table1", n) for n in world.experiments["table1"] if n.startswith("al_")]
        self._runs: dict[Key, list[dict]] = {}

    def load(self, key: Key) -> list[dict]:
        if key not in self._runs:
            folder = self.world.results / key[0] / key[1]
            self._runs[key] = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
        return self._runs[key]

    def acc(self, key: Key, cycle: int | None = None, field: str = "test_accuracy") -> Stat | None:
        """``field`` at one cycle, or (cycle None) averaged over each run's cycles, as a Stat over seeds."""
        vals = []
        for run in self.load(key):
            rows = [r[field] for r in run["cycles"] if cycle in (None, r["cycle"]) and r[field] is not None]
            vals += [sum(rows) / len(rows)] if rows else []
        return stat(vals)

    def cycles(self) -> list[int]:
        return sorted({r["cycle"] for k in [*self.al_keys, GALOT] for run in self.load(k) for r in run["cycles"]}) \
            or [*range(1, 11)]

    def b_al(self) -> int:
        return next((run["cycles"][0]["labelled"] for run in self.load(MARGIN)), 20)

    def run_total(self, key: Key, field: str) -> Stat | None:
        """A per-step dict of every cycle (seconds, UNet calls) summed over each run, as a Stat over seeds."""
        return stat([sum(sum((r.get(field) or {}).values()) for r in run["cycles"]) for run in self.load(key)])

    def transfer_stat(self, source: str, arch: str) -> Stat | None:
        folder = self.world.results / "table2_transfer" / f"{source}_{arch}"
        return stat([json.loads(p.read_text())["test_accuracy"] for p in sorted(folder.glob("seed*.json"))])

    # ----------------------------------------------------------------------- verdicts

    def verdict(self, d: Stat | None) -> str:
        seeds = len(self.world.seeds)
        if d is None or d.n < seeds:
            return f"pending ({0 if d is None else d.n} of {seeds} seeds)"
        if d.mean > 0 and d.mean > d.sem:
            return "holds"
        return "does not hold (within 1 SEM)" if d.mean > 0 else "does not hold"

    def best_baseline(self, cycle: int | None) -> tuple[str, Stat | None]:
        """The AL strategy with the highest mean at this budget (or on average); its n is the fewest seeds of any."""
        stats = {k[1].removeprefix("al_"): self.acc(k, cycle) for k in self.al_keys}
        known = {k: s for k, s in stats.items() if s}
        if not known:
            return "–", None
        name = max(known, key=lambda k: known[k].mean)
        n = min(s.n if s else 0 for s in stats.values())
        return name, Stat(known[name].mean, known[name].sem, n)

    def per_budget(self, a: Key, b: Key | None) -> tuple[str, str]:
        """'higher at k of N budgets, by > 1 SEM at m' and the every-budget verdict (b None: the best AL baseline)."""
        seeds = len(self.world.seeds)
        ds = [diff(self.acc(a, c), self.acc(b, c) if b else self.best_baseline(c)[1]) for c in self.cycles()]
        done = [d for d in ds if d]
        text = f"higher at {sum(d.mean > 0 for d in done)} of {len(ds)} budgets"
        if len(done) < len(ds) or any(d.n < seeds for d in done):
            return text + " (SEM test pending)", f"pending ({min([d.n for d in done] or [0])} of {seeds} seeds)"
        vs = [self.verdict(d) for d in done]
        return text + f", by > 1 SEM at {vs.count('holds')}", "holds" if vs.count("holds") == len(vs) else \
            "does not hold"

    def ranked(self, target: str, stats: dict[str, Stat | None], lowest: bool = False) -> tuple[str, str]:
        """Claim "target is the best (lowest: the worst) of stats"."""
        missing, known = sum(v is None for v in stats.values()), {k: v for k, v in stats.items() if v}
        pending = f"pending ({missing} of {len(stats)} cells have no result)"
        if target not in known:
            return "pending", pending
        sign = -1 if lowest else 1
        order = sorted(known, key=lambda k: sign * known[k].mean, reverse=True)
        t = known[target]
        text = f"{target} {fmt(t)}: rank {order.index(target) + 1} of {len(known)}" + (
            " with results" if missing else "")
        text += "" if order[0] == target else f"; {'lowest' if lowest else 'highest'}: {order[0]} {fmt(known[order[0]])}"
        ds = [Stat(sign * d.mean, d.sem, d.n) for k, o in known.items() if k != target and (d := t - o)]
        return text, pending if missing else combine([self.verdict(d) for d in ds])

    # ----------------------------------------------------------------------- tables and plots

    def curve_table(self, rows: list[tuple[str, Key]]) -> list[str]:
        cycles = self.cycles()
        return md_table(["method", *(f"{c * self.b_al()}" for c in cycles), "average"],
                        [[label, *(fmt(self.acc(k, c)) for c in cycles), fmt(self.acc(k))] for label, k in rows])

    def plot_curves(self, name: str, rows: list[tuple[str, Key]], title: str,
                    hlines: tuple[tuple[str, Stat | None], ...] = (), grey: tuple[Key, ...] = ()) -> str:
        """Accuracy vs |L| with SEM bars; colours fixed by row, so a curve keeps its colour as results land."""
        fig, ax = plt.subplots(figsize=(7, 4.5))
        b = self.b_al()
        for k in grey:
            if pts := [(c * b, s.mean) for c in self.cycles() if (s := self.acc(k, c))]:
                ax.plot(*zip(*pts), color="0.75", lw=1, label="other AL strategies" if k == grey[0] else None)
        for i, (label, k) in enumerate(rows):
            if pts := [(c * b, s) for c in self.cycles() if (s := self.acc(k, c))]:
                n = min(s.n for _, s in pts)
                ax.errorbar([x for x, _ in pts], [s.mean for _, s in pts],
                            yerr=[0 if s.n < 2 else s.sem for _, s in pts], color=f"C{i}", marker="o", ms=3,
                            capsize=2, label=label + ("" if n >= len(self.world.seeds) else f" ({n} seed)"))
        for i, (label, s) in enumerate(hlines):
            if s:
                ax.axhline(s.mean, ls="--", color=f"C{len(rows) + i}", label=f"{label} ({100 * s.mean:.1f}%)")
        ax.set(xlabel="real labels |L|", ylabel="test accuracy")
        return save(fig, ax, name, title)
