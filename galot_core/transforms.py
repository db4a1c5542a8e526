"""How a classifier sees images — the same, differentiable path for real and generated ones.

A classifier is trained on real images decoded to ``uint8`` at the dataset's size and
channel count. Images from a text-to-image model arrive as floats in [0, 1], at the
generator's size (512 px for Stable Diffusion) and usually RGB. :class:`Preprocess`
maps both to exactly what the classifier was trained on — range, antialiased resize to
the dataset's size, channel count, normalisation — and stays differentiable so TextOpt's
gradient flows through it. (The authors' code fed raw [−1, 1] decoder output, unresized
with antialias and unnormalised, to the classifier; a gradient through that path
optimises for a different input distribution than the one the classifier knows.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LUMA = (0.299, 0.587, 0.114)


class Preprocess(nn.Module):
    """uint8 or [0, 1] float images, any size/channels → normalised classifier input."""

    def __init__(self, size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.size = size
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.channels:
            if self.channels == 1 and x.shape[1] == 3:
                x = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            elif self.channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"cannot map {x.shape[1]} channels to {self.channels}")
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → uint8, rounding the way PNG encoders do."""
    return (images.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)


def augment(images: torch.Tensor, *, crop: bool, flip: bool, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero padding) and horizontal flip, per image."""
    n, _, h, w = images.shape
    out = images
    if crop and pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        if mask.any():
            out = out.clone()
            out[mask] = out[mask].flip(-1)
    return out
