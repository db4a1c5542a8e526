"""The human oracle: the batch a cycle asks a person to label, and the answers as they come.

In the paper (and every AL library) the oracle reads the dataset's ground truth. With
``experiment.oracle: human`` a person answers instead, which takes minutes to days, so
the question and the answers live in the run folder, not in a process::

    runs/<name>/labels/
      cycle_002.json            the batch: class names, and per image its pool index, id
                                (path under data.root, or pool-000123), source file, thumbnail
      cycle_002.answers.json    answers so far, in the order given: class name or "skip"
      cycle_002/000123.png      thumbnails the labelling page shows

The select step writes the batch once (thumbnails first, the batch file last, each
atomically), so a rerun finds it and never selects again. Every answer rewrites the
answers file atomically: a closed browser or a killed process loses nothing. When every
image of the batch has an answer, the experiment *commits* them to ``pool.json`` in one
atomic write — labelled images with their class, "skip" images removed from the pool so
they are never offered again — and the cycle goes on. Until then the cycle's later steps
raise :class:`WaitingForLabels` (exit status 3 on the command line).

Answers can be given one by one (the labelling page, flows/labelpage.py) or as a
CSV file (galot_core/label_files.py), which is checked as a whole: unknown classes, unknown
images and duplicates are each reported on one line and nothing is imported; missing
rows are fine (a partial file) and reported as what is still missing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from galot_core.errors import GalotError, show, show_names
from galot_core.images import open_image, to_mode
from galot_core import synthetic
from galot_core.io import atomic_write_bytes, atomic_write_json
from galot_core.names import class_names_problem, name_key
from galot_core.runfolder import RunFolder
from galot_core.runfolder.checks import CLASSES_MAX, POOL_MAX, bad_file, read_checked_json

if TYPE_CHECKING:
    from galot_core.data.base import Dataset

SKIP = "skip"          # the answer "none of these classes": the image leaves the pool
THUMB_MAX = 256        # longest side of a thumbnail cut from an original file
THUMB_MIN = 112        # in-memory datasets (28–64 px) are enlarged to at least this, pixelated
EXIT_WAITING = 3       # the command-line exit status of a run that waits for labels


class WaitingForLabels(GalotError):
    """The cycle cannot go on before a person labels its batch; nothing is lost, rerun to continue."""

    exit_code = EXIT_WAITING

    def __init__(self, run_dir: Path, cycle: int, missing: int, total: int) -> None:
        self.run_dir, self.cycle, self.missing, self.total = Path(run_dir), cycle, missing, total
        run = str(run_dir)
        super().__init__(f"cycle {cycle} waits for {missing} labels ({total - missing} / {total} given): run "
                         f"`galot label serve {run}` or `galot label import {run} labels.csv`, then `galot run` "
                         "again")

    def __reduce__(self):  # picklable (Prefect may persist a failed state's exception)
        return (type(self), (self.run_dir, self.cycle, self.missing, self.total))


@dataclass(frozen=True)
class Item:
    index: int             # pool index
    image: str             # what a person sees and types: path under data.root, or pool-000123
    source: str | None     # the original file (absolute), when the dataset has files
    thumbnail: str         # PNG, relative to the run folder


@dataclass(frozen=True)
class Batch:
    cycle: int
    classes: list[str]
    items: list[Item]

    @property
    def indices(self) -> list[int]:
        return [it.index for it in self.items]


def labels_dir(run_dir: str | Path) -> Path:
    return RunFolder(run_dir).labels_dir


def batch_path(run_dir: str | Path, cycle: int) -> Path:
    return RunFolder(run_dir).label_batch_path(cycle)


def answers_path(run_dir: str | Path, cycle: int) -> Path:
    return RunFolder(run_dir).label_answers_path(cycle)


def image_id(dataset: Dataset, index: int) -> str:
    return dataset.pool_files[index] if dataset.pool_files else f"pool-{index:06d}"


def _thumbnail_png(dataset: Dataset, index: int) -> bytes:
    if dataset.pool_files and dataset.root:
        try:
            with open_image(Path(dataset.root) / dataset.pool_files[index]) as im:
                im = to_mode(im, "RGB")
                im.thumbnail((THUMB_MAX, THUMB_MAX), Image.Resampling.LANCZOS)
                return _png(im)
        except (OSError, ValueError):  # ValueError: ImageTooLarge
            pass  # the file changed since loading: show what was decoded instead
    x = dataset.pool.images[index]
    arr = x.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    scale = max(1, -(-THUMB_MIN // max(im.size)))
    return _png(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_batch(run_dir: str | Path, cycle: int, indices: list[int], dataset: Dataset) -> Batch:
    """Thumbnails, then the batch file (its existence means: selection of ``cycle`` is done)."""
    run_dir = Path(run_dir)
    items = []
    for i in indices:
        rel = f"labels/cycle_{cycle:03d}/{i:06d}.png"
        atomic_write_bytes(run_dir / rel, _thumbnail_png(dataset, i))
        source = str(Path(dataset.root) / dataset.pool_files[i]) if dataset.pool_files and dataset.root else None
        items.append(Item(int(i), image_id(dataset, i), source, rel))
    batch = Batch(cycle, list(dataset.class_names), items)
    atomic_write_json(batch_path(run_dir, cycle), {
        "cycle": cycle, "classes": batch.classes,
        "items": [{"index": it.index, "image": it.image, "source": it.source, "thumbnail": it.thumbnail}
                  for it in items]})
    return batch


def read_batch(run_dir: str | Path, cycle: int) -> Batch | None:
    path = batch_path(run_dir, cycle)
    if not path.exists():
        return None
    fix = "delete it to select the cycle's batch again"
    d = read_checked_json(path, "label batch", fix)
    if not isinstance(d, dict) or d.get("cycle") != cycle:
        raise bad_file(path, "'cycle'", f"must be {cycle}", fix)
    classes = d.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= CLASSES_MAX or \
            not all(isinstance(c, str) and c for c in classes):
        raise bad_file(path, "'classes'", "must list the class names", fix)
    if class_names_problem("classes", classes):
        raise bad_file(path, "'classes'", "must be distinct class names without control characters", fix)
    items = d.get("items")
    if not isinstance(items, list):
        raise bad_file(path, "'items'", "must be a list", fix)
    return Batch(cycle, classes, [_item(it, k, path, fix) for k, it in enumerate(items)])


def _item(it: Any, k: int, path: Path, fix: str) -> Item:
    """One image of a batch file: a pool index, its id, its source file, a thumbnail under labels/."""
    if not isinstance(it, dict):
        raise bad_file(path, f"'items'[{k}]", "must be an object", fix)
    index, image, source, thumb = it.get("index"), it.get("image"), it.get("source"), it.get("thumbnail")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < POOL_MAX:
        raise bad_file(path, f"'items'[{k}].index", f"must be a pool index, got {show(index)}", fix)
    if not isinstance(image, str) or not (source is None or isinstance(source, str)):
        raise bad_file(path, f"'items'[{k}].image", "must be a string (and source a string or null)", fix)
    if not synthetic.safe_relative(thumb) or not thumb.startswith("labels/"):
        raise bad_file(path, f"'items'[{k}].thumbnail", f"must be a path under labels/, got {show(thumb)}", fix)
    return Item(index, image, source, thumb)


def read_answers(run_dir: str | Path, cycle: int) -> list[dict[str, Any]]:
    """Answers in the order given: ``{"index", "image", "answer"}`` (answer: class name or "skip")."""
    path = answers_path(run_dir, cycle)
    if not path.exists():
        return []
    fix = "restore it or delete it and label the batch again"
    d = read_checked_json(path, "answers file", fix)
    answers = d.get("answers") if isinstance(d, dict) else None
    if not isinstance(answers, list):
        raise bad_file(path, "'answers'", "must be a list", fix)
    for k, a in enumerate(answers):
        ok = isinstance(a, dict) and isinstance(a.get("index"), int) and not isinstance(a["index"], bool) and \
            isinstance(a.get("image"), str) and isinstance(a.get("answer"), str)
        if not ok:
            raise bad_file(path, f"'answers'[{k}]", "must be {index: integer, image: string, answer: string}", fix)
    return answers


def write_answers(run_dir: str | Path, cycle: int, answers: list[dict[str, Any]]) -> None:
    """Only under RunFolder.labels_lock, after reading the answers under the same lock."""
    atomic_write_json(answers_path(run_dir, cycle), {"cycle": cycle, "answers": answers})


def committed(batch: Batch, pool: dict[str, Any] | None) -> bool:
    """Whether ``pool.json`` (as read) already holds the batch's answers (committed all at once)."""
    if pool is None:
        return False
    taken = set(pool["labelled"]) | set(pool.get("removed", []))
    return any(i in taken for i in batch.indices)


