"""Labels as files: a pending batch exported as CSV for a spreadsheet or labelling tool, and a
person's answers imported back, checked as a whole.

A labels file is untrusted input: it is read only if it is a regular UTF-8 file of at most
CSV_MAX_BYTES, every cell is bounded, and the rows are streamed; unknown images, unknown
classes and duplicates are each one line of a :class:`LabelFileError` (the first
PROBLEMS_SHOWN, then a count) and nothing is imported. Exported cells never start with what a
spreadsheet runs as a formula (OWASP's "CSV injection"); :func:`unescape_cell` reverses it.
The answers themselves live with the batch (galot_core/labels.py).
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galot_core.errors import GalotError, show, show_names
from galot_core.labels import (SKIP, Batch, Item, check_open, missing, normalise, pending_cycle, read_answers,
                               read_batch, resolve_answer, write_answers)
from galot_core.runfolder import RunFolder

CSV_HEADER = ("image", "label", "source")
CSV_MAX_BYTES = 64 << 20     # a labels file of 64 MiB holds ~a million rows; anything larger is not one
CSV_FIELD_MAX = 4096         # characters in one cell (paths are at most 4096 bytes on Linux)
PROBLEMS_SHOWN = 20          # lines of a rejected labels file's report; the rest are counted
# Spreadsheets run a cell starting with one of these as a formula (=, +, -, @) or strip/shift it
# (tab, CR); OWASP's "CSV injection" advice: prefix such cells with a quote.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(text: str) -> str:
    """A cell a spreadsheet shows as text: a leading quote before a formula character (or a quote)."""
    return "'" + text if text.startswith(FORMULA_START + ("'",)) else text


def unescape_cell(text: str) -> str:
    """Undo :func:`escape_cell`: exactly one leading quote, only before what escape_cell protects."""
    return text[1:] if text.startswith("'") and text[1:2] and text[1:].startswith(FORMULA_START + ("'",)) else text


def export_csv(batch: Batch, answers: list[dict[str, Any]]) -> str:
    """The batch as CSV: image id, the answer so far (empty if none), the original file; safe to open in a
    spreadsheet (no cell is a formula) and read back by :func:`import_csv` unchanged."""
    given = {a["index"]: a["answer"] for a in answers}
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")  # RFC 4180; and a cell holding CR or LF is quoted
    w.writerow(CSV_HEADER)
    for it in batch.items:
        w.writerow([escape_cell(c) for c in (it.image, given.get(it.index, ""), it.source or "")])
    return out.getvalue()


@dataclass
class ImportReport:
    cycle: int
    imported: int            # rows taken from the file
    changed: int             # of those, answers that replaced a different earlier answer
    labelled: int            # images of the batch with an answer now
    total: int
    missing: list[str]       # ids of images still without an answer

    def lines(self) -> list[str]:
        out = [f"cycle {self.cycle}: imported {self.imported} labels ({self.changed} changed); "
               f"{self.labelled} / {self.total} labelled"]
        if self.missing:
            out.append(f"{len(self.missing)} images still have no label: {show_names(self.missing)}")
        return out


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, unescaped cells) of every row, streamed; a NUL byte or an oversized cell is one line."""
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if any(len(cell) > CSV_FIELD_MAX for cell in row):
                raise csv.Error(f"a cell longer than {CSV_FIELD_MAX} characters")
            if any("\0" in cell for cell in row):
                raise csv.Error("a NUL byte")
            yield reader.line_num, [unescape_cell(cell) for cell in row]
    except csv.Error as e:
        reason = " ".join(str(e).split())[:100]
        raise GalotError(f"{path}:{reader.line_num}: not a labels CSV ({reason}); give columns image,label") from None


def _rows(text: str, path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, image, label) of each non-empty row, streamed; a header row naming the columns is skipped."""
    col_image, col_label = 0, 1
    for k, (number, row) in enumerate(_csv_rows(text, path)):
        if k == 0 and any(normalise(c) in ("image", "path", "file") for c in row):
            header = [normalise(c) for c in row]
            col_image = next(i for i, c in enumerate(header) if c in ("image", "path", "file"))
            col_label = next((i for i, c in enumerate(header) if c in ("label", "class", "class name")), None) or \
                (1 if col_image == 0 else 0)
            continue
        if not any(cell.strip() for cell in row):
            continue
        image = row[col_image] if col_image < len(row) else ""  # stripped by import_rows unless exact
        label = row[col_label].strip() if col_label < len(row) else ""
        yield number, image, label


def _lookup(batch: Batch) -> dict[str, Item]:
    """Ways a person may name an image of the batch: its id, its original file, the file's name (if unique)."""
    keys: dict[str, Item] = {}
    names: dict[str, list[Item]] = {}
    for it in batch.items:
        keys[it.image] = it
        if it.source:
            keys[it.source] = it
            names.setdefault(Path(it.source).name, []).append(it)
        keys[it.thumbnail] = it
    for name, its in names.items():
        if len(its) == 1:
            keys.setdefault(name, its[0])
    return keys


def _by_path(keys: dict[str, Item], image: str) -> Item | None:
    """The batch image a path names after resolving it (~, relative parts, symlinks), if any."""
    if not image or "\0" in image:
        return None
    try:
        return keys.get(str(Path(image).expanduser().resolve()))
    except (OSError, RuntimeError, ValueError):  # too long, a symlink loop, an unknown ~user
        return None


