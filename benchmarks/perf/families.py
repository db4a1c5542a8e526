"""SDXL-, FLUX.1-schnell- and FLUX.2-klein-4B-SHAPED models: galot's loop vs the diffusers pipeline, and TextOpt's cost.

Like ``benchmarks/perf/sd21_shape.py``: the configs below are those of the real models'
``unet/``/``transformer/``, ``vae/``, ``text_encoder*/`` and ``scheduler/`` folders, the weights
are random (timing and memory depend on shapes, not values), the tokenizers are the local ones
of the tests (prompts are padded to the real lengths either way). Per model it measures:

1. generation: ``backend.generate`` vs the family's diffusers pipeline on the same components,
   prompt embeddings, noise, steps and guidance (seconds per image, max abs difference);
2. a TextOpt step (``acquisition_grad`` with k samples) per estimator vs generating its k images;
   for the few-step FLUX models at 1-4 steps also cos(last_step, full) on the same noise (the "gain" of ``full``;
   with random weights this cosine says nothing about real models, only the costs do);
3. on CUDA, the peak memory of the ``full`` step with and without gradient checkpointing, and
   of the text encoders in fp32 vs bf16;
4. gal.adapt: seconds per optimiser step (and on CUDA the peak memory) of the embedding fit and
   of a rank-8 LoRA fit on the attention, batch k, at the image size (galot_core/t2i/finetune.py).

``--smoke`` runs the tiny test models on the CPU instead: a CLEARLY LABELLED smoke test that the
script works, not a performance result. On a GPU (one H200), the default run is planned for
< 8 minutes: building the 12 B FLUX transformer in bf16 on the GPU takes ~1 min, the rest is
seconds per measurement at 512 px (``--models`` runs a subset).

    python -m benchmarks.perf.families --smoke                  # CPU, ~1 min
    python -m benchmarks.perf.families --device cuda            # GPU, writes results/perf_families.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import ROOT, timed

from galot_core.t2i.flux import FluxT2I
from galot_core.t2i.flux2 import Flux2KleinT2I
from galot_core.t2i.sdxl import SDXLT2I
from galot_core.t2i.tiny import (tiny_flux2_klein_pipeline, tiny_flux_pipeline, tiny_qwen_tokenizer,
                                 tiny_sdxl_pipeline, tiny_t5_tokenizer)
from galot_core.t2i.tiny import tiny_tokenizer

# stabilityai/stable-diffusion-xl-base-1.0
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
# black-forest-labs/FLUX.1-schnell
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=False, axes_dims_rope=(16, 56, 56))
# black-forest-labs/FLUX.2-klein-4B: 5 double + 20 single blocks, 24 x 128 heads, 128 latent channels
# (32 patchified 2x2), conditioned on Qwen3-4B layers 9/18/27 (3 x 2560 = 7680)
FLUX2_KLEIN_TRANSFORMER = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20,
                               attention_head_dim=128, num_attention_heads=24, joint_attention_dim=7680,
                               timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
                               rope_theta=2000, guidance_embeds=False)
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rope_theta=1_000_000, tie_word_embeddings=True)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1)


def real_sdxl(device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = tiny_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype)
        vae = AutoencoderKL(**VAE, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G, **ids))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="trailing")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def real_flux(device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tok = tiny_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the 12 B transformer and T5-XXL directly in bf16
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER)
            t5 = T5EncoderModel(T5Config(**T5_XXL))
    finally:
        torch.set_default_dtype(previous)
    with torch.device(device):
        vae = AutoencoderKL(**VAE, latent_channels=16, sample_size=1024, use_quant_conv=False,
                            use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae.to(dtype), text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)


def real_flux2_klein(device: str, dtype: torch.dtype):
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the 4 B transformer and Qwen3-4B directly in bf16
    try:
        with torch.device(device):
            transformer = Flux2Transformer2DModel(**FLUX2_KLEIN_TRANSFORMER)
            qwen = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
    finally:
        torch.set_default_dtype(previous)
    with torch.device(device):
        vae = AutoencoderKLFlux2()  # the real config is the class default (32 latent channels)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae.to(dtype), text_encoder=qwen.eval(),
                              tokenizer=tiny_qwen_tokenizer(), transformer=transformer.eval(), is_distilled=True)


def peak_gib(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / 2**30


def objective(images: torch.Tensor) -> torch.Tensor:
    """A fixed random linear functional of the pixels (smooth, differentiable)."""
    weights = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(0)).to(images)
    return (images * weights).flatten(1).sum(dim=1)


def generation(name: str, pipe, backend, s, size: int, steps: int, guidance: float, n: int) -> dict[str, Any]:
    """galot's generate vs the pipeline on the same embeddings and generator (n images)."""
    device = backend.device
    embeds = s.expand(n, *s.shape[1:])
    c = backend.unpack(embeds) if hasattr(backend, "unpack") else None
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, height=size, width=size, output_type="pt")
    if name == "sdxl":
        u = backend.unpack(backend.uncond.expand(n, -1, -1))
        kwargs.update(prompt_embeds=c.tokens, pooled_prompt_embeds=c.pooled, negative_prompt_embeds=u.tokens,
                      negative_pooled_prompt_embeds=u.pooled)
    elif name == "flux2":  # distilled: no guidance, the prompt states are the whole conditioning
        kwargs.update(prompt_embeds=embeds)
    else:
        kwargs.update(prompt_embeds=c.tokens, pooled_prompt_embeds=c.pooled, max_sequence_length=c.tokens.shape[1])
    gen = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    ours, ours_s = timed(lambda: backend.generate(embeds, num_inference_steps=steps, guidance_scale=guidance,
                                                  generator=gen(), height=size, width=size), device)
    theirs, theirs_s = timed(lambda: pipe(generator=gen(), **kwargs).images, device)
    return {"images": n, "steps": steps, "galot_s_per_image": ours_s / n, "pipeline_s_per_image": theirs_s / n,
            "max_abs_diff": float((ours.float() - theirs.float()).abs().max())}


