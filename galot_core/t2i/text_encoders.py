"""Where a backend's text encoders live: on the device, or on the CPU between encodings.

galot encodes its prompts once per cycle (the class templates and ""), then runs the denoiser
and the VAE thousands of times, through both of which TextOpt backpropagates at every step. So
only the text encoders are worth moving off the accelerator (``t2i.offload_text_encoders``):
T5-XXL (SD3, FLUX.1) is 9.5 GB in fp32, Qwen3-4B (FLUX.2 klein) 8 GB in bf16, and they idle
between cycles. Offloading the denoiser or the VAE as diffusers' ``enable_model_cpu_offload``
does would move the whole model across PCIe at every TextOpt step (both are in its backward
graph), so galot does not offer it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


class TextEncoderPlacement:
    """A mixin of :class:`~galot_core.t2i.backend.DiffusersT2I`; needs ``device`` and
    ``offload_text_encoders``."""

    @property
    def encoder_device(self) -> torch.device:
        """Where the text encoders wait between encodings: the CPU when offloaded, else the device."""
        return torch.device("cpu") if self.offload_text_encoders else self.device

    @contextmanager
    def text_encoders_on_device(self) -> Iterator[None]:
        """The text encoders on ``device`` for the block, back on the CPU after it when offloaded."""
        encoders = [getattr(self, name) for name in _ENCODERS if getattr(self, name, None) is not None]
        moving = self.encoder_device != self.device
        if moving:
            for encoder in encoders:
                encoder.to(self.device)
        try:
            yield
        finally:
            if moving:
                for encoder in encoders:
                    encoder.to(self.encoder_device)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


def with_text_encoders(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a backend's prompt-encoding method: it runs with the text encoders on the device."""

    @functools.wraps(method)
    def encoding(self: TextEncoderPlacement, *args: Any, **kwargs: Any) -> Any:
        with self.text_encoders_on_device():
            return method(self, *args, **kwargs)

    return encoding
