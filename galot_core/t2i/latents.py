"""Images <-> the denoiser's latents: the VAE side of a text-to-image backend.

A mixin of :class:`~galot_core.t2i.backend.DiffusersT2I`: the image size and initial noise, VAE
encoding (image-to-image) and decoding to [0, 1] images, including each family's latent scaling.
Kept apart so the backend module reads as the sampling loop; families override the size and
noise methods (FLUX packs latents and has its own default resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor


class LatentImages:
    """Conversions between images in [0, 1] and latents; needs ``denoiser``, ``vae`` (or ``None`` for a
    pixel-space model), ``device``, ``compute_dtype`` and ``resolution`` from the backend."""

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel; 1 for a pixel-space model."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] → latents x0 in the layout of :meth:`initial_noise`, at the
        size generation uses: the inverse of :meth:`_decode` (image-to-image, adaptation).

        Grey images are repeated to RGB and RGB images averaged to grey as the VAE needs; the
        size becomes :meth:`_image_size`'s (antialiased bilinear resize). Latents are the
        encoder's mean, not a sample: the same image always gives the same x0.
        """
        x = images.to(self.device, self.compute_dtype)
        size = self._image_size(None, None)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        channels = self.vae.config.in_channels if self.vae is not None else self.denoiser.config.in_channels
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1) if channels in (1, 3) else x
        if self.vae is None:
            return x * 2 - 1
        z = self.vae.encode((x * 2 - 1).to(self.vae.dtype)).latent_dist.mean
        return self._from_vae_latents(z.to(self.compute_dtype))

    def initial_noise(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
    ) -> Tensor:
        """Standard normal x_T (before ``init_noise_sigma``), drawn like the pipeline's ``prepare_latents``.

        Drawn in ``compute_dtype`` (fp32 for fp32/fp16/bf16 denoisers), so the same seed gives the
        same noise for every estimator and for those dtypes ("common random numbers").
        """
        height, width = self._image_size(height, width)
        shape = (
            batch_size,
            self.denoiser.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.compute_dtype)

    default_latent_side: int | None = None
    """The pipeline's default image side in latent pixels where the denoiser has no ``sample_size``
    (FLUX.1 and FLUX.2: 128, i.e. 1024 px)."""

    def _image_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) in pixels: the arguments, else ``resolution``, else the denoiser's sample_size
        (or :attr:`default_latent_side`) times the VAE factor (the pipeline's default)."""
        if self.resolution is not None:
            return height or self.resolution, width or self.resolution
        if self.default_latent_side is not None:
            side = self.default_latent_side * self.vae_scale_factor
            return height or side, width or side
        sample_size = self.denoiser.config.sample_size
        default_h, default_w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        return height or default_h * self.vae_scale_factor, width or default_w * self.vae_scale_factor

    def _decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [0, 1], like ``vae.decode`` + ``image_processor.postprocess(output_type="pt")``."""
        if self.vae is None:
            image = latents
        else:
            image = self.vae.decode(self._vae_latents(latents).to(self.vae.dtype), return_dict=False)[0]
        return (image.to(self.compute_dtype) * 0.5 + 0.5).clamp(0, 1)

    def _vae_latents(self, latents: Tensor) -> Tensor:
        """Denoiser latents -> the VAE's latent space: undo ``scaling_factor`` and, where the VAE
        config has them, ``shift_factor`` (FLUX, SD3) or per-channel ``latents_mean``/``latents_std``."""
        config = self.vae.config
        mean, std = config.get("latents_mean"), config.get("latents_std")
        if mean is not None and std is not None:
            view = (1, len(mean), 1, 1)
            return (latents * torch.tensor(std, dtype=latents.dtype, device=latents.device).view(view)
                    / config.scaling_factor + torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(view))
        latents = latents / config.scaling_factor
        shift = config.get("shift_factor")
        return latents + shift if shift is not None else latents

    def _from_vae_latents(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`_vae_latents`: the VAE's latents → the denoiser's."""
        config = self.vae.config
        mean, std = config.get("latents_mean"), config.get("latents_std")
        if mean is not None and std is not None:
            view = (1, len(mean), 1, 1)
            return ((z - torch.tensor(mean, dtype=z.dtype, device=z.device).view(view)) * config.scaling_factor
                    / torch.tensor(std, dtype=z.dtype, device=z.device).view(view))
        shift = config.get("shift_factor")
        return (z - shift if shift is not None else z) * config.scaling_factor
