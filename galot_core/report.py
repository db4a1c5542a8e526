"""The experiment report: GALOT against its AL baselines, transfers, and what was generated.

``galot report`` (and the DVC stage ``report``) reads only finished results from the run
folders — the experiment's ``metrics.json``, each AL baseline's
and each transfer's — and writes ``runs/<name>/report/``: ``report.md``, the
accuracy-vs-budget plot ``accuracy.png``, sample grids, and the same curves as CSV for
``dvc plots show`` (``curves/galot.csv``: budget, GALOT; ``curves/baselines.csv``: budget and
one column per ``baselines.strategies`` entry), which dvc.yaml's top-level plot draws on one
pair of axes. Nothing is typed by hand, so
rerunning it after more cycles or baselines brings the report up to date.

Baselines live in ``<runs_dir>/<name>-baselines/<strategy>/``.
Budgets are compared at equal *real-label* budget, cycle × B_AL, the x axis of the
paper's figures; a GAL-only run (zero labels) is plotted at the budget its cycle stands
for, as in the paper's Figure 3.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galot_core.config import Config
from galot_core.experiment import baseline_config
from galot_core.io import atomic_write_text
from galot_core.runfolder import RunFolder


@dataclass
class Curve:
    name: str
    rows: list[dict[str, Any]]

    def at(self, cycle: int) -> float | None:
        return next((r["test_accuracy"] for r in self.rows if r["cycle"] == cycle), None)


def _read_curve(name: str, run_dir: Path) -> Curve | None:
    """A run's complete cycles, once its run-level files agree with them (RunFolder.finished_rows):
    a forged accuracy, an extra cycle or a truncated file is one line naming the file, never a plot."""
    folder = RunFolder(run_dir)
    if not folder.run_metrics_path.exists() and not folder.completed_cycles():
        return None
    return Curve(name, folder.finished_rows())


def collect(cfg: Config) -> tuple[Curve | None, list[Curve], list[dict[str, Any]]]:
    """The experiment's curve, its baselines' curves (those that exist) and transfer results."""
    main = _read_curve(f"GALOT ({cfg.experiment.mode})" if cfg.experiment.mode != "al" else cfg.experiment.name,
                       cfg.run_dir)
    baselines = [c for s in cfg.baselines.strategies
                 if (c := _read_curve(f"AL {s}", baseline_config(cfg, s).run_dir)) is not None]
    folder = RunFolder(cfg.run_dir)
    transfers = [t for a in cfg.transfer.archs if (t := folder.read_transfer_metrics(a)) is not None]
    return main, baselines, transfers


def comparison_rows(cfg: Config, main: Curve, baselines: list[Curve]) -> list[dict[str, Any]]:
    """Per cycle: budget, GALOT, each baseline, best baseline and GALOT − best."""
    rows = []
    for r in main.rows:
        c = r["cycle"]
        row: dict[str, Any] = {"cycle": c, "budget": c * cfg.al.budget_per_cycle, "galot": r["test_accuracy"]}
        accs = {b.name: b.at(c) for b in baselines}
        row.update(accs)
        known = [v for v in accs.values() if v is not None]
        row["best_baseline"] = max(known) if known else None
        row["improvement"] = (r["test_accuracy"] - row["best_baseline"]
                              if known and r["test_accuracy"] is not None else None)
        rows.append(row)
    return rows


def _fmt(v: float | None, digits: int = 4, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def write_curves(cfg: Config, main: Curve, baselines: list[Curve], out: Path) -> None:
    """The accuracy-vs-budget curves as two CSVs (columns named as dvc.yaml's top-level plot expects;
    a baseline that has not run yet is an empty column)."""
    budgets = [r["cycle"] for r in main.rows]
    by_name = {b.name: b for b in baselines}

    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.6f}"

    galot = ["budget,GALOT"] + [f"{c * cfg.al.budget_per_cycle},{cell(main.at(c))}" for c in budgets]
    strategies = list(cfg.baselines.strategies)
    base = ["budget," + ",".join(strategies)]
    base += [f"{c * cfg.al.budget_per_cycle}," + ",".join(cell(by_name[f"AL {s}"].at(c)) if f"AL {s}" in by_name
                                                          else "" for s in strategies) for c in budgets]
    atomic_write_text(out / "curves" / "galot.csv", "\n".join(galot) + "\n")
    atomic_write_text(out / "curves" / "baselines.csv", "\n".join(base) + "\n")


def plot_accuracy(cfg: Config, curves: list[Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, c in enumerate(curves):
        rows = [r for r in c.rows if r["test_accuracy"] is not None]  # None: no labelled test set
        xs = [r["cycle"] * cfg.al.budget_per_cycle for r in rows]
        ax.plot(xs, [r["test_accuracy"] for r in rows], marker="o", ms=3, lw=2.2 if i == 0 else 1.2, label=c.name)
    ax.set_xlabel(f"real-label budget (cycle × B_AL = {cfg.al.budget_per_cycle})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{cfg.experiment.name} on {cfg.data.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_report(cfg: Config) -> tuple[Path, str]:
    """Write ``runs/<name>/report/``; returns the markdown path and a plain-text table for the terminal."""
    from galot_core.errors import GalotError

    main, baselines, transfers = collect(cfg)
    if main is None or not main.rows:
        raise GalotError(f"experiment.name: '{cfg.experiment.name}' has no completed cycle in {cfg.run_dir}; "
                         "run `galot run` (or `galot cycle`) first")
    out = cfg.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(cfg, [main, *baselines], out / "accuracy.png")
    write_curves(cfg, main, baselines, out)
    rows = comparison_rows(cfg, main, baselines)
    names = [b.name for b in baselines]
    md = _accuracy_section(cfg, main, baselines, rows, names)
    md += _judged_section(main) + _transfers_section(transfers) + _cost_section(main) + _samples_section(cfg, main, out)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path, _terminal_table(rows, names)


def _accuracy_section(cfg: Config, main: Curve, baselines: list[Curve], rows: list[dict],
                      names: list[str]) -> list[str]:
    """The report's title, settings line, plot and test-accuracy table (one row per cycle, then the means)."""
    md = [f"# galot report: {cfg.experiment.name}", "",
          f"Dataset `{cfg.data.dataset}`, mode `{cfg.experiment.mode}`, {len(main.rows)} of {cfg.experiment.cycles} "
          f"cycles, B_AL = {cfg.al.budget_per_cycle} per cycle, σ_AL = {cfg.al.strategy}, σ_GAL = {cfg.gal.strategy}, "
          f"ε = {cfg.gal.epsilon}{' ·‖s*‖' if cfg.gal.epsilon_relative else ''}, classifier `{cfg.model.arch}`, "
          f"T2I `{cfg.t2i.model}`. Generated by `galot report` from the run folders; seed {cfg.experiment.seed}, "
          "one run per curve.", "", "![accuracy vs budget](accuracy.png)", "",
          "## Test accuracy by budget", "",
          "| cycle | budget | GALOT | " + " | ".join(names) + " | best baseline | GALOT − best |",
          "|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|"]
    for r in rows:
        md.append(f"| {r['cycle']} | {r['budget']} | {_fmt(r['galot'])} | "
                  + " | ".join(_fmt(r.get(n)) for n in names)
                  + f" | {_fmt(r['best_baseline'])} | {_fmt(r['improvement'], signed=True)} |")
    known = [r["galot"] for r in rows if r["galot"] is not None]  # None: no labelled test set
    galot_mean = sum(known) / len(known) if len(known) == len(rows) else None
    means = [sum(b.at(r["cycle"]) or 0 for r in rows) / len(rows) if all(b.at(r["cycle"]) is not None for r in rows)
             else None for b in baselines]
    md.append(f"| mean | | {_fmt(galot_mean)} | " + " | ".join(_fmt(m) for m in means) + " | | |")
    return md


