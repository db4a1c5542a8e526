"""Z-Image (Turbo, Base): a single-stream flow-matching transformer conditioned on one Qwen3 model.

Written step for step as ``ZImagePipeline.__call__`` does it:

1. the prompt: each prompt through Qwen3's chat template, the *penultimate* hidden state, and only
   the prompt's own tokens (the attention mask drops the padding): one (L_i, D) tensor per prompt,
   of its own length. galot stacks them into (B, max L_i, D) with zero rows after each prompt's
   end; the transformer gets each row cut back to its own length (trailing all-zero rows are
   padding — a real hidden state is never exactly zero — and TextOpt's steps, projection and
   the diversity offsets keep them zero: their gradient is exactly zero);
2. latents (B, 16, h, w) in the pipeline's float32, passed as a list of (C, 1, h, w) frames;
3. the schedule: sigmas linspace(1, 1/T, T) with the scheduler's shift (mu for dynamic shifting);
4. each step: one transformer call on [cond…, uncond…] (the pipeline's order) at time
   (1000 − t)/1000; guidance is Z-Image's own: cond + w·(cond − uncond), on whenever w > 0
   (Z-Image-Turbo samples with w = 0: one half-size call). The transformer predicts x0 − ε, the
   pipeline negates it into the scheduler's velocity ε − x0; then the Euler step of the flow;
5. decoding: undo ``scaling_factor`` and ``shift_factor`` (``LatentImages._vae_latents``).

x̂₀ for the one-step estimators is the flow-matching one, x_t − σ·v (``schedule.predict_x0``).
TextOpt optimises the token states (the whole conditioning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from galot_core.t2i.backend import DiffusersT2I
from galot_core.t2i.loading import load_components
from galot_core.t2i.schedule import resolution_shift
from galot_core.t2i.text_encoders import with_text_encoders

_REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def own_tokens(tokens: Tensor) -> list[Tensor]:
    """Each row of (B, L, D) cut to its own length: trailing all-zero rows are padding (views:
    gradients reach ``tokens``)."""
    nonzero = tokens.detach().abs().amax(dim=-1) > 0
    lengths = [int(row.nonzero().max()) + 1 if row.any() else 1 for row in nonzero]
    return [tokens[i, :n] for i, n in enumerate(lengths)]


class ZImageT2I(DiffusersT2I):
    """Z-Image (``ZImagePipeline`` folders). ``denoiser`` holds the ``ZImageTransformer2DModel``;
    ``max_sequence_length`` caps the prompt tokens (the pipeline's 512)."""

    family = "zimage"

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, transformer: torch.nn.Module, scheduler: Any,
                 vae: torch.nn.Module, *, max_sequence_length: int = 512, **kwargs: Any) -> None:
        super().__init__(text_encoder, tokenizer, transformer, scheduler, vae, **kwargs)
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> ZImageT2I:
        """Wrap an already-built ``ZImagePipeline`` (components shared, not copied)."""
        return cls(pipe.text_encoder, pipe.tokenizer, pipe.transformer, pipe.scheduler, pipe.vae, **kwargs)

    @classmethod
    def _load_components(cls, folder: Path, **options: Any) -> dict[str, Any]:
        return load_components(folder, _REQUIRED, **options)

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    @with_text_encoders
    def encode(self, prompts: list[str]) -> Tensor:
        """Penultimate Qwen3 states of each prompt's own tokens, zero-padded to (B, max L_i, D), fp32
        (``ZImagePipeline._encode_prompt`` returns them as a list)."""
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True, enable_thinking=True)
                 for p in prompts]
        inputs = self.tokenizer(texts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                return_tensors="pt")
        mask = inputs.attention_mask.to(self.device).bool()
        states = self.text_encoder(input_ids=inputs.input_ids.to(self.device), attention_mask=mask,
                                   output_hidden_states=True).hidden_states[-2]
        rows = [states[i][mask[i]] for i in range(len(prompts))]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(torch.float32)

    # ------------------------------------------------------------------ family hooks

    def _image_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The pipeline's default is 1024 px per side."""
        default = self.resolution or 1024
        return height or default, width or default

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None, *,
                      height: int | None = None, width: int | None = None) -> Tensor:
        """(B, C, h, w) noise with h, w even, drawn like ``ZImagePipeline.prepare_latents``."""
        height, width = self._image_size(height, width)
        multiple = self.vae_scale_factor * 2
        shape = (batch_size, self.denoiser.config.in_channels, 2 * (height // multiple), 2 * (width // multiple))
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.compute_dtype)

    def _set_timesteps(self, num_inference_steps: int, noise: Tensor) -> None:
        mu = resolution_shift(self.scheduler, (noise.shape[-2] // 2) * (noise.shape[-1] // 2))
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        self.scheduler.set_begin_index(0)

    def _model_inputs(self, cond: Tensor, guidance_scale: float, dtype: torch.dtype, noise: Tensor) -> list[Tensor]:
        """Each prompt's own tokens, then (guidance on) the unconditional ones: the pipeline's list."""
        tokens = own_tokens(cond.to(dtype))
        if guidance_scale > 0:
            tokens += own_tokens(self.uncond.to(dtype)) * cond.shape[0]
        return tokens

    def _model_output(self, latents: Tensor, t: Tensor, inputs: list[Tensor], guidance_scale: float,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One transformer call: the (guided) velocity ε − x0, and x_t itself."""
        guided = guidance_scale > 0
        batch = latents.shape[0]
        timestep = (1000 - t.expand(batch)) / 1000
        frames = (latents.to(dtype).repeat(2, 1, 1, 1) if guided else latents.to(dtype)).unsqueeze(2)
        out = self.denoiser(list(frames.unbind(dim=0)), timestep.repeat(2) if guided else timestep, inputs,
                        return_dict=False)[0]
        self.num_denoiser_calls += 1
        out = torch.stack([o.to(torch.promote_types(dtype, torch.float32)) for o in out]).squeeze(2)
        if guided:
            cond, uncond = out[:batch], out[batch:]
            out = cond + guidance_scale * (cond - uncond)
        return -out, latents
