"""The SDXL and FLUX backends against their diffusers pipelines and independent autograd references
(SD3, FLUX.2 [klein] and Z-Image: tests/test_t2i_transformers.py); whole runs of every family.

Tiny random pipelines with each family's real layout (galot_core/t2i/tiny.py), fp32 on the CPU,
offline. "Independent" references: the denoising loop, guidance and x0 written again here from
the components, without the backend's code.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from diffusers import StableDiffusionXLPipeline  # noqa: E402

from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.t2i.flux import FluxT2I  # noqa: E402
from galot_core.t2i.sdxl import SDXLT2I  # noqa: E402
from galot_core.t2i.tiny import (tiny_flux2_klein_pipeline, tiny_flux_pipeline, tiny_sd3_pipeline,  # noqa: E402
                                 tiny_sdxl_pipeline, tiny_z_image_pipeline)

PROMPTS = ["a photo of a cat", "a drawing of a seven"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models run fastest on one thread


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weighted_sum(images: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(images.shape[1:], generator=seeded(123), dtype=images.dtype)
    return (images * weights).flatten(1).sum(dim=1)


def assert_grad_close(grad: torch.Tensor, reference: torch.Tensor) -> None:
    assert reference.abs().max() > 0
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


# ---------------------------------------------------------------------- SDXL


@pytest.fixture(scope="module")
def sdxl() -> StableDiffusionXLPipeline:
    pipe = tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_encode_matches_pipeline(sdxl):
    backend = SDXLT2I.from_pipeline(sdxl)
    tokens, negative, pooled, negative_pooled = sdxl.encode_prompt(PROMPTS, device="cpu")
    c = backend.encode_conditioning(PROMPTS)
    torch.testing.assert_close(c.tokens, tokens, rtol=0, atol=0)
    torch.testing.assert_close(c.pooled, pooled, rtol=0, atol=0)
    packed = backend.encode(PROMPTS)
    assert packed.shape == (2, 1, 77 * 64 + 32)
    torch.testing.assert_close(backend.unpack(packed).tokens, tokens, rtol=0, atol=0)
    u = backend.unpack(backend.uncond)  # force_zeros_for_empty_prompt: zeros, as the pipeline
    assert u.tokens.abs().max() == 0 and u.pooled.abs().max() == 0 and negative.abs().max() == 0


@pytest.mark.parametrize("guidance_scale, force_zeros", [(1.0, True), (3.0, True), (3.0, False)])
def test_sdxl_generate_matches_pipeline(guidance_scale, force_zeros):
    pipe = tiny_sdxl_pipeline(force_zeros_for_empty_prompt=force_zeros)
    pipe.set_progress_bar_config(disable=True)
    backend = SDXLT2I.from_pipeline(pipe)
    c = backend.encode_conditioning(PROMPTS)
    images = backend.generate(c.pack(), num_inference_steps=3, guidance_scale=guidance_scale, generator=seeded())
    expected = pipe(PROMPTS, num_inference_steps=3, guidance_scale=guidance_scale, generator=seeded(),
                    output_type="pt").images
    assert images.shape == (2, 3, 16, 16)
    assert (images - expected).abs().max() <= 1e-5


def sdxl_guided(pipe, s: torch.Tensor, k: int, guidance: float):
    """The guided epsilon of SDXL's UNet at (latents, t), written from the components (zeros uncond)."""
    scheduler, unet = pipe.scheduler, pipe.unet
    length, dim = 77, 64
    tokens = s[:, 0, :length * dim].reshape(1, length, dim).expand(k, -1, -1)
    pooled = s[:, 0, length * dim:].expand(k, -1)
    time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).repeat(2 * k, 1)

    def guided(latents, t):
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        out = unet(x, t, encoder_hidden_states=torch.cat([torch.zeros_like(tokens), tokens]),
                   added_cond_kwargs={"text_embeds": torch.cat([torch.zeros_like(pooled), pooled]),
                                      "time_ids": time_ids}).sample
        uncond, text = out.chunk(2)
        return uncond + guidance * (text - uncond), x[:k]

    return guided


