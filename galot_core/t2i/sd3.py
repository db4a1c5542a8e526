"""Stable Diffusion 3 / 3.5: a flow-matching MMDiT conditioned on CLIP-L + CLIP-G + T5.

Written step for step as ``StableDiffusion3Pipeline.__call__`` does it:

1. the prompt: each CLIP encoder's *penultimate* hidden state (77 tokens), concatenated along
   features (768 + 1280), zero-padded to T5's width (4096) and followed by T5's last hidden
   state (``max_sequence_length`` tokens, 256 by default) along the sequence: (B, 77 + 256, 4096).
   The pooled vector is both encoders' projected EOS embeddings, concatenated (768 + 1280).
   A folder saved without T5 (``text_encoder_3`` null) gets zeros in its place, as the pipeline;
2. the unconditional half of guidance is the encoding of "" (SD3 has no zeroed negative prompt);
3. latents (B, 16, h, w) as they are (the transformer patchifies them itself);
4. the schedule: the scheduler's own ``set_timesteps`` (a fixed shift of 3.0 for SD3/3.5), or the
   resolution-dependent shift mu when its config says ``use_dynamic_shifting``;
5. each step: one transformer call on [uncond, cond] at the raw timestep t (σ·1000), guidance
   uncond + w (cond − uncond), the Euler step of the flow;
6. decoding: undo ``scaling_factor`` and ``shift_factor`` (``LatentImages._vae_latents``).

x̂₀ for the one-step estimators is the flow-matching one, x_t − σ·v (``schedule.predict_x0``).
TextOpt optimises tokens and pooled jointly (``galot_core/t2i/conditioning.py``).
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
from galot_core.t2i.schedule import resolution_shift
from galot_core.t2i.text_encoders import with_text_encoders

_REQUIRED = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_OPTIONAL = ("text_encoder_3", "tokenizer_3")


class _TransformerInputs(NamedTuple):
    tokens: Tensor
    pooled: Tensor


class SD3T2I(PackedT2I):
    """SD3 / SD3.5 (``StableDiffusion3Pipeline`` folders). ``denoiser`` holds the ``SD3Transformer2DModel``;
    ``text_encoder_3``/``tokenizer_3`` (T5) may be ``None``; ``max_sequence_length`` is T5's prompt
    length (the pipeline's default 256)."""

    family = "sd3"

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, text_encoder_2: torch.nn.Module,
                 tokenizer_2: Any, text_encoder_3: torch.nn.Module | None, tokenizer_3: Any | None,
                 transformer: torch.nn.Module, scheduler: Any, vae: torch.nn.Module, *,
                 max_sequence_length: int = 256, **kwargs: Any) -> None:
        super().__init__(text_encoder, tokenizer, transformer, scheduler, vae, **kwargs)
        self.text_encoder_2 = moved(text_encoder_2, self.encoder_device, self.text_encoder_dtype)
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_3 = None if text_encoder_3 is None else moved(text_encoder_3, self.encoder_device,
                                                                        self.text_encoder_dtype)
        self.tokenizer_3 = tokenizer_3
        self._freeze(self.text_encoder_2, self.text_encoder_3)
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> SD3T2I:
        """Wrap an already-built ``StableDiffusion3Pipeline`` (components shared, not copied)."""
        return cls(pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2, pipe.tokenizer_2, pipe.text_encoder_3,
                   pipe.tokenizer_3, pipe.transformer, pipe.scheduler, pipe.vae, **kwargs)

    @classmethod
    def _load_components(cls, folder: Path, **options: Any) -> dict[str, Any]:
        """T5 (text_encoder_3, tokenizer_3) only where the folder lists it."""
        return load_components(folder, _REQUIRED, _OPTIONAL, **options)

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    @with_text_encoders
    def encode_conditioning(self, prompts: list[str]) -> Conditioning:
        """Tokens (B, 77 + L, D_T5) and pooled (B, P_L + P_G), fp32, as ``StableDiffusion3Pipeline.encode_prompt``."""
        states, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(self.device)
            output = encoder(ids, output_hidden_states=True)
            pooled.append(output[0])
            states.append(output.hidden_states[-2])
        clip = torch.cat(states, dim=-1).to(torch.float32)
        t5 = self._t5_states(prompts).to(torch.float32)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1).to(torch.float32))

    def _t5_states(self, prompts: list[str]) -> Tensor:
        """T5's last hidden state, or zeros of the transformer's joint width without T5 (as the pipeline)."""
        if self.text_encoder_3 is None:
            return torch.zeros(len(prompts), self.max_sequence_length, self.denoiser.config.joint_attention_dim,
                               device=self.device)
        ids = self.tokenizer_3(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder_3(ids)[0]

    # ------------------------------------------------------------------ family hooks

    def _set_timesteps(self, num_inference_steps: int, noise: Tensor) -> None:
        """The scheduler's own sigmas; with ``use_dynamic_shifting``, shifted by mu(image tokens)."""
        kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", None):
            patch = self.denoiser.config.patch_size
            kwargs["mu"] = resolution_shift(self.scheduler, (noise.shape[-2] // patch) * (noise.shape[-1] // patch),
                                            max_shift=1.16)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device, **kwargs)

    def _model_inputs(self, cond: Tensor, guidance_scale: float, dtype: torch.dtype,
                      noise: Tensor) -> _TransformerInputs:
        """Joint-attention tokens and pooled vector, [uncond, cond] stacked with guidance."""
        c, batch = self.unpack(cond), cond.shape[0]
        tokens, pooled = c.tokens, c.pooled
        if guidance_scale > 1.0:
            u = self.unpack(self.uncond.to(cond.dtype))
            tokens = torch.cat([u.tokens.expand(batch, -1, -1), tokens])
            pooled = torch.cat([u.pooled.expand(batch, -1), pooled])
        return _TransformerInputs(tokens.to(dtype), pooled.to(dtype))

    def _denoiser_call(self, model_input: Tensor, t: Tensor, inputs: _TransformerInputs) -> Tensor:
        return self.denoiser(hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
                         encoder_hidden_states=inputs.tokens, pooled_projections=inputs.pooled,
                         return_dict=False)[0]
