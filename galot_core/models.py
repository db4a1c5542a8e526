"""The classifier zoo: small-input versions of the paper's architectures plus a digit CNN.

Every model is a :class:`Classifier` — a backbone that ends in a pooled feature vector,
then dropout and one linear layer. The split is what active learning needs:
BADGE, CoreSet and KMeans work on the penultimate features (:meth:`Classifier.embed`),
BADGE also on the last layer's gradient, and BALD / MeanSTD on Monte-Carlo dropout
(:func:`mc_dropout`) — the dropout is real and trained, unlike in the authors' code,
where networks without dropout made BALD pure noise.

Backbones come from torchvision's definitions, adapted to 28–64 px inputs the way the
CIFAR literature does it (3×3 stride-1 stem, no stem max-pool) and to any channel count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torchvision import models as tvm

from galot_core.errors import GalotError


class Classifier(nn.Module):
    """backbone → features (N, D) → dropout → linear → logits (N, C)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, before dropout."""
        return self.backbone(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode everywhere except dropout layers, which keep sampling masks."""
    was_training = model.training
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    try:
        yield model
    finally:
        model.train(was_training)


class _SmallCNN(nn.Module):
    """Two conv blocks and a hidden layer: enough for 97%+ on digits, fast on a CPU."""

    def __init__(self, in_channels: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]

        self.body = nn.Sequential(*block(in_channels, width), *block(width, 2 * width), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * width, feature_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _stem(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)


def _resnet18(in_channels: int) -> tuple[nn.Module, int]:
    net = tvm.resnet18(weights=None)
    net.conv1 = _stem(in_channels, 64)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


def _vgg16(in_channels: int) -> tuple[nn.Module, int]:
    # torchvision's VGG16 has no batch norm; the CIFAR literature (and the paper's code
    # base) uses the batch-norm variant, which trains from scratch without tricks.
    net = tvm.vgg16_bn(weights=None)
    layers = list(net.features)
    layers[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    # ceil_mode keeps five poolings valid for 28 px inputs (28→14→7→4→2→1).
    layers = [nn.MaxPool2d(2, ceil_mode=True) if isinstance(m, nn.MaxPool2d) else m for m in layers]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 512


def _densenet121(in_channels: int) -> tuple[nn.Module, int]:
    net = tvm.densenet121(weights=None)
    net.features.conv0 = _stem(in_channels, 64)
    net.features.pool0 = nn.Identity()
    return nn.Sequential(net.features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 1024


def _mobilenet_v2(in_channels: int) -> tuple[nn.Module, int]:
    net = tvm.mobilenet_v2(weights=None)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
    return nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 1280


_BACKBONES = {
    "small_cnn": lambda c: (_SmallCNN(c), 128),
    "resnet18": _resnet18,
    "vgg16": _vgg16,
    "densenet121": _densenet121,
    "mobilenet_v2": _mobilenet_v2,
}


def build_model(arch: str, in_channels: int, num_classes: int, dropout: float = 0.2) -> Classifier:
    if arch not in _BACKBONES:
        raise GalotError(f"model.arch: unknown architecture {arch!r}; choose one of {', '.join(_BACKBONES)}")
    backbone, dim = _BACKBONES[arch](in_channels)
    return Classifier(backbone, dim, num_classes, dropout)


class LossPredictionHead(nn.Module):
    """Predicts a sample's training loss from its features (Yoo & Kweon, "Learning loss").

    The original attaches to several intermediate blocks; attaching to the penultimate
    features keeps it architecture-agnostic across the whole zoo, at some loss of signal.
    """

    def __init__(self, feature_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(1)


def loss_prediction_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The pairwise ranking loss of Yoo & Kweon: only the order of the losses is learned."""
    n = predicted.shape[0] // 2 * 2
    if n < 2:
        return predicted.sum() * 0.0
    p, t = predicted[:n], target[:n].detach()
    p_i, p_j = p[: n // 2], p[n // 2:].flip(0)
    t_i, t_j = t[: n // 2], t[n // 2:].flip(0)
    sign = torch.sign(t_i - t_j)
    return torch.clamp(margin - sign * (p_i - p_j), min=0).mean()
