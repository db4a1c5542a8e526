import torch

from galot_core.checkpoint import load_classifier, save_classifier
from galot_core.config import TrainConfig
from galot_core.models import LossPredictionHead, build_model
from galot_core.train import accuracy, fit, predict
from galot_core.transforms import Preprocess

FAST = TrainConfig(epochs=5, min_steps=150, batch_size=32, device="cpu")


def _pre(d):
    return Preprocess(d.image_size, d.channels, d.mean, d.std)


def train_once(d, seed):
    torch.manual_seed(seed)
    model = build_model("small_cnn", 1, 10)
    fit(model, d.pool.images, d.pool.labels, _pre(d), FAST, natural=False, seed=seed)
    return model


def test_training_learns_digits_and_is_deterministic(tiny_digits):
    a, b = train_once(tiny_digits, 3), train_once(tiny_digits, 3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    acc = accuracy(a, tiny_digits.test.images, tiny_digits.test.labels, _pre(tiny_digits))
    assert acc > 0.75  # chance is 0.1


def test_predict_outputs(tiny_digits):
    model = build_model("small_cnn", 1, 10).eval()
    out = predict(model, tiny_digits.test.images[:10], _pre(tiny_digits), mc_samples=3, batch_size=4,
                  loss_head=LossPredictionHead(model.feature_dim))
    assert out["probs"].shape == (10, 10) and torch.allclose(out["probs"].sum(1), torch.ones(10))
    assert out["mc_probs"].shape == (3, 10, 10) and out["features"].shape == (10, 128)
    assert out["pred_loss"].shape == (10,)


def test_checkpoint_roundtrip_is_safetensors(tmp_path, tiny_digits):
    model = build_model("small_cnn", 1, 10).eval()
    head = LossPredictionHead(model.feature_dim)
    save_classifier(model, tmp_path / "m.safetensors", arch="small_cnn", in_channels=1, loss_head=head)
    loaded, loaded_head, _ = load_classifier(tmp_path / "m.safetensors")
    x = tiny_digits.test.images[:4]
    pre = _pre(tiny_digits)
    with torch.no_grad():
        assert torch.equal(model(pre(x)), loaded(pre(x)))
        assert torch.equal(head(model.embed(pre(x))), loaded_head(loaded.embed(pre(x))))
    assert (tmp_path / "m.safetensors").read_bytes()[8:9] == b"{"  # safetensors JSON header


def test_preprocess_resizes_and_maps_channels():
    pre = Preprocess(28, 1, (0.5,), (0.5,))
    rgb = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = pre(rgb)
    assert out.shape == (2, 1, 28, 28)
    out.sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all()
    u8 = torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)
    assert torch.allclose(pre(u8), torch.ones(1, 1, 28, 28))