def textopt_step(backend, s, size: int, steps: int, guidance: float, k: int) -> dict[str, Any]:
    """One acquisition_grad per estimator vs generating its k images; cos(last_step, full)."""
    device, out, grads = backend.device, {}, {}
    gen = lambda: torch.Generator(device).manual_seed(1)  # noqa: E731
    _, out["generate_k_s"] = timed(lambda: backend.generate(s.expand(k, *s.shape[1:]), num_inference_steps=steps,
                                                            guidance_scale=guidance, generator=gen(), height=size,
                                                            width=size), device)
    for estimator in ("last_step", "tweedie", "full"):
        calls = backend.num_denoiser_calls
        (grads[estimator], _), seconds = timed(lambda: backend.acquisition_grad(
            s, objective, k=k, generator=gen(), num_inference_steps=steps, guidance_scale=guidance,
            estimator=estimator, height=size, width=size, batch_size=1 if device.type == "cuda" else None), device)
        out[estimator] = {"seconds": seconds, "x_generate_k": seconds / out["generate_k_s"],
                          "denoiser_calls": backend.num_denoiser_calls - calls}
    for estimator in ("last_step", "tweedie"):
        out[estimator]["cosine_to_full"] = float(torch.nn.functional.cosine_similarity(
            grads[estimator].flatten(), grads["full"].flatten(), dim=0))
    return out


def memory(backend, s, size: int, steps: int, guidance: float, k: int) -> dict[str, Any]:
    """Peak GPU memory of the full-gradient step with and without gradient checkpointing (CUDA only)."""
    def step():
        backend.acquisition_grad(s, objective, k=k, generator=torch.Generator(backend.device).manual_seed(1),
                                 num_inference_steps=steps, guidance_scale=guidance, estimator="full",
                                 height=size, width=size, batch_size=1)
    plain = peak_gib(step, backend.device)
    _, plain_s = timed(step, backend.device)
    backend.denoiser.enable_gradient_checkpointing()
    checkpointed = peak_gib(step, backend.device)
    _, checkpointed_s = timed(step, backend.device)
    backend.denoiser.disable_gradient_checkpointing()
    return {"full_step_peak_gib": plain, "full_step_s": plain_s, "checkpointed_peak_gib": checkpointed,
            "checkpointed_s": checkpointed_s}


