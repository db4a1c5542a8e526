"""SD3, FLUX.2 [klein] and Z-Image against their diffusers pipelines and independent autograd references.

Tiny random pipelines with each family's real layout (galot_core/t2i/tiny.py), fp32 on the CPU,
offline. The references write each family's guided velocity, the Euler loop of the flow, x̂0 and
the decoding again from the components, without the backend's code; the schedules come from the
scheduler set up as each pipeline sets it up.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu  # noqa: E402

from galot_core.errors import GalotError  # noqa: E402
from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.t2i.flux2 import Flux2KleinT2I  # noqa: E402
from galot_core.t2i.sd3 import SD3T2I  # noqa: E402
from galot_core.t2i.zimage import ZImageT2I  # noqa: E402
from tests.test_t2i_families import PROMPTS, assert_grad_close, seeded, weighted_sum  # noqa: E402
from galot_core.t2i.tiny import tiny_flux2_klein_pipeline, tiny_sd3_pipeline, tiny_z_image_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models run fastest on one thread

FLUX2_LAYERS = (1, 2, 3)  # the tiny Qwen3 has 3 layers; the real pipeline reads (9, 18, 27)


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_backend(pipe) -> SD3T2I:
    return SD3T2I.from_pipeline(pipe, max_sequence_length=16)


def flux2_backend(pipe) -> Flux2KleinT2I:
    return Flux2KleinT2I.from_pipeline(pipe, max_sequence_length=32, text_encoder_out_layers=FLUX2_LAYERS,
                                       resolution=16)


def z_backend(pipe) -> ZImageT2I:
    return ZImageT2I.from_pipeline(pipe, max_sequence_length=64, resolution=16)


# ---------------------------------------------------------------------- generate == the pipeline


@pytest.mark.parametrize("t5, guidance_scale", [(True, 1.0), (True, 3.0), (False, 3.0)])
def test_sd3_generate_matches_pipeline(t5, guidance_scale):
    pipe = quiet(tiny_sd3_pipeline(t5=t5))
    backend = sd3_backend(pipe)
    tokens, _, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, device="cpu", max_sequence_length=16)
    c = backend.encode_conditioning(PROMPTS)
    assert c.tokens.shape == (2, 77 + 16, 64) and c.pooled.shape == (2, 64)
    torch.testing.assert_close(c.tokens, tokens, rtol=0, atol=0)
    torch.testing.assert_close(c.pooled, pooled, rtol=0, atol=0)
    images = backend.generate(c.pack(), num_inference_steps=3, guidance_scale=guidance_scale, generator=seeded())
    expected = pipe(PROMPTS, num_inference_steps=3, guidance_scale=guidance_scale, max_sequence_length=16,
                    generator=seeded(), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and backend.num_denoiser_calls == 3
    assert (images - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("distilled, guidance_scale", [(False, 1.0), (False, 4.0), (True, 4.0)])
def test_flux2_klein_generate_matches_pipeline(distilled, guidance_scale):
    pipe = quiet(tiny_flux2_klein_pipeline(distilled=distilled))
    backend = flux2_backend(pipe)
    tokens, _ = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=32, text_encoder_out_layers=FLUX2_LAYERS)
    embeds = backend.encode(PROMPTS)
    assert embeds.shape == (2, 32, 3 * 16)
    torch.testing.assert_close(embeds, tokens, rtol=0, atol=0)
    images = backend.generate(embeds, num_inference_steps=3, guidance_scale=guidance_scale, generator=seeded())
    expected = pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=guidance_scale, height=16, width=16,
                    max_sequence_length=32, text_encoder_out_layers=FLUX2_LAYERS, generator=seeded(),
                    output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and backend.num_denoiser_calls == 3  # guidance: one [uncond, cond] batch
    assert (images - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("guidance_scale", [0.0, 3.0])
def test_z_image_generate_matches_pipeline(guidance_scale):
    """Prompts of different lengths: each keeps its own tokens (zero rows after its end are padding)."""
    pipe = quiet(tiny_z_image_pipeline())
    backend = z_backend(pipe)
    rows, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False,
                                 max_sequence_length=64)  # (the pipeline rewrites the list it is given)
    embeds = backend.encode(PROMPTS)
    assert len(rows[0]) != len(rows[1]) and embeds.shape == (2, max(map(len, rows)), 16)
    for row, expected_row in zip(embeds, rows):
        torch.testing.assert_close(row[:len(expected_row)], expected_row, rtol=0, atol=0)
        assert row[len(expected_row):].abs().max() == 0 if len(row) > len(expected_row) else True
    images = backend.generate(embeds, num_inference_steps=3, guidance_scale=guidance_scale, generator=seeded())
    expected = pipe(list(PROMPTS), num_inference_steps=3, guidance_scale=guidance_scale, height=16, width=16,
                    max_sequence_length=64, generator=seeded(), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and backend.num_denoiser_calls == 3
    assert (images - expected).abs().max() <= 1e-5


def test_flux2_refuses_a_text_encoder_without_the_layers_it_reads():
    pipe = tiny_flux2_klein_pipeline()
    with pytest.raises(GalotError, match=r"reads Qwen3 layers \[9, 18, 27\], but this text encoder has 3"):
        Flux2KleinT2I.from_pipeline(pipe)


# ---------------------------------------------------------------------- independent references


def euler_reference(velocity, latents, scheduler, grad_from: int, stop_at: int | None):
    """The flow's Euler loop: x <- x + (sigma' - sigma) v; at ``stop_at`` x0 = x_t - sigma v instead.
    Steps before ``grad_from`` run without grad."""
    for i, t in enumerate(scheduler.timesteps):
        with torch.set_grad_enabled(i >= grad_from):
            v = velocity(latents, t)
            sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            if i == stop_at:
                return latents - sigma * v
            latents = latents + (sigma_next - sigma) * v
    return latents


def decode(vae, latents):
    image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


def sd3_reference(pipe, s, noise, steps, grad_from, stop_at, guidance=3.0):
    k, length, dim = noise.shape[0], 77 + 16, 64
    tokens = s[:, 0, :length * dim].reshape(1, length, dim).expand(k, -1, -1)
    pooled = s[:, 0, length * dim:].expand(k, -1)
    _, u_tokens, _, u_pooled = pipe.encode_prompt([""], [""], [""], device="cpu", max_sequence_length=16)

    def velocity(x, t):
        out = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(2 * k),
                               encoder_hidden_states=torch.cat([u_tokens.expand(k, -1, -1), tokens]),
                               pooled_projections=torch.cat([u_pooled.expand(k, -1), pooled])).sample
        uncond, cond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    pipe.scheduler.set_timesteps(steps)
    return decode(pipe.vae, euler_reference(velocity, noise, pipe.scheduler, grad_from, stop_at))


def flux2_reference(pipe, s, noise, steps, grad_from, stop_at, guidance=4.0):
    k, c, h, w = noise.shape
    tokens = s.expand(k, -1, -1)
    u_tokens, _ = pipe.encode_prompt([""], device="cpu", max_sequence_length=32, text_encoder_out_layers=FLUX2_LAYERS)
    text_ids = torch.stack([torch.tensor([0, 0, 0, j]) for j in range(tokens.shape[1])]).expand(2 * k, -1, -1)
    image_ids = torch.stack([torch.tensor([0, r, q, 0]) for r in range(h) for q in range(w)]).expand(2 * k, -1, -1)

    def velocity(x, t):
        out = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(2 * k) / 1000, guidance=None,
                               encoder_hidden_states=torch.cat([u_tokens.expand(k, -1, -1), tokens]),
                               txt_ids=text_ids, img_ids=image_ids).sample
        uncond, cond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    pipe.scheduler.set_timesteps(sigmas=[1 - i / steps for i in range(steps)], mu=compute_empirical_mu(h * w, steps))
    packed = euler_reference(velocity, noise.flatten(2).transpose(1, 2), pipe.scheduler, grad_from, stop_at)
    latents = packed.transpose(1, 2).reshape(k, c, h, w)
    bn = pipe.vae.bn
    latents = latents * (bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).sqrt() + \
        bn.running_mean.view(1, -1, 1, 1)
    latents = latents.reshape(k, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(k, c // 4, 2 * h, 2 * w)
    return (pipe.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)


def z_reference(pipe, s, noise, steps, grad_from, stop_at, guidance=3.0):
    k = noise.shape[0]
    (u_tokens,), _ = pipe.encode_prompt([""], device="cpu", do_classifier_free_guidance=False,
                                        max_sequence_length=64)

    def velocity(x, t):
        frames = list(torch.cat([x, x]).unsqueeze(2).unbind(0))
        out = pipe.transformer(frames, ((1000 - t) / 1000).expand(2 * k), [s[0]] * k + [u_tokens] * k)[0]
        out = torch.stack(out).squeeze(2)
        cond, uncond = out[:k], out[k:]
        return -(cond + guidance * (cond - uncond))

    pipe.scheduler.set_timesteps(sigmas=[1 - i / steps for i in range(steps)], mu=0.5)  # fixed shift: mu unused
    return decode(pipe.vae, euler_reference(velocity, noise, pipe.scheduler, grad_from, stop_at))


FAMILIES = {
    "sd3": (tiny_sd3_pipeline, sd3_backend, sd3_reference, 3.0, (4, 8, 8)),
    "flux2": (tiny_flux2_klein_pipeline, flux2_backend, flux2_reference, 4.0, (16, 4, 4)),
    "zimage": (tiny_z_image_pipeline, z_backend, z_reference, 3.0, (4, 8, 8)),
}


@pytest.mark.parametrize("estimator", ["last_step", "last_m", "tweedie", "full"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradient_matches_autograd_reference(family, estimator):
    """Every estimator of every family (guidance on) against the loop written again above."""
    build, make_backend, reference, guidance, latent_shape = FAMILIES[family]
    pipe = build()
    backend, steps, k = make_backend(pipe), 4, 2
    s_star = backend.encode(PROMPTS[:1])
    grad, value = backend.acquisition_grad(s_star, weighted_sum, k=k, generator=seeded(5), num_inference_steps=steps,
                                           guidance_scale=guidance, estimator=estimator, m=2, tweedie_t=500)
    reached = (backend.scheduler.timesteps <= 500).nonzero()  # FLUX.2's shift at 4 steps keeps every t > 500
    tweedie_stop = int(reached[0]) if len(reached) else steps - 1
    grad_from, stop_at, scale = {"last_step": (3, 3, steps), "last_m": (2, 3, steps / 2),
                                 "tweedie": (tweedie_stop, tweedie_stop, steps), "full": (0, None, 1.0)}[estimator]
    s = s_star.clone().requires_grad_(True)
    noise = torch.randn((k, *latent_shape), generator=seeded(5))
    objective = weighted_sum(reference(pipe, s, noise, steps, grad_from, stop_at, guidance)).mean()
    objective.backward()
    assert_grad_close(grad, scale * s.grad)
    torch.testing.assert_close(value, objective.detach().view(1))
    if family == "sd3":  # both optimised parts receive gradient
        parts = backend.unpack(grad)
        assert parts.tokens.abs().max() > 0 and parts.pooled.abs().max() > 0


def test_z_image_padding_gets_no_gradient_and_stays_padding():
    """A shorter prompt's zero rows are cut off before the transformer: exactly zero gradient there."""
    backend = z_backend(tiny_z_image_pipeline())
    embeds = backend.encode(PROMPTS)
    short = int((embeds.abs().amax(-1) > 0).sum(1).argmin())
    length = int((embeds[short].abs().amax(-1) > 0).sum())
    assert length < embeds.shape[1]
    grad, _ = backend.acquisition_grad(embeds, weighted_sum, k=1, generator=seeded(), num_inference_steps=2,
                                       guidance_scale=3.0, estimator="full")
    assert grad[short, length:].abs().max() == 0 and grad[short, :length].abs().max() > 0