def read_pool(run_dir: str | Path) -> dict[str, Any] | None:
    return RunFolder(run_dir).read_pool_json()


def pending_cycle(run_dir: str | Path) -> int | None:
    """The newest cycle whose batch waits for answers (or for its commit), else None."""
    folder = labels_dir(run_dir)
    cycles = sorted(int(p.stem[6:]) for p in folder.glob("cycle_[0-9][0-9][0-9].json")) if folder.exists() else []
    if not cycles:
        return None
    batch = read_batch(run_dir, cycles[-1])
    return None if batch is None or committed(batch, read_pool(run_dir)) else cycles[-1]


def normalise(name: str) -> str:
    """A class name or answer as matched (galot_core/names.py: case, spacing and Unicode form ignored)."""
    return name_key(name)


def resolve_answer(batch: Batch, answer: str) -> str | None:
    """The class name (as in the batch) or SKIP that ``answer`` means, or None if it is unknown."""
    key = normalise(answer)
    if key == SKIP:
        return SKIP
    return next((c for c in batch.classes if normalise(c) == key), None)


def give(run_dir: str | Path, batch: Batch, index: int, answer: str) -> list[dict[str, Any]]:
    """Record one answer (replacing an earlier one for the same image); saved before returning."""
    check_open(run_dir, batch)
    item = next((it for it in batch.items if it.index == index), None)
    if item is None:
        raise GalotError(f"image: pool index {index} is not in the batch of cycle {batch.cycle}")
    resolved = resolve_answer(batch, answer)
    if resolved is None:
        raise GalotError(f"label: unknown class {show(answer)}; use one of {show_names(batch.classes)} or {SKIP}")
    with RunFolder(run_dir).labels_lock():
        check_open(run_dir, batch)
        answers = [a for a in read_answers(run_dir, batch.cycle) if a["index"] != index]
        answers.append({"index": index, "image": item.image, "answer": resolved})
        write_answers(run_dir, batch.cycle, answers)
    return answers


