"""Stable Diffusion XL: two CLIP text encoders, pooled embeddings and size ("time") ids.

Same loop as SD 1/2 (a UNet, ε or v prediction, classifier-free guidance); what differs is the
conditioning, written here step for step as ``StableDiffusionXLPipeline`` does it:

1. each encoder's *penultimate* hidden state, concatenated along features (768 + 1280 = 2048
   for SDXL-base), and the second encoder's projected EOS embedding as the pooled vector;
2. the unconditional half is all zeros when the folder says ``force_zeros_for_empty_prompt``
   (SDXL-base does), else the encoding of "";
3. every UNet call also gets ``added_cond_kwargs``: the pooled vector and the six "time ids"
   (original size, crop corner, target size) that SDXL was trained with — here the generated
   size with no crop, the pipeline's default.

TextOpt optimises tokens and pooled jointly (see ``galot_core/t2i/conditioning.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from galot_core.errors import GalotError
from galot_core.t2i.conditioning import Conditioning
from galot_core.t2i.loading import load_components, model_index_flag, moved
from galot_core.t2i.packed import PackedT2I
from galot_core.t2i.text_encoders import with_text_encoders

_REQUIRED = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


class _UNetInputs(NamedTuple):
    hidden: Tensor
    pooled: Tensor
    time_ids: Tensor


class SDXLT2I(PackedT2I):
    """SDXL (``StableDiffusionXLPipeline`` folders). Extra args: the second encoder and tokenizer,
    and ``force_zeros_for_empty_prompt`` (the pipeline's config flag)."""

    family = "sdxl"

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, text_encoder_2: torch.nn.Module,
                 tokenizer_2: Any, unet: torch.nn.Module, scheduler: Any, vae: torch.nn.Module | None = None, *,
                 force_zeros_for_empty_prompt: bool = True, **kwargs: Any) -> None:
        super().__init__(text_encoder, tokenizer, unet, scheduler, vae, **kwargs)
        self.text_encoder_2 = moved(text_encoder_2, self.encoder_device, self.text_encoder_dtype)
        self.tokenizer_2 = tokenizer_2
        self._freeze(self.text_encoder_2)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        # SDXL's VAE overflows in fp16; the pipeline upcasts it to fp32 for decoding, we keep it there.
        if self.vae is not None and self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            self.vae = self.vae.to(torch.float32)
        # The pipeline's own check, as a user error: the UNet's added embedding must take
        # 6 time ids plus the pooled vector (a refiner-style UNet expects 5 ids and a score).
        passed = unet.config.addition_time_embed_dim * 6 + text_encoder_2.config.projection_dim
        expected = unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise GalotError(f"t2i.model: this SDXL UNet's added embedding takes {expected} features, but 6 size "
                             f"ids and the pooled vector give {passed} (a refiner?): use an SDXL base model")

    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> SDXLT2I:
        """Wrap an already-built ``StableDiffusionXLPipeline`` (components shared, not copied)."""
        return cls(pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2, pipe.tokenizer_2, pipe.unet,
                   pipe.scheduler, pipe.vae, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
                   **kwargs)

    @classmethod
    def _load_components(cls, folder: Path, **options: Any) -> dict[str, Any]:
        return {**load_components(folder, _REQUIRED, **options),
                "force_zeros_for_empty_prompt": model_index_flag(folder, "force_zeros_for_empty_prompt", True)}

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    @with_text_encoders
    def encode_conditioning(self, prompts: list[str]) -> Conditioning:
        """Tokens (B, 77, D1 + D2) and pooled (B, P), fp32, as ``StableDiffusionXLPipeline.encode_prompt``."""
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            output = encoder(ids, output_hidden_states=True)
            if pooled is None and output[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = output[0]
            states.append(output.hidden_states[-2])
        if pooled is None:
            raise GalotError("t2i.model: neither SDXL text encoder returns a pooled embedding: text_encoder_2 must "
                             "be a CLIPTextModelWithProjection")
        return Conditioning(torch.cat(states, dim=-1).to(torch.float32), pooled.to(torch.float32))

    def unconditional(self) -> Conditioning:
        """Zeros (force_zeros_for_empty_prompt, as the pipeline) or the encoding of ""."""
        empty = self.encode_conditioning([""])
        if self.force_zeros_for_empty_prompt:
            empty = Conditioning(torch.zeros_like(empty.tokens), torch.zeros_like(empty.pooled))
        return empty

    # ------------------------------------------------------------------ family hooks

    def _model_inputs(self, cond: Tensor, guidance_scale: float, dtype: torch.dtype, noise: Tensor) -> _UNetInputs:
        """Cross-attention states, pooled vector and time ids, [uncond, cond] stacked with guidance."""
        c = self.unpack(cond)
        height, width = (size * self.vae_scale_factor for size in noise.shape[-2:])
        # (original size, crop top-left, target size): generated size, no crop, as the pipeline's default.
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=cond.dtype, device=cond.device)
        hidden, pooled, batch = c.tokens, c.pooled, cond.shape[0]
        if guidance_scale > 1.0:
            u = self.unpack(self.uncond.to(cond.dtype))
            hidden = torch.cat([u.tokens.expand(batch, -1, -1), hidden])
            pooled = torch.cat([u.pooled.expand(batch, -1), pooled])
            batch *= 2
        return _UNetInputs(hidden.to(dtype), pooled.to(dtype), time_ids.repeat(batch, 1).to(dtype))

    def _denoiser_call(self, model_input: Tensor, t: Tensor, inputs: _UNetInputs) -> Tensor:
        added = {"text_embeds": inputs.pooled, "time_ids": inputs.time_ids}
        return self.denoiser(model_input, t, encoder_hidden_states=inputs.hidden, added_cond_kwargs=added,
                         return_dict=False)[0]
