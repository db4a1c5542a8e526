"""What every benchmark shares: paths, timing, statistics (mean, SEM, the 2-SEM verdict), tables, templates.

Run a benchmark as a module from the checkout's root (``python -m benchmarks.studies.report``);
nothing here touches ``sys.path``.
"""

from __future__ import annotations

import json
import math
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # raw results, committed
RUNS = ROOT / "benchmarks" / "runs"  # run folders, not committed
DOCS = ROOT / "docs"
TEMPLATES = Path(__file__).resolve().parent / "templates"
WORLD_DIRS = {"mnist5k": ROOT, "fashion": ROOT / "worlds" / "fashion"}  # each world's params.yaml folder


# --------------------------------------------------------------------------- raw results and templates


def load_json(path: Path, default: Any = None) -> Any:
    """A raw-result file, or ``default`` when it does not exist (yet)."""
    return json.loads(path.read_text()) if path.exists() else default


def unwrap(text: str) -> str:
    """A template's text as the doc's lines: a paragraph wrapped over several lines becomes one line.

    Blank lines stay; a line that starts a Markdown block ("- ", "|", "#", "![", "```") starts a new line,
    and a heading, image, fence or table line is never continued."""
    out: list[str] = []
    for line in text.rstrip("\n").split("\n"):
        starts_block = not line or line.startswith(("- ", "|", "#", "![", "```"))
        if out and out[-1] and not starts_block and not out[-1].startswith(("#", "![", "```", "|")):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def prose(name: str, **fields: Any) -> str:
    """benchmarks/templates/<name>.md unwrapped and filled in (``$field``; ``$$`` is a dollar sign).

    The result has no final newline: the report code joins the doc's lines."""
    return string.Template(unwrap((TEMPLATES / f"{name}.md").read_text())).substitute(fields)


# --------------------------------------------------------------------------- timing


def sync(device: Any = None) -> None:
    """Wait for queued GPU work: CUDA calls return before the kernels finish."""
    import torch

    if device is not None and getattr(device, "type", device) != "cuda":
        return
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = None) -> tuple[Any, float]:
    """``fn()``'s result and its wall seconds, GPU work included."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def repeat_timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``."""
    return [timed(fn)[1] for _ in range(repeats)]


# --------------------------------------------------------------------------- statistics


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def sem(values: list[float]) -> float:
    """Standard error of the mean (sample sd / √n); nan with fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def mean_sem(values: list[float]) -> tuple[float, float]:
    return sum(values) / len(values), sem(values)


@dataclass
class Stat:
    """A mean over seeds with its SEM (nan with one seed) and how many seeds it has."""
    mean: float
    sem: float
    n: int

    def __sub__(self, other: Stat) -> Stat:
        return Stat(self.mean - other.mean, math.hypot(self.sem, other.sem), min(self.n, other.n))


def stat(values: list[float]) -> Stat | None:
    return Stat(*mean_sem(values), len(values)) if values else None


def verdict_2sem(d: float, se: float) -> str:
    """A difference ``d`` with SEM ``se``: better / worse by more than 2 SEM, else no difference."""
    return "better" if d > 2 * se else "worse" if d < -2 * se else "no difference"


# --------------------------------------------------------------------------- tables


def md_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A markdown table's lines and a blank one; the first ``text_columns`` columns left-aligned, the rest right."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return [line(header), "|" + "|".join(align) + "|", *map(line, rows), ""]
