"""docs/results.md and its plots from the raw results of the study — nothing typed by hand.

    python -m benchmarks.studies.report

Reads benchmarks/results/study/ (written by ``benchmarks/studies/study.py``; when the study runs in
another checkout, copy its benchmarks/results/study/ here first) and
benchmarks/results/pseudo_labels.json (``benchmarks/studies/pseudo_labels.py``) and
benchmarks/results/textopt_effect.json (``benchmarks/studies/textopt_effect.py``); writes docs/results.md
and docs/results/*.png. Every number is mean ± SEM over seeds (paper App. A). A cell with
fewer seeds than planned says so, and a claim that needs such a cell is "pending", never decided.
"""

import matplotlib

matplotlib.use("Agg")  # before any module of the package imports pyplot
