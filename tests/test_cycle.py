"""The cycle as one sequence of five steps (galot_core.cycle): behaviour kept byte for byte from
before the refactor (issue 17), the ε schedule fixed when a run starts, and an incremental export."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from galot_core.experiment import Experiment
from galot_core.io import read_json
from tests.test_experiment_gal import gal_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

# The last commit before issue 17's refactor: the before/after check runs its code on this machine.
BEFORE = "b1b94f3"
ROOT = Path(__file__).resolve().parents[1]


def fingerprint(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every image, manifest, embedding, classifier, selection and metrics file of a run.

    Wall-clock seconds are dropped from the metrics, and the T2I model's path (a temp folder)
    from the manifests; everything else must match to the byte."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if not path.is_file() or rel.startswith(("dataset/", ".")) or "/." in rel:
            continue
        if rel.endswith(("metrics.json", "train.json")):
            data = json.loads(path.read_text())
            for row in data if isinstance(data, list) else [data]:
                row.pop("seconds", None)
            blob = json.dumps(data, sort_keys=True).encode()
        elif rel.endswith("manifest.jsonl"):
            rows = [{k: v for k, v in json.loads(line).items() if k != "model_id"}
                    for line in path.read_text().splitlines()]
            blob = json.dumps(rows, sort_keys=True).encode()
        elif rel.endswith((".png", ".safetensors", "selection.json", "pool.json", "accuracy.csv", "summary.json")):
            blob = path.read_bytes()
        else:
            continue
        out[rel] = hashlib.sha256(blob).hexdigest()
    return out


# Runs the 2-cycle experiment with the code of BEFORE (its galot_core and its tests' gal_cfg)
# on the tiny task the test hands over as tensors, in a fresh interpreter.
_BEFORE_RUN = """
import sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from galot_core.data.base import Dataset, ImageSet
from galot_core.experiment import Experiment
from tests.test_experiment_gal import gal_cfg
t = torch.load(sys.argv[2], weights_only=True)
d = Dataset(name="tiny_digits", pool=ImageSet(t["pool_x"], t["pool_y"]), test=ImageSet(t["test_x"], t["test_y"]),
            class_names=t["names"], natural=False, mean=t["mean"], std=t["std"])
cfg = gal_cfg(sys.argv[3], sys.argv[4], experiment={"judge": sys.argv[5]}, gal={"diversity": 0.2, "candidates": 2})
Experiment(cfg, dataset=d).run()
"""


def before_code(tmp_path: Path) -> Path:
    """BEFORE's source tree (git archive), or a skip when this clone does not have that commit."""
    import subprocess

    out = tmp_path / "before"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "galot_core", "tests"], capture_output=True)
    if archive.returncode:
        pytest.skip(f"commit {BEFORE} is not in this clone (shallow?): {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def test_two_cycles_are_byte_identical_to_before_the_refactor(tmp_path, tiny_digits, tiny_sd_folder):
    """A 2-cycle al+gal run (TextOpt, per-image diversity, 2 candidates per image chosen by σ_GAL,
    a judge) gives the images, embeddings, classifiers, selections and metrics that the code of
    BEFORE (b1b94f3, the last commit before issue 17) gives, both run here, the old one from
    ``git archive`` in a subprocess. (Floating point differs between machines, so a recorded
    fingerprint would test the machine; this compares the two codes on one.)"""
    import subprocess
    import sys

    from galot_core.checkpoint import save_classifier
    from galot_core.models import build_model

    old = before_code(tmp_path)
    torch.manual_seed(0)
    judge = tmp_path / "judge.safetensors"
    save_classifier(build_model("small_cnn", 1, 10, 0.2), judge, arch="small_cnn", in_channels=1)
    d = tiny_digits
    torch.save({"pool_x": d.pool.images, "pool_y": d.pool.labels, "test_x": d.test.images, "test_y": d.test.labels,
                "names": list(d.class_names), "mean": d.mean, "std": d.std}, tmp_path / "task.pt")
    r = subprocess.run([sys.executable, "-c", _BEFORE_RUN, str(old), str(tmp_path / "task.pt"),
                        str(tmp_path / "before-runs"), str(tiny_sd_folder), str(judge)], capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    expected = fingerprint(tmp_path / "before-runs" / "g")

    cfg = gal_cfg(tmp_path / "runs", tiny_sd_folder, experiment={"judge": str(judge)},
                  gal={"diversity": 0.2, "candidates": 2})
    rows = Experiment(cfg, dataset=tiny_digits).run()
    got = fingerprint(cfg.run_dir)
    assert rows[-1]["judged_accuracy"] is not None and rows[-1]["epsilon"] == 0.5
    assert sum(k.startswith("synthetic/") and k.endswith(".png") for k in expected) == 30
    assert "cycles/cycle_002/embeddings.safetensors" in expected and "cycles/cycle_002/selection.json" in expected
    assert {k: v for k, v in got.items() if k in expected} == expected


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory, tiny_digits, tiny_sd_folder):
    """A gal-mode run started with 2 cycles, then extended to 4 and advanced by one cycle;
    every tar the export packs is recorded, and the first shard's file status after cycle 1."""
    from galot_core import export

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("extended")
    packed: list[str] = []
    pack = export.shard_bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "shard_bytes", lambda folder: packed.append(folder.name) or pack(folder))
        short = gal_cfg(root, tiny_sd_folder, experiment={"mode": "gal", "cycles": 2})
        exp = Experiment(short, dataset=tiny_digits)
        exp.run_cycle()
        first = (short.run_dir / "dataset/synthetic/cycle_001.tar").stat()
        exp.run_cycle()
        longer = Experiment(gal_cfg(root, tiny_sd_folder, experiment={"mode": "gal", "cycles": 4}), dataset=tiny_digits)
        third = longer.run_cycle()
    torch.set_num_threads(n)
    return short, longer, third, packed, first