def adaptation(backend, size: int, batch: int, steps: int = 5) -> dict[str, Any]:
    """gal.adapt's cost on this model: a LoRA step (rank 8, attention, batch ``batch``) and an
    embedding step, seconds per step and (CUDA) peak memory, from the fit functions the cycle uses."""
    from galot_core.t2i import finetune as ft

    device, out = backend.device, {"batch": batch, "steps": steps}
    x0 = ft.training_latents(backend, torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)))
    template = backend.encode(["a photo of a cat", "a photo of a dog"])
    y = torch.arange(batch) % 2

    def embedding():
        ft.fit_embeddings(backend, x0, y, template, steps=steps, lr=5e-3, radius=0.3, batch=batch,
                          generator=torch.Generator().manual_seed(0), progress=False)

    def lora():
        ft.attach_lora(backend, 8, ("to_q", "to_k", "to_v", "to_out.0"), seed=0)
        ft.fit_lora(backend, x0, template[y], backend.uncond, steps=steps, lr=1e-3, batch=batch,
                    generator=torch.Generator().manual_seed(0), progress=False)

    for name, fn in (("embedding", embedding), ("lora", lora)):
        out[f"{name}_peak_gib"] = peak_gib(fn, device)
        _, seconds = timed(fn, device)
        out[f"{name}_s_per_step"] = seconds / steps
    out["lora_parameters"] = sum(v.numel() for v in ft.lora_state(backend).values())
    backend.denoiser.delete_adapters(ft.ADAPTER)
    return out


def run_model(name: str, pipe, backend_class, args, device: torch.device) -> dict[str, Any]:
    pipe.set_progress_bar_config(disable=True)
    extra = {"flux": {"max_sequence_length": args.t5_length},
             "flux2": {"max_sequence_length": args.qwen_length, **({"text_encoder_out_layers": (1, 2, 3)}
                                                                  if args.smoke else {})}}.get(name, {})
    backend = backend_class.from_pipeline(pipe, device=device, resolution=args.size, **extra)
    s = backend.encode(["a photo of a cat"])
    few_step = name in ("flux", "flux2")
    steps, guidance = (args.flux_steps, {"flux": 0.0, "flux2": 1.0}[name]) if few_step else (args.sdxl_steps, 6.0)
    result: dict[str, Any] = {"generation": generation(name, pipe, backend, s, args.size, steps, guidance, args.k)}
    result["textopt"] = {f"{steps}_steps": textopt_step(backend, s, args.size, steps, guidance, args.k)}
    if few_step:  # the cost and cosine of full vs last_step at every step count
        for t in range(1, 5):
            if t != steps:
                result["textopt"][f"{t}_steps"] = textopt_step(backend, s, args.size, t, guidance, args.k)
    if device.type == "cuda":
        result["memory"] = memory(backend, s, args.size, steps, guidance, args.k)
    result["adaptation"] = adaptation(backend, args.size, args.k)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: a smoke test, not a benchmark")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--k", type=int, default=4, help="images per gradient estimate")
    parser.add_argument("--sdxl-steps", type=int, default=8)
    parser.add_argument("--flux-steps", type=int, default=4)
    parser.add_argument("--t5-length", type=int, default=256, help="FLUX T5 prompt length (schnell: 256)")
    parser.add_argument("--qwen-length", type=int, default=512, help="FLUX.2 klein prompt length (512)")
    parser.add_argument("--models", nargs="+", default=["sdxl", "flux", "flux2"], choices=["sdxl", "flux", "flux2"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    classes = {"sdxl": SDXLT2I, "flux": FluxT2I, "flux2": Flux2KleinT2I}
    if args.smoke:
        args.size, args.t5_length, args.qwen_length, args.sdxl_steps = 16, 16, 32, 3
        build = {"sdxl": tiny_sdxl_pipeline, "flux": tiny_flux_pipeline,
                 "flux2": lambda: tiny_flux2_klein_pipeline(distilled=True)}
        label = "CPU SMOKE TEST on tiny random models (galot_core/t2i/tiny.py): NOT a performance result"
    else:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        build = {"sdxl": lambda: real_sdxl(args.device, dtype), "flux": lambda: real_flux(args.device, dtype),
                 "flux2": lambda: real_flux2_klein(args.device, dtype)}
        label = f"SDXL-base / FLUX.1-schnell / FLUX.2-klein-4B shapes, random weights, {dtype}, {device}"
    models = {name: (build[name](), classes[name]) for name in args.models}
    report = {"label": label, "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda"
              else None, "size": args.size, "k": args.k, "torch": torch.__version__}
    for name, (pipe, backend_class) in models.items():
        report[name] = run_model(name, pipe, backend_class, args, device)
        print(name, json.dumps(report[name], indent=1), flush=True)
    default = "perf_families_cpu_smoke.json" if args.smoke else "perf_families.json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / default
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(label, "->", out)


if __name__ == "__main__":
    main()
