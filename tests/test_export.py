"""The exported dataset (real selections + deterministic tar shards) that DVC versions."""

import dataclasses
import hashlib
import json
import tarfile

import pytest
import torch

from galot_core import export, synthetic
from galot_core.errors import GalotError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def finished(finished_gal_run):
    return finished_gal_run


def test_run_exports_real_selections_and_one_shard_per_cycle(finished, tiny_digits):
    cfg, exp = finished
    out = cfg.run_dir / "dataset"
    index = export.read_index(out)
    assert index["cycles"] == [1, 2] and [s["images"] for s in index["shards"]] == [10, 20]
    images, labels, counts = export.load_training_set(out, tiny_digits)
    assert counts == {"real": 20, "generated": 20}  # the last cycle's set: gal.accumulate is false
    ref_x, ref_y = exp.training_set(2)
    assert torch.equal(images, ref_x) and torch.equal(labels, ref_y)  # same data the experiment trained on
    x1, _, c1 = export.load_training_set(out, tiny_digits, up_to_cycle=1)
    assert c1 == {"real": 10, "generated": 10} and len(x1) == 20


def test_shards_are_deterministic_webdataset_samples(finished, tiny_digits):
    cfg, exp = finished
    shard = cfg.run_dir / "dataset/synthetic/cycle_002.tar"
    before = hashlib.sha256(shard.read_bytes()).hexdigest()
    exp.export(2)  # re-export: byte-identical, so DVC sees no change
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == before
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members}
    assert all(m.mtime == 0 and m.uid == 0 for m in members)
    # WebDataset: consecutive members sharing a key (basename up to the first dot), one sample each.
    samples: list[tuple[str, dict[str, bytes]]] = []
    for m in members:
        key, ext = m.name.split(".", 1)
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = files[m.name]
    assert len(samples) == 20 == len({k for k, _ in samples})  # keys never repeat
    manifest = synthetic.read_manifest(synthetic.cycle_folder(cfg.run_dir, 2))
    for (key, sample), entry in zip(samples, manifest):
        assert set(sample) == {"png", "cls", "json"} and key.startswith("cycle002_")
        meta = json.loads(sample["json"])
        assert meta == dataclasses.asdict(entry)  # the .json members are the cycle's manifest
        assert int(sample["cls"]) == entry.label and hashlib.sha256(sample["png"]).hexdigest() == entry.sha256


def test_format_1_shards_still_read(finished, tiny_digits, tmp_path):
    """Datasets exported before the WebDataset layout (PNGs + manifest.jsonl) load unchanged."""
    cfg, _ = finished
    folder = synthetic.cycle_folder(cfg.run_dir, 2)
    old = tmp_path / "old.tar"
    with tarfile.open(old, "w") as tar:
        for name in ["manifest.jsonl"] + [e.file for e in synthetic.read_manifest(folder)]:
            tar.add(folder / name, arcname=name)
    assert export.read_shard(old) == export.read_shard(cfg.run_dir / "dataset/synthetic/cycle_002.tar")


def copy_dataset(finished, tmp_path):
    """A copy of the finished run's exported dataset, to damage."""
    import shutil

    cfg, _ = finished
    copy = tmp_path / "dataset"
    shutil.copytree(cfg.run_dir / "dataset", copy)
    return copy


def rewrite_shard(finished, tmp_path, change):
    """A copy of the run's exported dataset whose cycle-2 shard holds ``change(name, data)`` per member."""
    import io

    copy = copy_dataset(finished, tmp_path)
    shard = copy / "synthetic/cycle_002.tar"
    with tarfile.open(shard) as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for name, data in files:
            data = change(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return copy


def test_altered_shard_is_refused(finished, tiny_digits, tmp_path):
    altered = []  # the first PNG's last 8 bytes zeroed

    def change(name, data):
        if name.endswith(".png") and not altered:
            altered.append(name)
            return data[:-8] + b"\0" * 8
        return data

    copy = rewrite_shard(finished, tmp_path, change)
    with pytest.raises(GalotError, match="missing or altered"):
        export.load_training_set(copy, tiny_digits)


def test_relabelled_sample_is_refused(finished, tiny_digits, tmp_path):
    """A .cls that disagrees with the manifest entry (a sample relabelled by hand) is refused."""
    copy = rewrite_shard(finished, tmp_path, lambda n, d: b"9" if n.endswith(".cls") and d != b"9" else d)
    with pytest.raises(GalotError, match="missing or altered"):
        export.load_training_set(copy, tiny_digits)


def test_missing_export_is_one_clear_error(tmp_path, tiny_digits):
    with pytest.raises(GalotError, match="no exported dataset"):
        export.load_training_set(tmp_path, tiny_digits)


@pytest.mark.parametrize("field, value, says", [
    ("labelled", [-1, 1], "'labelled'\\[0\\] must be a pool index"),
    ("labelled", [1.5, 1], "'labelled'\\[0\\] must be a pool index"),
    ("labels", [3, 99], "'labels'\\[1\\] must be a class index"),
    ("cycles", "1", "'cycles' must be a list of integers"),
])
def test_damaged_real_selections_are_one_line_naming_the_field(finished, tiny_digits, tmp_path, field, value, says):
    """real.json is read back like pool.json: indices inside the pool, labels among the classes."""
    copy = copy_dataset(finished, tmp_path)
    real = json.loads((copy / "real.json").read_text())
    real.update({"labelled": real["labelled"][:2], "labels": real["labels"][:2], "cycles": real["cycles"][:2]})
    real[field] = value
    (copy / "real.json").write_text(json.dumps(real))
    with pytest.raises(GalotError, match=f"real.json: {says}"):
        export.load_training_set(copy, tiny_digits)
