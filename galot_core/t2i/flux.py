"""FLUX.1 (schnell, dev): a flow-matching transformer on packed latents, conditioned on T5 + CLIP.

Written step for step as ``FluxPipeline.__call__`` does it:

1. the prompt: T5's last hidden state (``max_sequence_length`` tokens, 512 for dev, 256 is
   enough for schnell) and CLIP's pooled output; text position ids are zeros;
2. latents: noise (B, C, h, w) is packed into (B, h/2 · w/2, 4C) tokens of 2x2 patches, with
   (row, column) position ids per token;
3. the schedule: sigmas linspace(1, 1/T, T), shifted by mu, which grows with the number of
   image tokens (the "dynamic shift" of the real configs), or the scheduler's fixed shift;
4. each step: one transformer call at timestep sigma (t / 1000), with the guidance scale as an
   *input* for guidance-distilled models (dev) and nothing for schnell — no classifier-free
   guidance batch, so one call per step; then the Euler step x <- x + (sigma' - sigma) v;
5. decoding: unpack, undo ``scaling_factor`` and ``shift_factor``, VAE decode.

x̂₀ for the one-step estimators is the flow-matching one, x_t − σ·v (``DiffusersT2I._predict_x0``).
TextOpt optimises T5 tokens and CLIP pooled jointly (``galot_core/t2i/conditioning.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from galot_core.t2i.conditioning import Conditioning
from galot_core.t2i.loading import load_components, moved
from galot_core.t2i.packed import PackedT2I
from galot_core.t2i.schedule import resolution_shift, set_flow_timesteps
from galot_core.t2i.text_encoders import with_text_encoders

_REQUIRED = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


class _TransformerInputs(NamedTuple):
    tokens: Tensor
    pooled: Tensor
    text_ids: Tensor
    image_ids: Tensor
    guidance: Tensor | None


class FluxT2I(PackedT2I):
    """FLUX.1 (``FluxPipeline`` folders). ``denoiser`` holds the ``FluxTransformer2DModel``;
    ``max_sequence_length`` is the T5 prompt length (the pipeline's default 512)."""

    family = "flux"
    default_latent_side = 128  # the pipeline's default: 1024 px
    training_guidance = 3.5  # dev's guidance input while fitting a LoRA (diffusers' FLUX LoRA script)

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, text_encoder_2: torch.nn.Module,
                 tokenizer_2: Any, transformer: torch.nn.Module, scheduler: Any, vae: torch.nn.Module, *,
                 max_sequence_length: int = 512, **kwargs: Any) -> None:
        super().__init__(text_encoder, tokenizer, transformer, scheduler, vae, **kwargs)
        self.text_encoder_2 = moved(text_encoder_2, self.encoder_device, self.text_encoder_dtype)
        self.tokenizer_2 = tokenizer_2
        self._freeze(self.text_encoder_2)
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> FluxT2I:
        """Wrap an already-built ``FluxPipeline`` (components shared, not copied)."""
        return cls(pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2, pipe.tokenizer_2, pipe.transformer,
                   pipe.scheduler, pipe.vae, **kwargs)

    @classmethod
    def _load_components(cls, folder: Path, **options: Any) -> dict[str, Any]:
        return load_components(folder, _REQUIRED, **options)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    @with_text_encoders
    def encode_conditioning(self, prompts: list[str]) -> Conditioning:
        """T5 tokens (B, L, D) and CLIP pooled (B, P), fp32, as ``FluxPipeline.encode_prompt``."""
        clip_ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(self.device)
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5_ids = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length,
                                  truncation=True, return_tensors="pt").input_ids.to(self.device)
        tokens = self.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        return Conditioning(tokens.to(torch.float32), pooled.to(torch.float32))

    # ------------------------------------------------------------------ sizes and noise

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None, *,
                      height: int | None = None, width: int | None = None) -> Tensor:
        """Unpacked (B, C, h, w) noise, drawn like ``FluxPipeline.prepare_latents`` (h, w even)."""
        from diffusers.utils.torch_utils import randn_tensor

        height, width = self._image_size(height, width)
        multiple = self.vae_scale_factor * 2
        shape = (batch_size, self.denoiser.config.in_channels // 4, 2 * (height // multiple), 2 * (width // multiple))
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.compute_dtype)

    def _pack(self, noise: Tensor) -> Tensor:
        b, c, h, w = noise.shape
        return noise.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    def _unpack(self, latents: Tensor, noise: Tensor) -> Tensor:
        b, c, h, w = noise.shape
        return latents.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    # ------------------------------------------------------------------ family hooks

    def _set_timesteps(self, num_inference_steps: int, noise: Tensor) -> None:
        """Sigmas linspace(1, 1/T, T), shifted by mu(number of image tokens) when the config says so."""
        mu = resolution_shift(self.scheduler, (noise.shape[-2] // 2) * (noise.shape[-1] // 2))
        set_flow_timesteps(self.scheduler, num_inference_steps, mu, self.device)

    def _model_inputs(self, cond: Tensor, guidance_scale: float, dtype: torch.dtype,
                      noise: Tensor) -> _TransformerInputs:
        """Prompt parts, text and image position ids, and the guidance input (dev) or None (schnell)."""
        c = self.unpack(cond)
        h, w = noise.shape[-2] // 2, noise.shape[-1] // 2
        image_ids = torch.zeros(h, w, 3)
        image_ids[..., 1] += torch.arange(h)[:, None]
        image_ids[..., 2] += torch.arange(w)[None, :]
        image_ids = image_ids.reshape(h * w, 3).to(cond.device, cond.dtype)
        text_ids = torch.zeros(c.tokens.shape[1], 3, device=cond.device, dtype=cond.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full([cond.shape[0]], guidance_scale, device=cond.device, dtype=torch.float32)
        return _TransformerInputs(c.tokens.to(dtype), c.pooled.to(dtype), text_ids, image_ids, guidance)

    def _model_output(self, latents: Tensor, t: Tensor, inputs: _TransformerInputs, guidance_scale: float,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One transformer call (no classifier-free guidance batch): the velocity, and x_t itself."""
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        output = self.denoiser(hidden_states=latents.to(dtype), timestep=timestep / 1000, guidance=inputs.guidance,
                           pooled_projections=inputs.pooled, encoder_hidden_states=inputs.tokens,
                           txt_ids=inputs.text_ids, img_ids=inputs.image_ids, return_dict=False)[0]
        self.num_denoiser_calls += 1
        return output.to(torch.promote_types(dtype, torch.float32)), latents