def test_extending_a_run_keeps_the_epsilon_schedule_it_started_with(extended_run, tmp_path, tiny_digits,
                                                                    tiny_sd_folder):
    short, longer, third, _, _ = extended_run
    rows = read_json(short.run_dir / "metrics.json")
    assert [r["epsilon"] for r in rows] == [0.0, 0.5, 0.5]
    # Not ε·(3−1)/(4−1) = 0.33: the linear schedule of the 2-cycle run reached ε and stays there.
    assert third.cycle == 3 and third.epsilon == 0.5 and longer.epsilon(4) == 0.5
    assert read_json(short.run_dir / "config.json")["experiment"]["cycles"] == 2
    fresh = Experiment(gal_cfg(tmp_path, tiny_sd_folder, experiment={"mode": "gal", "cycles": 4}), dataset=tiny_digits)
    assert fresh.epsilon(3) == pytest.approx(0.5 * 2 / 3)  # a run started with 4 cycles has the 4-cycle schedule


def test_each_cycle_exports_only_its_own_shard(extended_run, tiny_digits):
    from galot_core import export

    short, _, _, packed, first = extended_run
    assert packed == ["cycle_001", "cycle_002", "cycle_003"]  # each export packed one tar: its own cycle's
    now = (short.run_dir / "dataset/synthetic/cycle_001.tar").stat()
    assert (now.st_ino, now.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # never rewritten
    index = export.read_index(short.run_dir / "dataset")
    assert [(s["cycle"], s["images"]) for s in index["shards"]] == [(1, 10), (2, 20), (3, 30)]
    _, _, counts = export.load_training_set(short.run_dir / "dataset", tiny_digits)
    assert counts == {"real": 0, "generated": 30}


def test_a_generated_image_is_decoded_once_per_cycle(tmp_path, tiny_digits, tiny_sd_folder, monkeypatch):
    """Training, the judge and the sample grid share one decode of the cycle's PNGs."""
    from galot_core import synthetic
    from galot_core.checkpoint import save_classifier
    from galot_core.models import build_model

    judge = tmp_path / "judge.safetensors"
    save_classifier(build_model("small_cnn", 1, 10, 0.2), judge, arch="small_cnn", in_channels=1)
    decoded = []
    decode = synthetic.decode_png
    monkeypatch.setattr(synthetic, "decode_png", lambda source, *a, **k: decoded.append(source) or decode(source, *a, **k))
    cfg = gal_cfg(tmp_path, tiny_sd_folder, experiment={"mode": "gal", "cycles": 1, "judge": str(judge)})
    m = Experiment(cfg, dataset=tiny_digits).run_cycle()
    assert m.generated == 10 and m.judged_accuracy is not None and (cfg.run_dir / "cycles/cycle_001/grid.png").exists()
    assert len(decoded) == 10 and len({hashlib.sha256(d).hexdigest() for d in decoded}) == 10