@pytest.mark.parametrize("family, build", [("sd3", lambda: tiny_sd3_pipeline(t5=False)),
                                           ("flux2", lambda: tiny_flux2_klein_pipeline(layers=27)),
                                           ("zimage", tiny_z_image_pipeline)])
def test_saved_folder_loads_as_its_family(family, build, tmp_path):
    """save_pretrained → from_pretrained by path picks the family from model_index.json (SD3 without T5:
    zeros in its place, as the pipeline)."""
    build().save_pretrained(tmp_path)
    backend = DiffusersT2I.from_pretrained(tmp_path, device="cpu", resolution=16)
    assert type(backend).family == family
    images = backend.generate(backend.encode(PROMPTS), num_inference_steps=2, guidance_scale=1.0, generator=seeded())
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradient_checkpointing_keeps_the_gradient(family):
    """t2i.gradient_checkpointing on the transformer: the same full gradient (memory for time)."""
    build, make_backend, _, guidance, _ = FAMILIES[family]
    pipe = build()
    grads = []
    for checkpointing in (False, True):
        backend = make_backend(pipe)
        if checkpointing:
            backend.denoiser.enable_gradient_checkpointing()
        assert backend.denoiser.is_gradient_checkpointing == checkpointing
        grad, _ = backend.acquisition_grad(backend.encode(PROMPTS[:1]), weighted_sum, k=1, generator=seeded(),
                                           num_inference_steps=2, guidance_scale=guidance, estimator="full")
        backend.denoiser.disable_gradient_checkpointing()
        grads.append(grad)
    assert_grad_close(grads[1], grads[0])


