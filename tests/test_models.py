import pytest
import torch

from galot_core.config import ARCHITECTURES
from galot_core.errors import GalotError
from galot_core.models import build_model, mc_dropout


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_forward_shapes_and_features(arch, size, channels):
    torch.manual_seed(0)
    model = build_model(arch, channels, 7).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        feats = model.embed(x)
        logits = model(x)
    assert feats.shape == (2, model.feature_dim) and logits.shape == (2, 7)
    assert torch.allclose(model.classify(feats), logits)


def test_mc_dropout_samples_differ_and_restores_mode():
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 10, dropout=0.5).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), mc_dropout(model):
        a, b = model(x), model(x)
        assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(a, b)
    assert not model.training
    with torch.no_grad():
        assert torch.allclose(model(x), model(x))


def test_unknown_arch():
    with pytest.raises(GalotError, match="model.arch"):
        build_model("resnet50", 3, 10)