def sdxl_reference(pipe, s: torch.Tensor, latents: torch.Tensor, steps: int, guidance: float, grad_from: int,
                   stop_at: int | None) -> torch.Tensor:
    """SDXL's Euler loop written again: steps before ``grad_from`` without grad; the decoded final
    latents, or at step ``stop_at`` the epsilon-prediction x0 of that UNet call instead."""
    scheduler, guided = pipe.scheduler, sdxl_guided(pipe, s, latents.shape[0], guidance)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        with torch.set_grad_enabled(i >= grad_from):
            eps, x_t = guided(latents, t)
            if i == stop_at:
                alpha_bar = 1 / (1 + scheduler.sigmas[i] ** 2)  # Euler: VP with sigma = sqrt((1 - abar) / abar)
                latents = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
                break
            latents = scheduler.step(eps, t, latents).prev_sample
    return (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("estimator", ["last_step", "last_m", "tweedie", "full"])
def test_sdxl_gradient_matches_autograd_reference(sdxl, estimator):
    steps, k, guidance = 3, 2, 3.0
    backend = SDXLT2I.from_pipeline(sdxl)
    s_star = backend.encode(PROMPTS[:1])
    grad, value = backend.acquisition_grad(s_star, weighted_sum, k=k, generator=seeded(7), num_inference_steps=steps,
                                           guidance_scale=guidance, estimator=estimator, m=2, tweedie_t=500)
    tweedie_stop = int((backend.scheduler.timesteps <= 500).nonzero()[0])
    grad_from, stop_at, scale = {"last_step": (2, 2, steps), "last_m": (1, 2, steps / 2),
                                 "tweedie": (tweedie_stop, tweedie_stop, steps), "full": (0, None, 1.0)}[estimator]
    s = s_star.clone().requires_grad_(True)
    noise = torch.randn((k, 4, 8, 8), generator=seeded(7))
    objective = weighted_sum(sdxl_reference(sdxl, s, noise, steps, guidance, grad_from, stop_at)).mean()
    objective.backward()
    assert_grad_close(grad, scale * s.grad)
    torch.testing.assert_close(value, objective.detach().view(1))
    # both optimised parts receive gradient
    parts = backend.unpack(grad)
    assert parts.tokens.abs().max() > 0 and parts.pooled.abs().max() > 0


# ---------------------------------------------------------------------- FLUX.1


def flux_backend(pipe, **kwargs) -> FluxT2I:
    return FluxT2I.from_pipeline(pipe, max_sequence_length=16, resolution=16, **kwargs)


@pytest.mark.parametrize("guidance_embeds, dynamic_shift", [(False, True), (True, True), (False, False)])
def test_flux_generate_matches_pipeline(guidance_embeds, dynamic_shift):
    pipe = tiny_flux_pipeline(guidance_embeds=guidance_embeds, dynamic_shift=dynamic_shift)
    pipe.set_progress_bar_config(disable=True)
    backend = flux_backend(pipe)
    tokens, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, device="cpu", max_sequence_length=16)
    c = backend.encode_conditioning(PROMPTS)
    torch.testing.assert_close(c.tokens, tokens, rtol=0, atol=0)
    torch.testing.assert_close(c.pooled, pooled, rtol=0, atol=0)
    images = backend.generate(c.pack(), num_inference_steps=3, guidance_scale=3.5, generator=seeded())
    expected = pipe(PROMPTS, num_inference_steps=3, guidance_scale=3.5, height=16, width=16, max_sequence_length=16,
                    generator=seeded(), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and backend.num_denoiser_calls == 3  # no guidance batch
    assert (images - expected).abs().max() <= 1e-5


def flux_reference(pipe, s: torch.Tensor, noise: torch.Tensor, steps: int, grad_from: int, stop_at: int | None):
    """FLUX sampling written again from the components (dev-style guidance input 3.5): steps before
    ``grad_from`` without grad; returns the final latents, or x0 = x_t - sigma v at step ``stop_at``."""
    k, c, h, w = noise.shape
    transformer, scheduler = pipe.transformer, pipe.scheduler
    tokens = s[:, 0, :16 * 32].reshape(1, 16, 32).expand(k, -1, -1)
    pooled = s[:, 0, 16 * 32:].expand(k, -1)
    latents = noise.view(k, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(k, h * w // 4, c * 4)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    scheduler.set_timesteps(sigmas=[1 - i / steps for i in range(steps)], mu=0.5 + (1.15 - 0.5) / (4096 - 256)
                            * (h * w // 4 - 256))
    for i, t in enumerate(scheduler.timesteps):
        with torch.set_grad_enabled(i >= grad_from):
            v = transformer(hidden_states=latents, timestep=t.expand(k) / 1000, guidance=torch.full([k], 3.5),
                            pooled_projections=pooled, encoder_hidden_states=tokens, txt_ids=torch.zeros(16, 3),
                            img_ids=image_ids).sample
            sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            if i == stop_at:
                latents = latents - sigma * v
                break
            latents = latents + (sigma_next - sigma) * v
    latents = latents.view(k, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(k, c, h, w)
    vae = pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("estimator", ["last_step", "last_m", "tweedie", "full"])
def test_flux_gradient_matches_autograd_reference(estimator):
    """Every estimator on a dev-like FLUX (guidance input) against the loop written again here."""
    pipe = tiny_flux_pipeline(guidance_embeds=True)
    backend, steps, k = flux_backend(pipe), 4, 2
    s_star = backend.encode(PROMPTS[:1])
    grad, value = backend.acquisition_grad(s_star, weighted_sum, k=k, generator=seeded(5), num_inference_steps=steps,
                                           guidance_scale=3.5, estimator=estimator, m=2, tweedie_t=500)
    # the window each estimator differentiates, and its scale (see DiffusersT2I._gradient_window)
    tweedie_stop = int((backend.scheduler.timesteps <= 500).nonzero()[0])
    grad_from, stop_at, scale = {"last_step": (3, 3, steps), "last_m": (2, 3, steps / 2),
                                 "tweedie": (tweedie_stop, tweedie_stop, steps), "full": (0, None, 1.0)}[estimator]
    s = s_star.clone().requires_grad_(True)
    noise = torch.randn((k, 4, 8, 8), generator=seeded(5))
    objective = weighted_sum(flux_reference(pipe, s, noise, steps, grad_from, stop_at)).mean()
    objective.backward()
    assert_grad_close(grad, scale * s.grad)
    torch.testing.assert_close(value, objective.detach().view(1))
    parts = backend.unpack(grad)
    assert parts.tokens.abs().max() > 0 and parts.pooled.abs().max() > 0


# ---------------------------------------------------------------------- x0 for flow matching


@pytest.mark.parametrize("scheduler", ["flow_euler", "dpm_flow"])
def test_flow_matching_x0_inverts_the_interpolation(scheduler):
    """x_t = (1 - sigma) x0 + sigma eps and v = eps - x0 give back x0 exactly (the VP formula with
    abar = 1 / (1 + sigma^2), used before for every sigma-parameterised scheduler, does not)."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = tiny_flux_pipeline()
    if scheduler == "dpm_flow":
        pipe.scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                     flow_shift=3.0)
    backend = flux_backend(pipe)
    noise = torch.randn(2, 4, 8, 8, generator=seeded(1))
    backend._set_timesteps(5, noise) if scheduler == "flow_euler" else backend.scheduler.set_timesteps(5)
    x0 = torch.randn(2, 16, 16, generator=seeded(2))
    eps = torch.randn(2, 16, 16, generator=seeded(3))
    for i, t in enumerate(backend.scheduler.timesteps[:4]):
        sigma = backend.scheduler.sigmas[i]
        assert 0 < sigma <= 1
        x_t = (1 - sigma) * x0 + sigma * eps
        torch.testing.assert_close(backend._predict_x0(eps - x0, x_t, i, t), x0, rtol=1e-5, atol=1e-5)
        if scheduler == "dpm_flow":  # and it is what the scheduler itself takes as x0
            backend.scheduler._step_index = i
            torch.testing.assert_close(backend.scheduler.convert_model_output(eps - x0, sample=x_t), x0,
                                       rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- whole runs from saved folders


SAVED_FOLDERS = {
    "sdxl": tiny_sdxl_pipeline,
    "flux": lambda: tiny_flux_pipeline(guidance_embeds=True),
    "sd3": tiny_sd3_pipeline,
    "flux2": lambda: tiny_flux2_klein_pipeline(layers=27),  # the real layer indices (9, 18, 27)
    "zimage": tiny_z_image_pipeline,
}


@pytest.mark.parametrize("family", list(SAVED_FOLDERS))
def test_two_cycle_al_gal_run_on_a_saved_folder_verifies(family, tmp_path, tiny_digits, one_thread):
    """save_pretrained -> t2i.model by path -> 2 GALOT cycles -> galot verify finds nothing wrong."""
    from galot_core.experiment import Experiment
    from galot_core.synthetic import cycle_folder, read_manifest
    from galot_core.verify import verify_run
    from tests.test_experiment_gal import gal_cfg

    folder = tmp_path / family
    SAVED_FOLDERS[family]().save_pretrained(folder)
    cfg = gal_cfg(tmp_path / "runs", folder, t2i={"resolution": 16, "revision": "", "variant": ""})
    exp = Experiment(cfg, dataset=tiny_digits)
    rows = exp.run()
    assert [(r["labelled"], r["generated"]) for r in rows] == [(10, 10), (20, 20)]
    assert type(exp.t2i).family == family
    emb = load_file(str(cfg.run_dir / "cycles/cycle_002/embeddings.safetensors"))
    delta = (emb["s"] - emb["s_star"]).flatten(1).norm(dim=1)
    # TextOpt moved the optimised parts inside the ball (up to fp32 rounding of s over ~6,000 entries)
    assert (delta <= 0.5 * (1 + 1e-4)).all() and (delta > 0.1).all()
    entries = read_manifest(cycle_folder(cfg.run_dir, 2))
    assert len(entries) == 20 and all(e.model_id == str(folder) and e.variant == "" for e in entries)
    problems, checked = verify_run(cfg.run_dir)
    assert problems == [] and checked > 40


# ---------------------------------------------------------------------- memory options


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_gradient_checkpointing_recomputes_and_keeps_the_gradient(family):
    """With checkpointing the denoiser's blocks run again in the backward pass; the gradient is the same."""
    pipe = tiny_sdxl_pipeline() if family == "sdxl" else tiny_flux_pipeline()
    backend_class, extra = (SDXLT2I, {}) if family == "sdxl" else (FluxT2I, {"max_sequence_length": 16,
                                                                             "resolution": 16})
    results = []
    for checkpointing in (False, True):
        backend = backend_class.from_pipeline(pipe, gradient_checkpointing=checkpointing, **extra)
        # a layer INSIDE a checkpointed block (the checkpointed module's own hooks do not fire on recompute)
        block = (backend.denoiser.down_blocks[1].attentions[0].transformer_blocks[0].attn1 if family == "sdxl"
                 else backend.denoiser.transformer_blocks[0].attn)
        calls = []
        handle = block.register_forward_hook(lambda *args: calls.append(1))
        grad, _ = backend.acquisition_grad(backend.encode(PROMPTS[:1]), weighted_sum, k=1, generator=seeded(),
                                           num_inference_steps=2, guidance_scale=3.0, estimator="full")
        handle.remove()
        backend.denoiser.disable_gradient_checkpointing()
        results.append((grad, len(calls)))
    (plain, plain_calls), (checkpointed, checkpointed_calls) = results
    assert checkpointed_calls > plain_calls
    assert_grad_close(checkpointed, plain)


def test_bf16_text_encoders_are_an_option(tmp_path):
    tiny_flux_pipeline().save_pretrained(tmp_path)
    backend = DiffusersT2I.from_pretrained(tmp_path, device="cpu", text_encoder_dtype="bf16", resolution=16)
    assert isinstance(backend, FluxT2I)
    assert backend.text_encoder.dtype == backend.text_encoder_2.dtype == torch.bfloat16
    assert backend.denoiser.dtype == torch.float32 and backend.encode(PROMPTS).dtype == torch.float32
    reference = DiffusersT2I.from_pretrained(tmp_path, device="cpu", resolution=16).encode(PROMPTS)
    cosine = torch.nn.functional.cosine_similarity(backend.encode(PROMPTS).flatten(), reference.flatten(), dim=0)
    assert 0.99 < cosine < 1.0  # close, not identical: bf16 rounds
