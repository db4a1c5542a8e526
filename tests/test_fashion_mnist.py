"""The Fashion world: IDX parsing, its split, the missing-files error and pretraining on it."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from galot_core.data import fashion_mnist as fm
from galot_core.errors import GalotError

ROOT = Path(__file__).resolve().parents[1]
have_files = pytest.mark.skipif(not (Path(fm.DEBIAN_ROOT) / fm.FILES["train"][0]).is_file(),
                                reason="dataset-fashion-mnist is not installed (make setup installs it as root)")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_read_idx_round_trips_a_file_it_did_not_write(tmp_path, name):
    a = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / name, a)
    out = fm.read_idx(tmp_path / name)
    assert out.shape == (3, 4, 5) and out.dtype == np.uint8 and np.array_equal(out, a)


def test_read_idx_rejects_wrong_type_and_truncation_in_one_line(tmp_path):
    (tmp_path / "float.idx").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0\0\0\0")
    write_idx(tmp_path / "short.idx", np.zeros((4, 2), np.uint8))
    (tmp_path / "short.idx").write_bytes((tmp_path / "short.idx").read_bytes()[:-3])
    for name, words in (("float.idx", "unsigned bytes"), ("short.idx", "truncated")):
        with pytest.raises(GalotError) as e:
            fm.read_idx(tmp_path / name)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_a_users_own_copy_in_data_root_is_used(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 10 * sum(fm.PER_CLASS.values())), ("test", 20)):
        images_name, labels_name = fm.FILES[part]
        write_idx(tmp_path / images_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / labels_name, np.arange(n) % 10)
    d = fm.load_fashion_mnist(str(tmp_path))
    assert d.root == str(tmp_path) and len(d.test) == 20 and len(d.pool) == 10 * fm.PER_CLASS["pool"]


def test_split_is_disjoint_stratified_and_deterministic():
    labels = torch.arange(10).repeat_interleave(3000)  # a stand-in of the training labels' shape
    a, b = fm.split_indices(labels), fm.split_indices(labels)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sets = [set(v.tolist()) for v in a.values()]
    assert sum(map(len, sets)) == len(set.union(*sets))  # disjoint
    for name, per in fm.PER_CLASS.items():
        assert torch.equal(torch.bincount(labels[a[name]], minlength=10), torch.full((10,), per))


@have_files
def test_real_files_give_the_documented_world():
    d = fm.load_fashion_mnist()
    assert (len(d.t2i_train), len(d.pool), len(d.val), len(d.test)) == (20000, 5000, 2000, 10000)
    assert d.class_names[9] == "ankle boot" and d.natural and d.channels == 1 and d.image_size == 28
    for s, per in ((d.t2i_train, 2000), (d.pool, 500), (d.val, 200), (d.test, 1000)):
        assert torch.equal(torch.bincount(s.labels, minlength=10), torch.full((10,), per))
    # The three training-image splits are disjoint: no image (pixels) of the pool is in the others.
    pool = {bytes(x.numpy()) for x in d.pool.images}
    assert not pool & {bytes(x.numpy()) for x in d.val.images}
    assert sum(bytes(x.numpy()) in pool for x in d.t2i_train.images) <= 2  # Fashion-MNIST has a few exact duplicates
    assert torch.equal(fm.load_fashion_mnist().pool.images, d.pool.images)


def test_missing_files_are_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    from galot.flows.cli import main

    monkeypatch.setattr(fm, "DEBIAN_ROOT", str(tmp_path / "no-debian"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "prepared.json"
    rc = main(["prepare", "--params", str(ROOT / "worlds" / "fashion" / "params.yaml"), "--out", str(out),
               "--set", f"data.root={tmp_path / 'empty'}", "--set", "experiment.judge=null"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err and "data.root" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_pretraining_on_clothing_captions(tmp_path):
    from galot_core.config import PretrainConfig
    from galot_core.t2i import DiffusersT2I
    from galot_core.t2i.embedded import pretrain

    torch.set_num_threads(1)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    cfg = PretrainConfig(vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1)
    info = pretrain(images, labels, fm.CLASS_NAMES, tmp_path / "mini", cfg, progress=False, captions=fm.captions())
    assert info["captions"][9][0] == "ankle boot" and "templates" not in info
    assert all("realistic" not in c for per_class in info["captions"] for c in per_class)
    t2i = DiffusersT2I.from_pretrained(str(tmp_path / "mini"), device="cpu", dtype="fp32")
    out = t2i.generate(t2i.encode(["a realistic photo of a sneaker"]), num_inference_steps=2, guidance_scale=3.0,
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 1, 32, 32)


def test_world_params_differ_from_the_default_only_in_world_keys():
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    world = yaml.safe_load((ROOT / "worlds" / "fashion" / "params.yaml").read_text())
    diff = {f"{s}.{k}" for s in default for k in default[s] if world[s].get(k) != default[s][k]}
    assert diff <= {"experiment.judge", "data.dataset", "pretrain.vae_steps", "pretrain.unet_steps"}
    assert set(world) == set(default) and all(set(world[s]) == set(default[s]) for s in default)


def test_world_pipeline_is_the_default_pipeline():
    """DVC reads dvc.yaml from the folder it runs in (and refuses an ignored one), so the world keeps a
    copy of the repository's pipeline; the two must never drift apart. The one difference: the stages'
    code deps (galot_core/…, tasks, flows/…) are paths relative to the folder DVC runs in, two levels
    down; every other byte is the same."""
    import re

    default = (ROOT / "dvc.yaml").read_text()
    world = (ROOT / "worlds" / "fashion" / "dvc.yaml").read_text()
    assert world == re.sub(r"(?m)^(\s+- )(galot_core|tasks|flows)([/ ]|$)", r"\1../../\2\3", default)
    deps = re.findall(r"(?m)^\s+- (\.\./\.\./\S+)$", world)
    assert len(deps) > 50 and all((ROOT / "worlds" / "fashion" / d).resolve().exists() for d in deps)
