"""A Stable-Diffusion-2.1-base-SHAPED pipeline with random weights, built offline from configs.

The paper's T2I model is Stable Diffusion 2.1 base (512 px, 50 steps). Its weights cannot be
downloaded here, and a timing does not depend on the weights' values, only on the shapes: so
``benchmarks/perf/run.py --sd21`` times galot's loop on a model with SD 2.1 base's layer sizes
and random weights. Its images are noise; its seconds per image are those of the real model
(same layers, same attention, same resolution), up to data-dependent effects that a random
model does not have (none in this loop: no early exit, no NaN check).

Mirrors galot_core/t2i/tiny.py at full size: the same byte-level CLIP tokenizer (no download; the
prompt is padded to 77 tokens either way, so the text encoder's cost is the same), and SD's
noise schedule. The configs below are those of stabilityai/stable-diffusion-2-1-base's
unet/, vae/, text_encoder/ and scheduler/ folders (attention_head_dim there is SD 2's
per-block number of heads: 5, 10, 20, 20 heads of 64 channels).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from galot_core.t2i.tiny import SD_SCHEDULE, tiny_tokenizer

UNET = dict(
    sample_size=64,  # 64×64 latents = 512 px
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
# OpenCLIP ViT-H/14's text tower as SD 2.x ships it: 23 of its 24 layers (the penultimate layer's output).
TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
# SD 2.1 *base* predicts epsilon (the 768 px SD 2.1 predicts v).
SCHEDULER = dict(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def sd21_shaped_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         seed: int = 0) -> StableDiffusionPipeline:
    """The SD-2.1-base-shaped pipeline on ``device``; UNet and VAE in ``dtype``, text encoder fp32.

    Weights are initialised directly on ``device`` from ``torch.manual_seed(seed)``, so a GPU
    run skips the CPU-side initialisation of ~1.3 B parameters (10–20 s on one CPU thread). The
    text encoder stays fp32 because ``DiffusersT2I`` keeps it fp32 anyway (prompt embeddings are
    what TextOpt optimises). About 866 M UNet, 84 M VAE and 340 M text-encoder parameters:
    ~5 GB in fp32; the CPU smoke test of run.py peaks at ~7 GB of memory.
    """
    device = torch.device(device)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    with device:
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **TEXT_ENCODER,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    return StableDiffusionPipeline(
        vae=_cast(vae, dtype).eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=_cast(unet, dtype).eval(),
        scheduler=DDIMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast only when the dtype changes: diffusers warns on every ``.to(dtype=...)``, even a no-op."""
    return module if module.dtype == dtype else module.to(dtype=dtype)


def fp16_baseline_view(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The same UNet, VAE and scheduler as ``pipe``, for timing diffusers' own ``__call__``.

    ``StableDiffusionPipeline.__call__`` casts prompt embeddings to its text encoder's dtype
    and keeps the latents in that dtype, so with an fp16 UNet it needs an fp16 text encoder, as
    in ``from_pretrained(..., torch_dtype=torch.float16)``. ``DiffusersT2I`` casts the shared
    text encoder to fp32 in place; the view has none, so diffusers casts the (given) prompt
    embeddings to the UNet's dtype instead. The timed loop never calls the text encoder.
    """
    return StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=None,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