def _judged_section(main: Curve) -> list[str]:
    """Pseudo-label accuracy per cycle, where the judge classifier scored the generated images."""
    judged = [(r["cycle"], r["judged_accuracy"]) for r in main.rows if r.get("judged_accuracy") is not None]
    if not judged:
        return []
    md = ["", "## Pseudo-label accuracy", "",
          "Share of each cycle's generated images that the fully-supervised judge classifier puts in the class "
          "they were prompted with (the offline stand-in for the paper's human check, §4.4).", "",
          "| cycle | ε | judged accuracy |", "|---:|---:|---:|"]
    eps = {r["cycle"]: r["epsilon"] for r in main.rows}
    return md + [f"| {c} | {eps[c]:.3f} | {a:.3f} |" for c, a in judged]


def _transfers_section(transfers: list[dict]) -> list[str]:
    """Accuracy of other architectures trained on the cached dataset, when any were run."""
    if not transfers:
        return []
    md = ["", "## Other architectures on the cached dataset", "",
          "Trained on the experiment's final real selections and synthetic set, without generating again "
          "(0 UNet calls).", "", "| architecture | real | generated | test accuracy | seconds |",
          "|---|---:|---:|---:|---:|"]
    return md + [f"| {t['arch']} | {t['real']} | {t['generated']} | {_fmt(t['test_accuracy'])} | {t['seconds']:.0f} |"
                 for t in transfers]


