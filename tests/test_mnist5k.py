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