def undo(run_dir: str | Path, batch: Batch) -> dict[str, Any] | None:
    """Forget the answer given last; returns it (None when there was none)."""
    with RunFolder(run_dir).labels_lock():
        check_open(run_dir, batch)
        answers = read_answers(run_dir, batch.cycle)
        if not answers:
            return None
        last = answers.pop()
        write_answers(run_dir, batch.cycle, answers)
    return last


def check_open(run_dir: str | Path, batch: Batch) -> None:
    if committed(batch, read_pool(run_dir)):
        raise GalotError(f"cycle {batch.cycle}: its labels were already used to go on with the experiment; they can "
                         "no longer be changed")


def missing(batch: Batch, answers: list[dict[str, Any]]) -> list[Item]:
    given = {a["index"] for a in answers}
    return [it for it in batch.items if it.index not in given]


# ----- CSV ------------------------------------------------------------------------------------
def split_answers(batch: Batch, answers: list[dict[str, Any]]) -> tuple[list[int], list[int], list[int]]:
    """(labelled indices, their class indices, skipped indices), in the batch's selection order; writes nothing."""
    by_index = {a["index"]: a["answer"] for a in answers}
    labelled, classes, skipped = [], [], []
    for it in batch.items:
        ans = by_index[it.index]
        if ans != SKIP and ans not in batch.classes:
            raise GalotError(f"labels/cycle_{batch.cycle:03d}.answers.json: answer {show(ans)} for {show(it.image)} "
                             f"is not one of the batch's classes or {SKIP}; label that image again")
        if ans == SKIP:
            skipped.append(it.index)
        else:
            labelled.append(it.index)
            classes.append(batch.classes.index(ans))
    return labelled, classes, skipped


def status(run_dir: str | Path) -> dict[str, Any]:
    """What the labelling page shows: the pending batch with answers, or that none is pending."""
    cycle = pending_cycle(run_dir)
    if cycle is None:
        return {"cycle": None, "classes": [], "items": [], "labelled": 0, "total": 0}
    batch = read_batch(run_dir, cycle)
    assert batch is not None
    answers = read_answers(run_dir, cycle)
    given = {a["index"]: a["answer"] for a in answers}
    items = [{"index": it.index, "image": it.image, "thumbnail": it.thumbnail, "answer": given.get(it.index)}
             for it in batch.items]
    return {"cycle": cycle, "classes": batch.classes, "items": items,
            "labelled": sum(1 for it in items if it["answer"] is not None), "total": len(items),
            "last": answers[-1]["index"] if answers else None}