def _cost_section(main: Curve) -> list[str]:
    """Seconds per stage and UNet calls per cycle, when the cycles recorded them."""
    seconds = [r.get("seconds", {}) for r in main.rows]
    stages = sorted({k for s in seconds for k in s})
    if not stages:
        return []
    md = ["", "## Cost per cycle (seconds)", "", "| cycle | " + " | ".join(stages) + " | UNet calls |",
          "|---:|" + "---:|" * (len(stages) + 1)]
    return md + [f"| {r['cycle']} | " + " | ".join(f"{r['seconds'].get(k, 0):.1f}" for k in stages)
                 + f" | {sum((r.get('unet_calls') or {}).values())} |" for r in main.rows]


def _samples_section(cfg: Config, main: Curve, out: Path) -> list[str]:
    """Copies the sample grids of the first, middle and last cycle into ``out`` and links them."""
    grids, folder = [], RunFolder(cfg.run_dir)
    shown = {main.rows[0]["cycle"], main.rows[len(main.rows) // 2]["cycle"], main.rows[-1]["cycle"]}
    for r in main.rows:
        src = folder.grid_path(r["cycle"])
        # report/ is made for sharing: a grid that links outside the run folder is never copied into it.
        if src.exists() and folder.contains(src) and r["cycle"] in shown:
            shutil.copyfile(src, out / f"grid_cycle_{r['cycle']:03d}.png")
            grids.append(r["cycle"])
    if not grids:
        return []
    md = ["", "## Samples", ""]
    for c in grids:
        what = "generated images, a row per class" if cfg.experiment.mode != "al" else "real images selected"
        md += [f"Cycle {c} ({what}):", "", f"![cycle {c}](grid_cycle_{c:03d}.png)", ""]
    return md


def _terminal_table(rows: list[dict], names: list[str]) -> str:
    """The plain-text comparison table that ``galot report`` prints."""
    head = f"{'cycle':>5}  {'budget':>6}  {'GALOT':>7}  {'best AL':>7}  {'diff':>7}  best baseline"
    text = [head, "-" * len(head)]
    for r in rows:
        best_name = max(names, key=lambda n: r.get(n) or -1) if names else "–"
        text.append(f"{r['cycle']:>5}  {r['budget']:>6}  {_fmt(r['galot']):>7}  {_fmt(r['best_baseline']):>7}  "
                    f"{_fmt(r['improvement'], signed=True):>7}  {best_name if r['best_baseline'] is not None else '–'}")
    return "\n".join(text)
