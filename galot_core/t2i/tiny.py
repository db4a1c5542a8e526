"""Tiny random text-to-image pipelines of every family galot supports, built fully offline from configs.

For smoke tests without the hub: the suite's tests and the benchmarks' CPU smoke runs both build
their pipelines here, and a user can check a family end to end offline the same way. Weights
come from ``torch.manual_seed(seed)``, so every build is identical; tokenizers are written locally.

Stable Diffusion (``tiny_sd_pipeline``): UNet 8x8x4 latents, block_out_channels (32, 64),
cross-attention dim 32; VAE 16x16x3 images; CLIP text encoder hidden 32, 2 layers, 77 positions;
a byte-level CLIP tokenizer written to a temporary folder.

The other families: the shapes follow each family's real layout (SDXL's two CLIP encoders
with pooled embeddings and time ids; FLUX's CLIP-pooled + T5 tokens, packed 2x2 latents,
flow matching; SD3's three encoders; FLUX.2 klein's stacked Qwen3 layers and batch-norm VAE;
Z-Image's variable-length Qwen3 prompts), only every width is tiny (Qwen's tokenizer with a chat
template).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

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



def _clip_config(tokenizer, **overrides) -> CLIPTextConfig:
    settings = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextConfig(**{**settings, **overrides})


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer over single letters and a few words, with T5's special tokens."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((c, -2.0) for c in "▁abcdefghijklmnopqrstuvwxyz"),
              *((f"▁{w}", -1.0) for w in ("a", "photo", "of", "cat", "drawing", "seven", "digit"))]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_sdxl_pipeline(seed: int = 0, force_zeros_for_empty_prompt: bool = True) -> StableDiffusionXLPipeline:
    """SDXL's layout: CLIP-L + CLIP-G (with projection) → 64-d tokens + 32-d pooled; 8x8x4 latents."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, sample_size=16,
                        scaling_factor=0.13025)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, hidden_act="gelu", projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_act="gelu", projection_dim=32))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(), tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(), unet=unet.eval(), scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False,
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = False, dynamic_shift: bool = True) -> FluxPipeline:
    """FLUX.1's layout: CLIP pooled (32) + T5 tokens (32-d, 16 positions), 2x2-packed latents, flow matching.

    ``guidance_embeds=False`` is schnell-like (no guidance input), ``True`` dev-like; the scheduler
    uses the real FLUX.1 config's dynamic (resolution-dependent) shift.
    """
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=8,
                        sample_size=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                        scaling_factor=0.3611)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, hidden_act="gelu", projection_dim=32))
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000,
        shift=1.0 if dynamic_shift else 3.0, use_dynamic_shifting=dynamic_shift,
    )
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                        text_encoder_2=t5.eval(), tokenizer_2=tiny_t5_tokenizer(), transformer=transformer.eval())


def _tiny_flow_vae(**overrides) -> AutoencoderKL:
    settings = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    latent_channels=4, norm_num_groups=8, sample_size=16, use_quant_conv=False,
                    use_post_quant_conv=False)
    return AutoencoderKL(**{**settings, **overrides})


def tiny_sd3_pipeline(seed: int = 0, t5: bool = True) -> StableDiffusion3Pipeline:
    """SD3's layout: CLIP-L + CLIP-G penultimate states (32 + 16, zero-padded to T5's 64), then T5's
    tokens along the sequence; pooled 32 + 32; a patch-1 MMDiT; flow matching with shift 3."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
                                        pooled_projection_dim=64, out_channels=4)
    clip_l = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_act="gelu", projection_dim=32))
    clip_g = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size=16, hidden_act="gelu", projection_dim=32))
    encoder_3 = T5EncoderModel(T5Config(vocab_size=64, d_model=64, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_flow_vae(shift_factor=0.0609, scaling_factor=1.5035), text_encoder=clip_l.eval(), tokenizer=tokenizer,
        text_encoder_2=clip_g.eval(), tokenizer_2=tiny_tokenizer(), text_encoder_3=encoder_3.eval() if t5 else None,
        tokenizer_3=tiny_t5_tokenizer() if t5 else None,
    )


# Qwen's chat template, shortened: the pipelines render it with enable_thinking on (Z-Image) or off (FLUX.2).
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")


def tiny_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character plus Qwen's special tokens, with a chat template."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + list(string.printable))}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<|endoftext|>", unk_token="<unk>",
                                        eos_token="<|im_end|>", additional_special_tokens=specials[1:5],
                                        model_max_length=512)
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer


def _qwen_config(layers: int) -> Qwen3Config:
    return Qwen3Config(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024)


def tiny_flux2_klein_pipeline(seed: int = 0, distilled: bool = False, layers: int = 3) -> Flux2KleinPipeline:
    """FLUX.2 klein's layout: three stacked Qwen3 layers (3 x 16 = 48-d tokens), 4-d position ids,
    patchified + packed latents, a batch-norm VAE with non-trivial statistics. ``layers=27`` gives
    the real model's layer indices (9, 18, 27), which a loaded folder uses."""
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    vae = AutoencoderKLFlux2(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                             sample_size=16, layers_per_block=1)
    vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.1)
    vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True), vae=vae.eval(),
        text_encoder=Qwen3ForCausalLM(_qwen_config(layers)).eval(), tokenizer=tiny_qwen_tokenizer(),
        transformer=transformer.eval(), is_distilled=distilled,
    )


def tiny_z_image_pipeline(seed: int = 0) -> ZImagePipeline:
    """Z-Image's layout: Qwen3's penultimate states of each prompt's own tokens (16-d, variable
    length), a single-stream transformer with 2x2 patches, flow matching with shift 3."""
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[4, 6, 6], axes_lens=[1024, 32, 32])
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                          vae=_tiny_flow_vae(shift_factor=0.1159, scaling_factor=0.3611),
                          text_encoder=Qwen3Model(_qwen_config(2)).eval(), tokenizer=tiny_qwen_tokenizer(),
                          transformer=transformer.eval())
