"""Writes docs/results.md and docs/results/*.png (``python -m benchmarks.studies.report``); see the package's docstring."""

from __future__ import annotations

import argparse
import json

from benchmarks.studies import adaptation_report
from benchmarks.studies.report.claims import claims, side_by_side
from benchmarks.studies.report.issue15 import (fashion, full_runs, gal_only_diversity, issue15_verdict, refactor_identity,
                                               variants)
from benchmarks.studies.report.sections import ablations, cost, fig3, fig4, header, table1, table2
from benchmarks.studies.report.textopt import textopt_effect
from benchmarks.studies.report.world import DOC, EFFECT, FIGS, PSEUDO, results


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.studies.report",
                            description="docs/results.md and its plots from the raw results of the study").parse_args(argv)
    FIGS.mkdir(parents=True, exist_ok=True)
    data = json.loads(PSEUDO.read_text()) if PSEUDO.exists() else None
    effect = json.loads(EFFECT.read_text()) if EFFECT.exists() else None
    wr = results("mnist5k")
    lines = [*header(wr), *side_by_side(), *claims(wr, data), *table1(wr), *fig3(wr), *table2(wr), *fig4(wr, data),
             *textopt_effect(wr, effect), *ablations(wr), *cost(wr), *issue15_verdict(wr), *gal_only_diversity(wr),
             *full_runs(wr), *fashion(), *variants(), *adaptation_report.section(), *refactor_identity()]
    DOC.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {DOC} and {len(list(FIGS.glob('*.png')))} plots in {FIGS}")
