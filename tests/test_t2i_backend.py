"""DiffusersT2I against diffusers' own StableDiffusionPipeline and against independent autograd.

Everything runs on a tiny random pipeline (galot_core/t2i/tiny.py), fp32 on the CPU, offline.
"""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizer  # noqa: E402

from galot_core.errors import GalotError  # noqa: E402
from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.t2i.tiny import make_scheduler, tiny_sd_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "a drawing of a seven"]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run far faster on one thread than on two contended ones (3 s vs 0.02 s a UNet call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embeds(pipe) -> torch.Tensor:
    return DiffusersT2I.from_pipeline(pipe).encode(PROMPTS)


def backend_with(pipe: StableDiffusionPipeline, scheduler: str = "ddim", **overrides) -> DiffusersT2I:
    """The shared tiny components with a fresh scheduler of the given kind."""
    return DiffusersT2I(pipe.text_encoder, pipe.tokenizer, pipe.unet, make_scheduler(scheduler, **overrides), pipe.vae)


def weighted_sum(images: torch.Tensor) -> torch.Tensor:
    """A smooth per-image objective: a fixed random linear functional of the pixels."""
    weights = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(123), dtype=images.dtype)
    return (images * weights).flatten(1).sum(dim=1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- encode / generate


def test_encode_matches_pipeline(pipe, embeds):
    cond, uncond = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    backend = DiffusersT2I.from_pipeline(pipe)
    assert embeds.dtype == torch.float32 and embeds.shape == (2, 77, 32)
    torch.testing.assert_close(embeds, cond, rtol=0, atol=0)
    torch.testing.assert_close(backend.uncond, uncond[:1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "scheduler, guidance_scale, eta",
    [("ddim", 1.0, 0.0), ("ddim", 3.0, 0.0), ("ddim", 3.0, 0.5), ("pndm", 1.0, 0.0), ("pndm", 3.0, 0.0),
     ("euler", 3.0, 0.0), ("dpm", 3.0, 0.0)],
)
def test_generate_matches_pipeline(pipe, embeds, scheduler, guidance_scale, eta):
    backend = backend_with(pipe, scheduler)
    reference = StableDiffusionPipeline(**{**pipe.components, "scheduler": make_scheduler(scheduler)},
                                        requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    settings = dict(num_inference_steps=3, guidance_scale=guidance_scale, eta=eta)
    # Run twice: a stateful scheduler (PNDM) must be reset between calls.
    for _ in range(2):
        images = backend.generate(embeds, generator=seeded(), **settings)
    expected = reference(prompt_embeds=embeds, negative_prompt_embeds=backend.uncond.expand(2, -1, -1),
                         generator=seeded(), output_type="pt", **settings).images
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert (images - expected).abs().max() <= 1e-5


def test_denoiser_call_counter(pipe, embeds):
    backend = backend_with(pipe)
    backend.generate(embeds, num_inference_steps=3, guidance_scale=3.0)
    assert backend.num_denoiser_calls == 3  # a CFG batch of [uncond, cond] counts once
    backend.acquisition_grad(embeds[:1], weighted_sum, k=2, num_inference_steps=3, guidance_scale=3.0,
                             estimator="full", batch_size=1)
    assert backend.num_denoiser_calls == 3 + 2 * 3  # one call per step per chunk


# ---------------------------------------------------------------------- acquisition_grad


def test_last_step_matches_independent_autograd(pipe, embeds):
    """Prop. 1: no-grad steps, then grad through the last UNet call and its Tweedie x0, times T."""
    steps, k, guidance = 4, 3, 3.0
    backend = backend_with(pipe)
    grad, value = backend.acquisition_grad(embeds[:1], weighted_sum, k=k, generator=seeded(7),
                                           num_inference_steps=steps, guidance_scale=guidance)

    scheduler, unet, vae = make_scheduler("ddim"), pipe.unet, pipe.vae
    uncond = backend.encode([""]).expand(k, -1, -1)
    scheduler.set_timesteps(steps)
    latents = torch.randn((k, 4, 8, 8), generator=seeded(7)) * scheduler.init_noise_sigma

    def guided_eps(latents, t, cond):
        eps_uncond, eps_text = unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return eps_uncond + guidance * (eps_text - eps_uncond)

    with torch.no_grad():
        for t in scheduler.timesteps[:-1]:
            latents = scheduler.step(guided_eps(latents, t, embeds[:1].expand(k, -1, -1)), t, latents).prev_sample
    s = embeds[:1].clone().requires_grad_(True)
    t = scheduler.timesteps[-1]
    alpha_bar = scheduler.alphas_cumprod[t]
    x0 = (latents - (1 - alpha_bar).sqrt() * guided_eps(latents, t, s.expand(k, -1, -1))) / alpha_bar.sqrt()
    images = (vae.decode(x0 / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    objective = weighted_sum(images).mean()
    objective.backward()

    torch.testing.assert_close(grad, steps * s.grad, rtol=1e-4, atol=1e-4 * s.grad.abs().max().item())
    torch.testing.assert_close(value, objective.detach().view(1))


@pytest.mark.parametrize("scheduler, steps_offset", [("ddim", 1), ("ddim", 0), ("pndm", 1), ("pndm", 0)])
def test_last_step_gradient_is_nonzero_with_leading_spacing(pipe, embeds, scheduler, steps_offset):
    """With "leading" spacing the last timestep is 0 or 1, where scheduler.step is (nearly) the
    identity and its gradient w.r.t. the prompt 0 (measured); the Tweedie x0 still carries it."""
    backend = backend_with(pipe, scheduler, steps_offset=steps_offset)
    backend.scheduler.set_timesteps(4)
    assert backend.scheduler.config.timestep_spacing == "leading"
    assert int(backend.scheduler.timesteps[-1]) == steps_offset
    grad, _ = backend.acquisition_grad(embeds[:1], weighted_sum, k=2, generator=seeded(),
                                       num_inference_steps=4, guidance_scale=3.0)
    assert torch.isfinite(grad).all()
    assert grad.abs().max() > 1e-6


def test_full_gradient_matches_finite_differences(embeds):
    """Exact backprop through every step vs a central difference along a random direction, in fp64."""
    pipe64 = tiny_sd_pipeline()
    backend = DiffusersT2I.from_pipeline(pipe64, denoiser_dtype=torch.float64)
    k, steps, guidance = 2, 2, 3.0
    s = embeds[:1].double()
    grad, _ = backend.acquisition_grad(s, weighted_sum, k=k, generator=seeded(), num_inference_steps=steps,
                                       guidance_scale=guidance, estimator="full")
    direction = torch.randn(s.shape, generator=seeded(1), dtype=torch.float64)
    direction /= direction.norm()
    h = 1e-4

    def mean_objective(embedding):
        images = backend.generate(embedding.expand(k, -1, -1), num_inference_steps=steps,
                                  guidance_scale=guidance, generator=seeded())
        return weighted_sum(images).mean().item()

    finite_difference = (mean_objective(s + h * direction) - mean_objective(s - h * direction)) / (2 * h)
    analytic = (grad.double() * direction).sum().item()
    assert analytic == pytest.approx(finite_difference, rel=1e-3)


def test_full_estimator_sees_the_images_generate_makes(pipe, embeds):
    """Two embeddings x k = 2 samples, one noise draw: row b gets samples [b*k, (b+1)*k)."""
    backend, k, seen = backend_with(pipe), 2, []

    def recording(images):
        seen.append(images.detach())
        return weighted_sum(images)

    _, values = backend.acquisition_grad(embeds, recording, k=k, generator=seeded(3), num_inference_steps=3,
                                         guidance_scale=3.0, estimator="full")
    images = backend.generate(embeds.repeat_interleave(k, dim=0), num_inference_steps=3, guidance_scale=3.0,
                              generator=seeded(3))
    torch.testing.assert_close(seen[0], images, rtol=0, atol=1e-6)
    torch.testing.assert_close(values, weighted_sum(images).view(2, k).mean(dim=1))


@pytest.mark.parametrize("estimator", ["last_step", "last_m", "tweedie", "full"])
def test_gradient_shape_dtype_and_chunking(pipe, embeds, estimator):
    backend = backend_with(pipe, "ddim", timestep_spacing="trailing")
    settings = dict(k=2, num_inference_steps=3, guidance_scale=3.0, estimator=estimator)
    grad, values = backend.acquisition_grad(embeds.double(), weighted_sum, generator=seeded(), **settings)
    assert grad.shape == embeds.shape and grad.dtype == torch.float32
    assert values.shape == (2,) and values.dtype == torch.float32 and not values.requires_grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    chunked, chunked_values = backend.acquisition_grad(embeds, weighted_sum, generator=seeded(), batch_size=3,
                                                       **settings)
    torch.testing.assert_close(chunked, grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item())
    torch.testing.assert_close(chunked_values, values)


def test_gradient_flows_even_under_no_grad(pipe, embeds):
    backend = backend_with(pipe)
    with torch.no_grad():
        grad, _ = backend.acquisition_grad(embeds[:1], weighted_sum, k=1, num_inference_steps=2, guidance_scale=3.0)
    assert grad.abs().max() > 0


def test_unknown_estimator_is_a_user_error(pipe, embeds):
    with pytest.raises(GalotError, match="estimator"):
        backend_with(pipe).acquisition_grad(embeds[:1], weighted_sum, estimator="mid_step")


@pytest.mark.parametrize(
    "scheduler, prediction_type",
    [("ddim", "epsilon"), ("ddim", "v_prediction"), ("ddim", "sample"), ("euler", "epsilon"),
     ("euler", "v_prediction")],
)
def test_tweedie_x0_agrees_with_the_scheduler(pipe, scheduler, prediction_type):
    """Our x0 (VP form, abar from alphas_cumprod or sigmas) equals the scheduler's pred_original_sample."""
    backend = backend_with(pipe, scheduler, prediction_type=prediction_type)
    backend.scheduler.set_timesteps(5)
    latents = torch.randn(2, 4, 8, 8, generator=seeded()) * backend.scheduler.init_noise_sigma
    model_output = torch.randn(2, 4, 8, 8, generator=seeded(1))
    for i, t in enumerate(backend.scheduler.timesteps[:3]):
        x_t = backend.scheduler.scale_model_input(latents, t)
        ours = backend._predict_x0(model_output, x_t, i, t)
        step = backend.scheduler.step(model_output, t, latents)
        torch.testing.assert_close(ours, step.pred_original_sample, rtol=1e-4, atol=1e-4)
        latents = step.prev_sample


def test_fp16_denoiser_returns_fp32_gradient(pipe, embeds):
    half = tiny_sd_pipeline()
    try:
        backend = DiffusersT2I.from_pipeline(half, denoiser_dtype=torch.float16)
        grad, values = backend.acquisition_grad(embeds[:1], weighted_sum, k=2, generator=seeded(),
                                                num_inference_steps=3, guidance_scale=3.0, estimator="tweedie")
    except RuntimeError as error:  # some CPU builds lack fp16 kernels
        pytest.skip(f"fp16 UNet unsupported on this CPU: {error}")
    assert backend.text_encoder.dtype == torch.float32 and backend.denoiser.dtype == torch.float16
    assert grad.dtype == torch.float32 and values.dtype == torch.float32 and torch.isfinite(grad).all()
    reference, _ = backend_with(pipe).acquisition_grad(embeds[:1], weighted_sum, k=2, generator=seeded(),
                                                       num_inference_steps=3, guidance_scale=3.0,
                                                       estimator="tweedie")
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.9


def test_pixel_space_model(embeds):
    """vae=None: the UNet's sample is the image in [-1, 1]."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8)
    pipe = tiny_sd_pipeline()
    backend = DiffusersT2I(pipe.text_encoder, pipe.tokenizer, unet, make_scheduler("ddim"))
    images = backend.generate(embeds, num_inference_steps=2, guidance_scale=3.0, generator=seeded())
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    grad, _ = backend.acquisition_grad(embeds[:1], weighted_sum, k=2, num_inference_steps=2, guidance_scale=3.0)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


# ---------------------------------------------------------------------- from_pretrained


@pytest.fixture(scope="module")
def saved_model(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(folder)
    return folder


def test_from_pretrained_local_folder(pipe, embeds, saved_model):
    loaded = DiffusersT2I.from_pretrained(saved_model, device="cpu", timestep_spacing="trailing")
    assert loaded.denoiser.dtype == torch.float32 and loaded.model_id == str(saved_model)
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    torch.testing.assert_close(loaded.encode(PROMPTS), embeds)
    expected = backend_with(pipe, "ddim", timestep_spacing="trailing").generate(
        embeds, num_inference_steps=2, guidance_scale=3.0, generator=seeded())
    images = loaded.generate(embeds, num_inference_steps=2, guidance_scale=3.0, generator=seeded())
    torch.testing.assert_close(images, expected)


def test_from_pretrained_bert_text_encoder_with_attention_mask(pipe, tmp_path):
    """Like our embedded model: a BertModel (MiniLM-style) whose config asks for the attention mask."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "seven"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer.from_pretrained(tmp_path, model_max_length=16)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=16, use_attention_mask=True))
    components = {**pipe.components, "text_encoder": bert, "tokenizer": tokenizer}
    StableDiffusionPipeline(**components, requires_safety_checker=False).save_pretrained(tmp_path / "model")

    loaded = DiffusersT2I.from_pretrained(tmp_path / "model", device="cpu")
    assert type(loaded.text_encoder) is BertModel and type(loaded.tokenizer) is BertTokenizer
    tokens = tokenizer(["a cat"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        masked = bert.eval()(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        unmasked = bert(tokens.input_ids)[0]
    embedding = loaded.encode(["a cat"])
    torch.testing.assert_close(embedding, masked)
    assert not torch.allclose(embedding, unmasked)
    images = loaded.generate(embedding, num_inference_steps=2, guidance_scale=3.0, generator=seeded())
    assert images.shape == (1, 3, 16, 16)


def test_from_pretrained_names_missing_components(saved_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    shutil.rmtree(broken / "unet")
    shutil.rmtree(broken / "vae")
    with pytest.raises(GalotError, match=r"missing unet/, vae/") as error:
        DiffusersT2I.from_pretrained(broken, device="cpu")
    assert "\n" not in str(error.value)
    (broken / "model_index.json").unlink()
    with pytest.raises(GalotError, match="model_index.json"):
        DiffusersT2I.from_pretrained(broken, device="cpu")


def test_from_pretrained_unreachable_hub_id(saved_model):
    with pytest.raises(GalotError, match="not a local folder and could not be fetched from the hub") as error:
        DiffusersT2I.from_pretrained("galot-test/no-such-model", device="cpu")
    assert "t2i.model" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(GalotError, match="not a local folder"):
        DiffusersT2I.from_pretrained(saved_model / "nope", device="cpu", local_files_only=True)


def test_from_pretrained_rejects_bad_options(saved_model):
    with pytest.raises(GalotError, match="t2i.dtype"):
        DiffusersT2I.from_pretrained(saved_model, dtype="fp8")
    with pytest.raises(GalotError, match="t2i.timestep_spacing"):
        DiffusersT2I.from_pretrained(saved_model, timestep_spacing="middle")
    index = json.loads((saved_model / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
