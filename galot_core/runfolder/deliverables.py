"""What the run-level files must hold: the copies a finished cycle leaves at the top of the run folder.

``metrics.json``, ``summary.json`` (and ``accuracy.csv``, ``classifier.safetensors``) are
derived from the cycle folders by ``write_summary`` after each cycle; ``code.json`` records
the code that started the run; ``transfer/<arch>/metrics.json`` a transfer's result. Being
at the top, they are what people, DVC and ``galot report``/``predict`` read, so a tampered or
truncated one must not be shown as a result: each is checked for types and ranges
(accuracies in [0, 1], finite numbers, counts >= 0) and against the cycles on disk (a row per
complete cycle, each equal to that cycle's own metrics).

One state is not damage: a run killed after a cycle's metrics and before its summary has
run-level files one cycle behind. That is :class:`BehindCycles`, whose message says how to
finish it (rerun ``galot run``, which rewrites them from the cycle folders).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from galot_core.errors import GalotError, show
from galot_core.runfolder.checks import _SHA256, _is_int, bad_file, check_metrics

_FIX = "delete it and rerun `galot run`, which writes it again from the cycle folders"
# The fields of a cycle's metrics that the run-level copy must repeat exactly.
COMPARED = ("cycle", "labelled", "generated", "epsilon", "test_accuracy", "judged_accuracy", "files")


class BehindCycles(GalotError):
    """The run-level files lag the cycle folders: the run stopped between a cycle's metrics and its summary."""


def behind(path: Path, listed: int | None, complete: int) -> BehindCycles:
    """``path`` lists ``listed`` cycles (None: it is missing) while ``complete`` have their metrics."""
    what = "is missing" if listed is None else f"lists {listed} of the {complete} complete cycles"
    return BehindCycles(f"{path}: {what} (the run stopped after cycle {complete}'s metrics, before its summary); "
                        f"rerun `galot run` to finish cycle {complete}")


def _fraction(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1)


def check_run_metrics(d: Any, path: Path, cycles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run-level metrics.json: one valid row per complete cycle, in order, each equal to ``cycles``' own."""
    if not isinstance(d, list):
        raise bad_file(path, "the file", "must be a JSON list (one row per complete cycle)", _FIX)
    for k, row in enumerate(d):
        try:
            check_metrics(row, path, k + 1)
        except GalotError as e:
            raise GalotError(str(e).replace(f"{path}: ", f"{path}: row {k + 1}: ", 1)) from None
        if k >= len(cycles):
            raise bad_file(path, f"row {k + 1}", f"names cycle {k + 1}, but only {len(cycles)} cycles are complete "
                           "on disk (cycles/cycle_NNN/metrics.json)", _FIX)
        differ = [f for f in COMPARED if row.get(f) != cycles[k].get(f)]
        if differ:
            raise bad_file(path, f"row {k + 1}", f"disagrees with cycles/cycle_{k + 1:03d}/metrics.json on "
                           f"'{differ[0]}'", _FIX)
    if len(d) < len(cycles):
        raise behind(path, len(d), len(cycles))
    return d


def check_summary(d: Any, path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json (DVC's metrics file): counts and accuracies of the last complete cycle."""
    if not isinstance(d, dict):
        raise bad_file(path, "the file", "must be a JSON object (the run's summary)", _FIX)
    n = d.get("cycles")
    if not _is_int(n) or n < 1:
        raise bad_file(path, "'cycles'", f"must be a cycle count (an integer >= 1), got {show(n)}", _FIX)
    for key in ("labelled", "generated"):
        if not _is_int(d.get(key)) or d[key] < 0:
            raise bad_file(path, f"'{key}'", f"must be a count (an integer >= 0), got {show(d.get(key))}", _FIX)
    for key in ("final_test_accuracy", "mean_test_accuracy"):
        if not _fraction(d.get(key)):
            raise bad_file(path, f"'{key}'", f"must be an accuracy in [0, 1] or null, got {show(d.get(key))}", _FIX)
    if n > len(rows):
        raise bad_file(path, "'cycles'", f"is {n}, but only {len(rows)} cycles are complete on disk", _FIX)
    if n < len(rows):
        raise behind(path, n, len(rows))
    last = rows[-1]
    for key, mine in (("labelled", "labelled"), ("generated", "generated"), ("final_test_accuracy", "test_accuracy")):
        if d[key] != last[mine]:
            raise bad_file(path, f"'{key}'", f"is {show(d[key])}, but cycle {n} recorded {show(last[mine])}", _FIX)
    return d


def check_code(d: Any, path: Path) -> str:
    """code.json: the SHA-256 of the galot code that started the run."""
    if not isinstance(d, dict) or not isinstance(d.get("sha256"), str) or not _SHA256.fullmatch(d["sha256"]):
        raise bad_file(path, "'sha256'", "must be the SHA-256 hex digest of the code that started the run",
                       "delete it (the next `galot run` records the code running then)")
    return d["sha256"]


def check_transfer(d: Any, path: Path, arch: str) -> dict[str, Any]:
    """transfer/<arch>/metrics.json: what ``galot transfer`` measured for one architecture."""
    fix = f"delete it and rerun `galot transfer --arch {arch}`"
    if not isinstance(d, dict):
        raise bad_file(path, "the file", "must be a JSON object (one transfer's result)", fix)
    if d.get("arch") != arch:
        raise bad_file(path, "'arch'", f"must be {arch!r} (its folder's name), got {show(d.get('arch'))}", fix)
    if not _fraction(d.get("test_accuracy")):
        raise bad_file(path, "'test_accuracy'", f"must be an accuracy in [0, 1] or null, got "
                       f"{show(d.get('test_accuracy'))}", fix)
    for key in ("real", "generated"):
        if not _is_int(d.get(key)) or d[key] < 0:
            raise bad_file(path, f"'{key}'", f"must be a count (an integer >= 0), got {show(d.get(key))}", fix)
    s = d.get("seconds")
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s < 0:
        raise bad_file(path, "'seconds'", f"must be a finite number >= 0, got {show(s)}", fix)
    return d