def import_csv(run_dir: str | Path, path: str | Path, cycle: int | None = None) -> ImportReport:
    """Add the answers in a CSV file (image, class name) to the pending batch; all rows valid or none taken."""
    path = Path(path)
    text = _read_labels_file(path)
    return import_rows(run_dir, ((f"{path}:{n}", image, label) for n, image, label in _rows(text, path)), cycle)


def _read_labels_file(path: Path) -> str:
    """The text of a labels file: a regular file (not a FIFO or device that never ends), at most CSV_MAX_BYTES."""
    fix = "give a UTF-8 CSV file with columns image,label"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise GalotError(f"{path}: not a regular file; {fix}")
        with open(path, "rb") as f:
            data = f.read(CSV_MAX_BYTES + 1)
    except OSError as e:
        raise GalotError(f"{path}: cannot read the labels file ({e.__class__.__name__}); {fix}") from None
    if len(data) > CSV_MAX_BYTES:
        raise GalotError(f"{path}: larger than {CSV_MAX_BYTES >> 20} MiB; {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GalotError(f"{path}: not UTF-8 text (byte {e.start}); {fix}") from None


def import_rows(run_dir: str | Path, rows: Iterable[tuple[str, str, str]], cycle: int | None = None) -> ImportReport:
    """Add answers given as (where, image, class name) rows to the pending batch; all valid or none taken.

    Unknown images, unknown classes and duplicates are each one line of the raised
    :class:`LabelFileError` (the first PROBLEMS_SHOWN kept, the rest counted, so a file of a
    million bad rows costs no more memory than a good one); rows with an empty class are not
    answers yet (a partial file).
    """
    run_dir = Path(run_dir)
    cycle = cycle if cycle is not None else pending_cycle(run_dir)
    if cycle is None:
        raise GalotError(f"{run_dir}: no batch waits for labels; run `galot run` until it stops at a cycle's "
                         "labels (experiment.oracle: human)")
    batch = read_batch(run_dir, cycle)
    if batch is None:
        raise GalotError(f"{run_dir}: cycle {cycle} has no label batch")
    check_open(run_dir, batch)
    keys = _lookup(batch)
    paths = any(it.source for it in batch.items)  # only then can a path name an image
    problems = _Problems()
    seen: dict[int, str] = {}
    new: list[tuple[Item, str]] = []
    for where, image, label in rows:
        item = keys.get(image)
        image = image if item is not None else image.strip()
        item = item or keys.get(image) or (_by_path(keys, image) if paths else None)
        if item is None:
            problems.add(lambda: f"{where}: unknown image {show(image)}: not in the batch of cycle {cycle} (see "
                                 f"`galot label export {run_dir}`)")
            continue
        if not label:
            continue  # no answer yet for this row: a partial file
        answer = resolve_answer(batch, label)
        if answer is None:
            problems.add(lambda: f"{where}: unknown class {show(label)} for {show(item.image)}; use one of "
                                 f"{show_names(batch.classes)} or {SKIP}")
            continue
        if item.index in seen:
            problems.add(lambda: f"{where}: duplicate row for {show(item.image)} (first at {seen[item.index]}); "
                                 "keep one")
            continue
        seen[item.index] = where
        new.append((item, answer))
    if problems.count:
        raise LabelFileError(problems.shown, problems.count)
    answers, changed = _merge_answers(run_dir, batch, new)
    left = missing(batch, answers)
    return ImportReport(cycle, len(new), changed, len(batch.items) - len(left), len(batch.items),
                        [it.image for it in left])


def _merge_answers(run_dir: Path, batch: Batch, new: list[tuple[Item, str]]) -> tuple[list[dict[str, Any]], int]:
    """Add ``new`` answers to the stored ones in one locked read-modify-write; (answers now, how many changed)."""
    with RunFolder(run_dir).labels_lock():
        check_open(run_dir, batch)
        answers = read_answers(run_dir, batch.cycle)
        before = {a["index"]: a["answer"] for a in answers}
        changed = sum(1 for it, ans in new if it.index in before and before[it.index] != ans)
        replaced = {it.index for it, _ in new}
        answers = [a for a in answers if a["index"] not in replaced] + [
            {"index": it.index, "image": it.image, "answer": ans} for it, ans in new]
        if new:
            write_answers(run_dir, batch.cycle, answers)
    return answers, changed


class _Problems:
    """The first PROBLEMS_SHOWN problem lines, and how many there were."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0

    def add(self, line: Callable[[], str]) -> None:
        """Count a problem; its line is only written while fewer than PROBLEMS_SHOWN are kept."""
        self.count += 1
        if len(self.shown) < PROBLEMS_SHOWN:
            self.shown.append(line())


class LabelFileError(GalotError):
    """The problems of a labels file, one line each (at most PROBLEMS_SHOWN, then a count); nothing was imported."""

    def __init__(self, problems: list[str], count: int | None = None) -> None:
        self.problems, self.count = problems, count if count is not None else len(problems)
        more = [f"… and {self.count - len(problems)} more problems"] if self.count > len(problems) else []
        super().__init__("\n".join(problems + more + [f"nothing imported ({self.count} problem"
                                                      f"{'s' if self.count != 1 else ''}); fix the file and "
                                                      "import it again"]))

    def __reduce__(self):
        return (type(self), (self.problems, self.count))
