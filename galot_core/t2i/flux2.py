"""FLUX.2 [klein]: a flow-matching transformer on packed latents, conditioned on one Qwen3 model.

Written step for step as ``Flux2KleinPipeline.__call__`` does it:

1. the prompt: each prompt through Qwen3's chat template (no thinking), padded to
   ``max_sequence_length`` (512); the hidden states of three layers (9, 18, 27) stacked along
   features: (B, 512, 3·D) — 7,680 wide for the 4B model. No pooled vector; text position ids
   are (0, 0, 0, l);
2. latents: noise is drawn already patchified, (B, 4C, h/2, w/2), and packed into (B, h/2·w/2, 4C)
   tokens with (0, row, column, 0) position ids;
3. the schedule: sigmas linspace(1, 1/T, T) shifted by FLUX.2's empirical mu, which depends on the
   number of image tokens *and* of steps;
4. each step: one transformer call at σ (t / 1000), no guidance input; the base (undistilled)
   models use classifier-free guidance against the encoding of "" — the pipeline makes two calls,
   we make one on the [uncond, cond] batch (the same numbers); distilled models
   (``is_distilled``, e.g. FLUX.2-klein-4B) never use it. Then the Euler step of the flow;
5. decoding: unpack, undo the VAE's batch-norm statistics, unpatchify, decode.

x̂₀ for the one-step estimators is the flow-matching one, x_t − σ·v (``schedule.predict_x0``).
TextOpt optimises the token states, which are the whole conditioning (``conditioning.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from galot_core.errors import GalotError
from galot_core.t2i.backend import DiffusersT2I
from galot_core.t2i.loading import load_components, model_index_flag
from galot_core.t2i.schedule import set_flow_timesteps
from galot_core.t2i.text_encoders import with_text_encoders

_REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


class _TransformerInputs(NamedTuple):
    tokens: Tensor
    text_ids: Tensor
    image_ids: Tensor


def position_ids(rows: int, cols: int, text_length: int, batch: int) -> tuple[Tensor, Tensor]:
    """FLUX.2's 4-d (T, H, W, L) position ids: text (B, L, 4) = (0, 0, 0, l), image (B, rows·cols, 4) =
    (0, row, column, 0), as ``Flux2KleinPipeline._prepare_text_ids`` / ``_prepare_latent_ids``."""
    zero = torch.arange(1)
    text = torch.cartesian_prod(zero, zero, zero, torch.arange(text_length))
    image = torch.cartesian_prod(zero, torch.arange(rows), torch.arange(cols), zero)
    return text.unsqueeze(0).expand(batch, -1, -1), image.unsqueeze(0).expand(batch, -1, -1)


class Flux2KleinT2I(DiffusersT2I):
    """FLUX.2 [klein] (``Flux2KleinPipeline`` folders). ``denoiser`` holds the ``Flux2Transformer2DModel``.

    Args (besides the backend's):
        is_distilled: the pipeline's config flag: step-distilled models ignore guidance.
        max_sequence_length: prompt tokens (the pipeline's 512).
        text_encoder_out_layers: the Qwen3 layers whose states are stacked (the pipeline's (9, 18, 27)).
    """

    family = "flux2"
    default_latent_side = 128  # the pipeline's default: 1024 px

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, transformer: torch.nn.Module, scheduler: Any,
                 vae: torch.nn.Module, *, is_distilled: bool = False, max_sequence_length: int = 512,
                 text_encoder_out_layers: tuple[int, ...] = (9, 18, 27), **kwargs: Any) -> None:
        super().__init__(text_encoder, tokenizer, transformer, scheduler, vae, **kwargs)
        self.is_distilled = is_distilled
        self.max_sequence_length = max_sequence_length
        layers = text_encoder.config.num_hidden_layers
        if max(text_encoder_out_layers) > layers:
            raise GalotError(f"t2i.model: FLUX.2 reads Qwen3 layers {list(text_encoder_out_layers)}, but this text "
                             f"encoder has {layers}: use the model's own Qwen3 text encoder")
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)

    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> Flux2KleinT2I:
        """Wrap an already-built ``Flux2KleinPipeline`` (components shared, not copied)."""
        return cls(pipe.text_encoder, pipe.tokenizer, pipe.transformer, pipe.scheduler, pipe.vae,
                   is_distilled=pipe.config.is_distilled, **kwargs)

    @classmethod
    def _load_components(cls, folder: Path, **options: Any) -> dict[str, Any]:
        return {**load_components(folder, _REQUIRED, **options),
                "is_distilled": model_index_flag(folder, "is_distilled", False)}

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    @with_text_encoders
    def encode(self, prompts: list[str]) -> Tensor:
        """Stacked Qwen3 states (B, L, 3·D), fp32, as ``Flux2KleinPipeline._get_qwen3_prompt_embeds``."""
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True, enable_thinking=False)
                 for p in prompts]
        inputs = [self.tokenizer(text, return_tensors="pt", padding="max_length", truncation=True,
                                 max_length=self.max_sequence_length) for text in texts]
        output = self.text_encoder(input_ids=torch.cat([i["input_ids"] for i in inputs]).to(self.device),
                                   attention_mask=torch.cat([i["attention_mask"] for i in inputs]).to(self.device),
                                   output_hidden_states=True, use_cache=False)
        states = torch.stack([output.hidden_states[k] for k in self.text_encoder_out_layers], dim=1)
        b, n, length, dim = states.shape
        return states.permute(0, 2, 1, 3).reshape(b, length, n * dim).to(torch.float32)

    # ------------------------------------------------------------------ sizes, noise and latents

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None, *,
                      height: int | None = None, width: int | None = None) -> Tensor:
        """Patchified (B, 4C, h/2, w/2) noise, drawn like ``Flux2KleinPipeline.prepare_latents``."""
        height, width = self._image_size(height, width)
        multiple = self.vae_scale_factor * 2
        shape = (batch_size, self.denoiser.config.in_channels, height // multiple, width // multiple)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.compute_dtype)

    def _pack(self, noise: Tensor) -> Tensor:
        return noise.flatten(2).permute(0, 2, 1)

    def _unpack(self, latents: Tensor, noise: Tensor) -> Tensor:
        return latents.permute(0, 2, 1).reshape(noise.shape)

    def _vae_latents(self, latents: Tensor) -> Tensor:
        """Patchified latents → the VAE's: undo the batch-norm statistics, then unpatchify (2x2)."""
        bn, eps = self.vae.bn, self.vae.config.batch_norm_eps
        latents = latents * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(latents) + \
            bn.running_mean.view(1, -1, 1, 1).to(latents)
        b, c, h, w = latents.shape
        return latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)

    def _from_vae_latents(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`_vae_latents`: patchify (2x2), then the batch-norm statistics."""
        b, c, h, w = z.shape
        z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        bn, eps = self.vae.bn, self.vae.config.batch_norm_eps
        return (z - bn.running_mean.view(1, -1, 1, 1).to(z)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(z)

    # ------------------------------------------------------------------ family hooks

    def _set_timesteps(self, num_inference_steps: int, noise: Tensor) -> None:
        """FLUX's sigmas, shifted by FLUX.2's empirical mu(image tokens, steps)."""
        mu = compute_empirical_mu(image_seq_len=noise.shape[-2] * noise.shape[-1], num_steps=num_inference_steps)
        set_flow_timesteps(self.scheduler, num_inference_steps, mu, self.device)

    def _guided(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0 and not self.is_distilled

    def _model_inputs(self, cond: Tensor, guidance_scale: float, dtype: torch.dtype,
                      noise: Tensor) -> _TransformerInputs:
        """Prompt states ([uncond, cond] with guidance) and the text and image position ids."""
        tokens = cond
        if self._guided(guidance_scale):
            tokens = torch.cat([self.uncond.to(cond.dtype).expand(cond.shape[0], -1, -1), cond])
        text_ids, image_ids = position_ids(noise.shape[-2], noise.shape[-1], cond.shape[1], tokens.shape[0])
        return _TransformerInputs(tokens.to(dtype), text_ids.to(cond.device), image_ids.to(cond.device))

    def _model_output(self, latents: Tensor, t: Tensor, inputs: _TransformerInputs, guidance_scale: float,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One transformer call (on [uncond, cond] when guided): the (guided) velocity, and x_t itself."""
        guided = self._guided(guidance_scale)
        model_input = torch.cat([latents] * 2) if guided else latents
        timestep = t.expand(model_input.shape[0]).to(latents.dtype)
        output = self.denoiser(hidden_states=model_input.to(dtype), timestep=timestep / 1000, guidance=None,
                           encoder_hidden_states=inputs.tokens, txt_ids=inputs.text_ids, img_ids=inputs.image_ids,
                           return_dict=False)[0]
        self.num_denoiser_calls += 1
        output = output.to(torch.promote_types(dtype, torch.float32))
        if guided:
            uncond, cond = output.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        return output, latents
