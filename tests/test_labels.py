"""The human oracle with labels from a file: an unlabelled folder of images, two GALOT cycles
through the real `galot` command, labels given with `galot label export` / `galot label import`.

The images are real MNIST digits written as PNGs into a flat folder (no class sub-folders),
so the test knows the truth that a person would type; a small labelled test folder gives
an honest test accuracy. The tiny random Stable Diffusion pipeline keeps generation fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from galot_core import labels
from galot_core.config import config_from_dict
from galot_core.errors import GalotError

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.usefixtures("one_thread")


def human_params(tmp_path, folder, names, model, mode="al+gal", name="mine", budget=6, **experiment):
    raw = {
        "experiment": {"name": name, "runs_dir": str(tmp_path / "runs"), "mode": mode, "cycles": 2, "seed": 1,
                       "judge": None, "oracle": "human", **experiment},
        "data": {"dataset": "folder", "root": str(folder / "images"), "classes": names,
                 "test_root": str(folder / "test")},
        "al": {"budget_per_cycle": budget},
        "gal": {"epsilon": 0.5, "steps": 1, "samples": 2},
        "t2i": {"model": str(model), "steps": 2, "guidance_scale": 2.0, "batch_size": 16, "device": "cpu"},
        "train": {"epochs": 1, "min_steps": 4, "device": "cpu"},
        "tracking": {"mlflow": False},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def galot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PREFECT_API_URL", None)  # the command line's own way: stop and rerun, no server
    return subprocess.run([str(BIN / "galot"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths) if p.is_file()}


def fill(csv_path: Path, truth: dict[str, str], skip: set[str] = frozenset(), only: int | None = None) -> Path:
    """What a person does in a spreadsheet: fill the label column of the exported CSV."""
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["label"] for r in rows] == [""] * len(rows)
    for k, r in enumerate(rows):
        if only is None or k < only:
            r["label"] = "skip" if r["image"] in skip else truth[r["image"]]
    out = csv_path.with_name(csv_path.stem + ".filled.csv")
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "source"])
        w.writeheader()
        w.writerows(rows)
    return out


def _cycle_1_stops_for_labels(run: Path, params: Path, tmp_path: Path, names, truth):
    """Cycle 1 selects its batch and stops: one line, exit status 3, nothing trained; its batch and
    the digests of labels/."""
    r = galot("run", "--params", str(params), cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    assert (f"galot: cycle 1 waits for 6 labels (0 / 6 given): run `galot label serve {run}` or "
            f"`galot label import {run} labels.csv`, then `galot run` again") in r.stderr.splitlines()
    assert "Traceback" not in r.stderr
    batch1 = labels.read_batch(run, 1)
    assert len(batch1.items) == 6 and batch1.classes == names
    assert all(it.image in truth and (run / it.thumbnail).is_file() for it in batch1.items)
    assert not (run / "pool.json").exists() and not (run / "cycles").exists()
    selected = digest((run / "labels").rglob("*"))

    # Rerunning before labelling changes nothing (the batch is not selected again).
    r = galot("run", "--params", str(params), cwd=tmp_path)
    assert r.returncode == 3 and digest((run / "labels").rglob("*")) == selected
    return batch1, selected


def _partial_then_bad_import(run: Path, tmp_path: Path, truth, batch1) -> Path:
    """Export, label half in a "spreadsheet", import: a partial file is fine and reported. Then a
    file with mistakes: one line per problem, nothing imported. The exported CSV."""
    r = galot("label", "export", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    exported = run / "labels" / "cycle_001.csv"
    partial = fill(exported, truth, only=3)
    r = galot("label", "import", str(run), str(partial), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 / 6 labelled" in r.stdout and "3 images still have no label" in r.stdout

    ids = [it.image for it in batch1.items]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,label\n{ids[3]},eleven\nnot_there.png,one\n{ids[4]},{truth[ids[4]]}\n"
                   f"{ids[4]},{truth[ids[4]]}\n")
    before = labels.read_answers(run, 1)
    r = galot("label", "import", str(run), str(bad), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("galot: error: ") for line in lines)
    assert "unknown class 'eleven'" in lines[0] and "unknown image 'not_there.png'" in lines[1]
    assert "duplicate row" in lines[2] and "nothing imported" in lines[3]
    assert labels.read_answers(run, 1) == before
    return exported


def _cycle_1_completes_with_a_skip(run: Path, params: Path, tmp_path: Path, names, truth, batch1, selected,
                                   exported: Path):
    """The whole file, one image answered "skip": cycle 1 goes on without selecting again. Cycle 1's
    weight digests and the pool's expected (index, label) pairs."""
    skipped = batch1.items[5].image
    full = fill(exported, truth, skip={skipped})
    r = galot("label", "import", str(run), str(full), cwd=tmp_path)
    assert r.returncode == 0 and "6 / 6 labelled" in r.stdout and "run `galot run` to continue" in r.stdout
    r = galot("run", "--params", str(params), cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "galot: cycle 2 waits for 6 labels (0 / 6 given)" in r.stderr
    assert {k: v for k, v in digest((run / "labels").rglob("*")).items() if k in selected} == selected
    cycle1 = digest((run / "cycles" / "cycle_001").glob("*.safetensors"))
    pool = json.loads((run / "pool.json").read_text())
    expected = [(it.index, names.index(truth[it.image])) for it in batch1.items if it.image != skipped]
    assert list(zip(pool["labelled"], pool["labels"])) == expected and pool["cycles"] == [1] * 5
    assert pool["removed"] == [next(it.index for it in batch1.items if it.image == skipped)]
    return cycle1, expected


def test_two_human_cycles_with_file_import(tmp_path, digit_folder, tiny_sd_folder):
    folder, names, truth = digit_folder
    params = human_params(tmp_path, folder, names, tiny_sd_folder)
    run = tmp_path / "runs" / "mine"
    batch1, selected = _cycle_1_stops_for_labels(run, params, tmp_path, names, truth)
    exported = _partial_then_bad_import(run, tmp_path, truth, batch1)
    cycle1, expected = _cycle_1_completes_with_a_skip(run, params, tmp_path, names, truth, batch1, selected,
                                                      exported)

    # Cycle 2: its batch avoids cycle 1's images, including the skipped one.
    batch2 = labels.read_batch(run, 2)
    assert not {it.index for it in batch2.items} & {it.index for it in batch1.items}
    r = galot("label", "export", str(run), "-o", str(tmp_path / "c2.csv"), cwd=tmp_path)
    assert r.returncode == 0
    r = galot("label", "import", str(run), str(fill(tmp_path / "c2.csv", truth)), cwd=tmp_path)
    assert r.returncode == 0
    r = galot("run", "--params", str(params), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    # Nothing of cycle 1 was recomputed; the pool holds exactly the imported labels.
    assert digest((run / "cycles" / "cycle_001").glob("*.safetensors")) == cycle1
    pool = json.loads((run / "pool.json").read_text())
    expected += [(it.index, names.index(truth[it.image])) for it in batch2.items]
    assert list(zip(pool["labelled"], pool["labels"])) == expected
    assert pool["cycles"] == [1] * 5 + [2] * 6 and len(pool["removed"]) == 1
    rows = json.loads((run / "metrics.json").read_text())
    assert [(m["cycle"], m["labelled"], m["generated"]) for m in rows] == [(1, 5, 5), (2, 11, 11)]
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in rows)  # against the labelled test folder
    assert labels.pending_cycle(run) is None
    r = galot("label", "export", str(run), cwd=tmp_path)
    assert r.returncode == 2 and "no batch" in r.stderr


def test_without_a_test_set_accuracy_is_not_invented(tmp_path, digit_folder):
    """An unlabelled folder alone: the cycle runs, test accuracy is None (n/a), never a made-up number."""
    from galot_core.experiment import Experiment

    folder, names, truth = digit_folder
    raw = yaml.safe_load(human_params(tmp_path, folder, names, "unused", mode="al", cycles=1).read_text())
    raw["data"].pop("test_root")
    exp = Experiment(config_from_dict(raw))
    with pytest.raises(labels.WaitingForLabels) as waiting:
        exp.run_cycle()
    assert waiting.value.exit_code == 3 and waiting.value.missing == 6
    batch = labels.read_batch(exp.dir, 1)
    for it in batch.items:
        labels.give(exp.dir, batch, it.index, truth[it.image].upper())  # class names are case-insensitive
    m = exp.run_cycle()
    assert m.test_accuracy is None and m.labelled == 6
    assert json.loads((exp.dir / "summary.json").read_text())["final_test_accuracy"] is None
    with pytest.raises(GalotError, match="already used"):
        labels.undo(exp.dir, batch)


def test_undo_and_relabel(tmp_path, tiny_digits):
    """Answers replace earlier ones for the same image; undo forgets the newest; each is saved at once."""
    from galot_core.experiment import Experiment

    cfg = config_from_dict({"experiment": {"name": "u", "runs_dir": str(tmp_path), "mode": "al", "cycles": 1,
                                           "oracle": "human"},
                            "al": {"budget_per_cycle": 4, "strategy": "RandomSampling"},
                            "train": {"epochs": 1, "min_steps": 2, "device": "cpu"}})
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.start()
    picked = exp.select(1)
    batch = labels.read_batch(exp.dir, 1)
    assert batch.indices == picked and batch.items[0].image == f"pool-{picked[0]:06d}"
    labels.give(exp.dir, batch, picked[0], "three")
    labels.give(exp.dir, batch, picked[1], "skip")
    labels.give(exp.dir, batch, picked[0], "four")   # a correction
    assert [(a["index"], a["answer"]) for a in labels.read_answers(exp.dir, 1)] == [(picked[1], "skip"),
                                                                                    (picked[0], "four")]
    assert labels.undo(exp.dir, batch)["index"] == picked[0]
    assert [a["index"] for a in labels.read_answers(exp.dir, 1)] == [picked[1]]
    with pytest.raises(GalotError, match="unknown class 'eleven'"):
        labels.give(exp.dir, batch, picked[2], "eleven")
    assert exp.select(1) == picked  # never selected again


@pytest.mark.parametrize("data, message", [
    ({"dataset": "folder"}, "data.classes must list the class names"),
    ({"dataset": "folder", "classes": ["a", "a"]}, "data.classes lists 'a' twice"),
    ({"dataset": "folder", "classes": ["a", "Skip"]}, "must not contain 'skip'"),
    ({"dataset": "mnist5k", "classes": ["a"]}, "data.classes is only used with data.dataset: folder"),
])
def test_folder_config_mistakes_are_one_line(data, message):
    with pytest.raises(GalotError, match=message):
        config_from_dict({"experiment": {"oracle": "human"}, "data": data})


def test_folder_needs_the_human_oracle():
    with pytest.raises(GalotError, match="experiment.oracle must be human for data.dataset: folder"):
        config_from_dict({"data": {"dataset": "folder", "classes": ["cat", "dog"]}})
    # GAL-only needs no labels at all: class names are enough.
    config_from_dict({"experiment": {"mode": "gal"}, "data": {"dataset": "folder", "classes": ["cat", "dog"]}})
