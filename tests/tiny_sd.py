"""A tiny random Stable Diffusion pipeline built fully offline from configs (no hub access).

UNet: 8x8x4 latents, block_out_channels (32, 64), cross-attention dim 32; VAE: 16x16x3 images;
CLIP text encoder: hidden 32, 2 layers, 77 positions; a byte-level CLIP tokenizer written to a
temporary folder. Weights come from ``torch.manual_seed(seed)``, so every build is identical.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Stable Diffusion's own noise schedule (scaled_linear betas, "leading" spacing, offset 1).
SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
SCHEDULERS = {
    "ddim": (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False)),
    "pndm": (PNDMScheduler, dict(skip_prk_steps=True, set_alpha_to_one=False)),
    "euler": (EulerDiscreteScheduler, {}),
    "dpm": (DPMSolverMultistepScheduler, {}),
}


def make_scheduler(kind: str = "ddim", **overrides):
    """A fresh scheduler with SD's settings; ``overrides`` e.g. timestep_spacing="trailing"."""
    scheduler_class, settings = SCHEDULERS[kind]
    return scheduler_class(**{**SD_SCHEDULE, **settings, **overrides})


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table (transformers 5 no longer exports ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with byte-level tokens only (no merges): 514 ids, 77 positions."""
    chars = _byte_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def tiny_sd_pipeline(scheduler: str = "ddim", seed: int = 0) -> StableDiffusionPipeline:
    """The tiny pipeline in fp32 on the CPU, deterministic for a given ``seed``."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