def test_offloaded_text_encoders_are_wired_from_params(tmp_path):
    """t2i.offload_text_encoders reaches the backend; on the CPU (the device) nothing moves and the
    encodings are the same."""
    from galot_core.config import config_from_dict
    from galot_core.context import load_t2i

    tiny_sd3_pipeline().save_pretrained(tmp_path)
    cfg = config_from_dict({"t2i": {"model": str(tmp_path), "device": "cpu", "resolution": 16,
                                    "offload_text_encoders": True}})
    backend = load_t2i(cfg)
    assert backend.offload_text_encoders and backend.encoder_device == torch.device("cpu")
    reference = DiffusersT2I.from_pretrained(tmp_path, device="cpu", resolution=16)
    torch.testing.assert_close(backend.encode(PROMPTS), reference.encode(PROMPTS), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: text encoders move between CPU and GPU")
def test_offloaded_text_encoders_wait_on_the_cpu_and_encode_on_the_gpu():
    pipe = tiny_sd3_pipeline()
    backend = SD3T2I.from_pipeline(pipe, device="cuda", max_sequence_length=16, offload_text_encoders=True)
    encoders = (backend.text_encoder, backend.text_encoder_2, backend.text_encoder_3)
    assert backend.denoiser.device.type == "cuda" and all(e.device.type == "cpu" for e in encoders)
    embeds = backend.encode(PROMPTS)
    assert embeds.device.type == "cuda" and all(e.device.type == "cpu" for e in encoders)
    resident = SD3T2I.from_pipeline(tiny_sd3_pipeline(), device="cuda", max_sequence_length=16)
    torch.testing.assert_close(embeds, resident.encode(PROMPTS))
