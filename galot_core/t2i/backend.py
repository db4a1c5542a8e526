"""A Stable-Diffusion-style text-to-image model that GALOT can differentiate through.

GALOT (Sec. 3.3) optimises the *text embedding* ``s`` of a class prompt so that the images it
generates maximise an active-learning acquisition function ``sigma(x0, f_theta)``:

    s <- s + alpha * sgn E_{x0 ~ p(x0 | s)} [grad_s sigma(x0, f_theta)]        (Eq. 5)

``StableDiffusionPipeline.__call__`` is wrapped in ``torch.no_grad`` and hides the loop, so this
module re-writes the pipeline's denoising loop step for step (``generate`` reproduces the
pipeline's images) and adds :meth:`DiffusersT2I.acquisition_grad`, which estimates that
gradient with one of several estimators (see its docstring). Gradients flow only into the
conditional prompt embedding; the UNet, VAE and text encoder are frozen.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
import diffusers
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from galot_core.errors import GalotError

Objective = Callable[[Tensor], Tensor]
"""Maps images (N, C, H, W) in [0, 1] (differentiably) to per-image values (N,); higher = more informative."""

Estimator = Literal["last_step", "last_m", "tweedie", "full"]
ESTIMATORS: tuple[str, ...] = ("last_step", "last_m", "tweedie", "full")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# t2i.scheduler names → diffusers classes (all expose alphas_cumprod or sigmas, see _tweedie).
SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
              "unipc": "UniPCMultistepScheduler"}
_REQUIRED_COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer")
_LAYOUT = "model_index.json plus unet/, vae/, text_encoder/, tokenizer/, scheduler/"


class DiffusersT2I:
    """Frozen diffusers/transformers components plus a readable, differentiable sampling loop.

    Args:
        text_encoder: a transformers text model (``CLIPTextModel``, ``BertModel``, ...); kept fp32.
        tokenizer: its tokenizer; prompts are padded to ``tokenizer.model_max_length``.
        unet: a ``UNet2DConditionModel`` predicting epsilon, v or the sample (scheduler config says which).
        scheduler: any diffusers scheduler that exposes ``alphas_cumprod`` (DDIM, PNDM, Euler, DPM-Solver, ...).
        vae: an ``AutoencoderKL``; ``None`` means a pixel-space model whose UNet sample IS the image in [-1, 1].
        device: where all components live; default: the UNet's device.
        unet_dtype: dtype of the UNet and VAE (e.g. fp16 on CUDA); default: leave as they are.
        model_id, revision: provenance only (recorded by callers in their metadata).

    ``num_unet_calls`` counts UNet forward passes (a classifier-free-guidance batch of
    [uncond, cond] is one call), so benchmarks can report cost independently of hardware.
    """

    def __init__(
        self,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        unet: torch.nn.Module,
        scheduler: Any,
        vae: torch.nn.Module | None = None,
        *,
        device: str | torch.device | None = None,
        unet_dtype: torch.dtype | None = None,
        model_id: str = "",
        revision: str = "",
    ) -> None:
        self.device = torch.device(device) if device is not None else unet.device
        self.text_encoder = _moved(text_encoder, self.device, torch.float32)
        self.tokenizer = tokenizer
        self.unet = _moved(unet, self.device, unet_dtype)
        self.scheduler = scheduler
        self.vae = _moved(vae, self.device, unet_dtype) if vae is not None else None
        # We never train these here: only the prompt embedding receives gradients.
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.eval()
                module.requires_grad_(False)
        self.model_id = model_id
        self.revision = revision
        self.num_unet_calls = 0
        self._uncond: Tensor | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> DiffusersT2I:
        """Wrap an already-built ``StableDiffusionPipeline`` (its components are shared, not copied)."""
        return cls(pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler, getattr(pipe, "vae", None), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        timestep_spacing: str | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        scheduler: str | None = None,
    ) -> DiffusersT2I:
        """Load a diffusers-format Stable Diffusion checkpoint: a local folder or a hub id.

        The component classes come from the folder's ``model_index.json``, so the text encoder
        may be CLIP or e.g. a MiniLM ``BertModel``, and ``vae`` may be absent (pixel space).

        Args:
            device: "auto" (cuda if available, else cpu) or a torch device string.
            dtype: "auto" (fp16 UNet/VAE on CUDA, fp32 on CPU) or "fp32" / "fp16" / "bf16".
                The text encoder always stays fp32.
            timestep_spacing: overrides the scheduler config ("leading", "trailing", "linspace").
                "trailing" ends the schedule at a noisy timestep, which matters for the last-step
                gradient (see :meth:`acquisition_grad`).
            local_files_only: for hub ids; ``None`` follows ``HF_HUB_OFFLINE``.
            revision: hub revision (branch, tag or commit).
            scheduler: replace the folder's scheduler by one of :data:`SCHEDULERS` built from its
                config (same noise schedule): e.g. "dpm++" reaches the quality of DDIM at fewer
                steps (docs/performance.md measures it on galot-mini).
        """
        torch_device = _resolve_device(device)
        model_dtype = _resolve_dtype(dtype, torch_device)
        if timestep_spacing is not None and timestep_spacing not in ("leading", "trailing", "linspace"):
            raise GalotError(
                f"t2i.timestep_spacing: {timestep_spacing!r} is not one of leading, trailing, linspace: fix the value"
            )
        folder = _local_folder(str(id_or_path), revision=revision, local_files_only=local_files_only)
        index = _read_model_index(folder)

        def load(name: str, **kwargs: Any) -> Any:
            library, class_name = index[name]
            return _load_component(folder, name, library, class_name, **kwargs)

        unet = load("unet", torch_dtype=model_dtype)
        vae = load("vae", torch_dtype=model_dtype) if "vae" in index else None
        text_encoder = load("text_encoder", dtype=torch.float32)
        tokenizer = load("tokenizer")
        sched = load("scheduler")
        if scheduler is not None:
            if scheduler not in SCHEDULERS:
                raise GalotError(f"t2i.scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}: fix the value")
            sched = getattr(diffusers, SCHEDULERS[scheduler]).from_config(sched.config)
        if timestep_spacing is not None:
            sched = type(sched).from_config(sched.config, timestep_spacing=timestep_spacing)
        return cls(
            text_encoder,
            tokenizer,
            unet,
            sched,
            vae,
            device=torch_device,
            unet_dtype=model_dtype,
            model_id=str(id_or_path),
            revision=revision or "",
        )

    # ------------------------------------------------------------------ properties

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel; 1 for a pixel-space model."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of latents and scheduler arithmetic: at least fp32, so an fp16 UNet does not
        degrade the scheduler's update or change the noise; fp64 when the UNet is fp64 (used by
        finite-difference checks)."""
        return torch.promote_types(self.unet.dtype, torch.float32)

    @property
    def uncond(self) -> Tensor:
        """The empty-prompt embedding (1, L, D), the fixed unconditional half of classifier-free guidance."""
        if self._uncond is None:
            self._uncond = self.encode([""])
        return self._uncond

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        """Prompt embeddings (B, L, D), fp32, exactly as ``StableDiffusionPipeline.encode_prompt``."""
        text_inputs = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = text_inputs.attention_mask.to(self.device)
        output = self.text_encoder(text_inputs.input_ids.to(self.device), attention_mask=attention_mask)
        return output[0].to(torch.float32)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        prompt_embeds: Tensor,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        eta: float = 0.0,
        *,
        height: int | None = None,
        width: int | None = None,
        image: Tensor | None = None,
        strength: float = 1.0,
    ) -> Tensor:
        """Images (B, C, H, W) in [0, 1], one per row of ``prompt_embeds`` (B, L, D).

        Same result as ``pipe(prompt_embeds=..., negative_prompt_embeds=uncond, ...,
        output_type="pt").images`` for the same generator state. ``latents`` is the initial
        noise before scaling by ``scheduler.init_noise_sigma``, as in the pipeline.

        With ``image`` (B, C, H, W in [0, 1], any size and channel count) this is
        image-to-image (SDEdit, as ``StableDiffusionImg2ImgPipeline``): the image's latents
        are noised to the timestep that ``strength`` picks and only the remaining
        ``int(steps·strength)`` steps are denoised, so the result stays near the image
        (strength → 0) or forgets it (strength → 1). Latents are the encoder's mean, not a
        sample: the same image and noise always give the same result.
        """
        cond = prompt_embeds.to(self.device, self.compute_dtype)
        if latents is None:
            latents = self.initial_noise(cond.shape[0], generator, height=height, width=width)
        latents = latents.to(self.device, self.compute_dtype)
        start = None
        if image is not None:
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
            start = num_inference_steps - max(1, min(int(num_inference_steps * strength), num_inference_steps))
            latents = self.scheduler.add_noise(self.encode_images(image), latents, self.scheduler.timesteps[start:start + 1])
        latents = self._denoise(
            cond,
            latents,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            extra_step_kwargs=self._extra_step_kwargs(generator, eta),
            start=start,
        )
        return self._decode(latents)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] → the model's scaled latents, at the model's own size and channels.

        Grey images are repeated to RGB and RGB images averaged to grey as the VAE needs; the
        size becomes the UNet's sample size (antialiased bilinear resize).
        """
        x = images.to(self.device, self.compute_dtype)
        sample_size = self.unet.config.sample_size
        h, w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        channels = self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1) if channels in (1, 3) else x
        if self.vae is None:
            return x * 2 - 1
        z = self.vae.encode((x * 2 - 1).to(self.vae.dtype)).latent_dist.mean
        return z.to(self.compute_dtype) * self.vae.config.scaling_factor

    def initial_noise(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
    ) -> Tensor:
        """Standard normal x_T (before ``init_noise_sigma``), drawn like the pipeline's ``prepare_latents``.

        Drawn in ``compute_dtype`` (fp32 for fp32/fp16/bf16 UNets), so the same seed gives the
        same noise for every estimator and for those dtypes ("common random numbers").
        """
        sample_size = self.unet.config.sample_size
        default_h, default_w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        height = height or default_h * self.vae_scale_factor
        width = width or default_w * self.vae_scale_factor
        shape = (
            batch_size,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.compute_dtype)

    # ------------------------------------------------------------------ the acquisition gradient

    def acquisition_grad(
        self,
        prompt_embeds: Tensor,
        objective: Objective,
        *,
        k: int = 6,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        estimator: Estimator = "last_step",
        tweedie_t: int | None = None,
        m: int = 2,
        batch_size: int | None = None,
        height: int | None = None,
        width: int | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Estimate grad_s E_{x0 ~ p(x0|s)} objective(x0) by averaging over ``k`` samples per embedding.

        Args:
            prompt_embeds: (1, L, D) or (B, L, D); every row gets ``k`` samples. Only this
                conditional embedding receives gradient; the unconditional one is a constant.
            objective: images (N, C, H, W) in [0, 1] -> values (N,), differentiable.
            estimator:
                * ``"last_step"`` (default, the paper's Proposition 1): the first steps run
                  without grad; only the last UNet call is differentiated. x0 is the Tweedie
                  prediction from that call, not ``scheduler.step``'s output: with the common
                  "leading" spacing the last timestep is t = 0 (or 1) and the scheduler's last
                  step is numerically the identity, so its gradient w.r.t. ``s`` is 0 or ~1e-19
                  (measured, FACTS.md). The result is multiplied by T = ``num_inference_steps``
                  as in Eq. 7.
                * ``"last_m"``: backprop through the last ``m`` UNet calls (and the scheduler
                  steps between them), ending with the same Tweedie x0; scaled by T / m.
                  ``m = 1`` is ``"last_step"``.
                * ``"tweedie"``: run without grad down to the first scheduled timestep
                  <= ``tweedie_t`` (default: the scheduled timestep closest to
                  0.3 * num_train_timesteps), then one differentiated UNet call and its Tweedie
                  x0, scaled by T. Cheaper than ``"full"``, and it tracked ``"full"`` better
                  than ``"last_step"`` in our measurements because at a mid-noise timestep the
                  prompt still shapes the prediction.
                * ``"full"``: exact backprop through every denoising step (the reference); the
                  images are exactly those of :meth:`generate` for the same generator state.
                The T (or T / m) factor only matters when comparing magnitudes with ``"full"``;
                sign (Eq. 5) or L2-normalised update steps make it irrelevant.
            k: samples per embedding; noise comes from ``generator`` in one draw, so the same
                seed gives the same noise for every estimator (common random numbers).
            batch_size: samples per UNet batch (memory); ``None`` = all ``B * k`` at once.
                The noise is drawn before chunking, so results do not depend on it.
            noise: the ``B * k`` initial latents (row ``b·k + j`` is sample ``j`` of embedding
                ``b``) instead of a draw from ``generator``: a caller that splits classes
                over tasks draws every class's noise and passes each task its own rows.

        Returns:
            (gradient, same shape as ``prompt_embeds``, fp32; mean objective per embedding (B,),
            detached, of the images the objective saw — Tweedie x0 images for the one-step
            estimators).
        """
        if estimator not in ESTIMATORS:
            raise GalotError(f"estimator: {estimator!r} is not one of {', '.join(ESTIMATORS)}: fix the value")
        if k < 1 or m < 1:
            raise GalotError(f"k={k}, m={m}: both must be >= 1")
        grad_from, tweedie_at, scale = self._gradient_window(estimator, num_inference_steps, m, tweedie_t)

        embeds = prompt_embeds.detach().to(self.device, torch.float32).requires_grad_(True)
        n_samples = embeds.shape[0] * k
        if noise is None:
            noise = self.initial_noise(n_samples, generator, height=height, width=width)
        elif noise.shape[0] != n_samples:
            raise ValueError(f"noise has {noise.shape[0]} rows, expected {n_samples} ({embeds.shape[0]} embeddings × k={k})")
        extra_step_kwargs = self._extra_step_kwargs(generator, eta=0.0)
        chunk = batch_size or n_samples
        values = []
        with torch.enable_grad():
            for start in range(0, n_samples, chunk):
                rows = slice(start, start + chunk)
                cond = embeds.repeat_interleave(k, dim=0)[rows].to(self.compute_dtype)
                latents = self._denoise(
                    cond,
                    noise[rows],
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    extra_step_kwargs=extra_step_kwargs,
                    grad_from=grad_from,
                    tweedie_at=tweedie_at,
                )
                chunk_values = objective(self._decode(latents))
                if chunk_values.shape != (latents.shape[0],):
                    raise ValueError(
                        f"objective must return one value per image, shape ({latents.shape[0]},); "
                        f"got {tuple(chunk_values.shape)}"
                    )
                # Rows of `embeds` only influence their own k samples, so the gradient of this
                # sum w.r.t. row b is the gradient of row b's mean objective.
                (chunk_values.sum() / k).backward()
                values.append(chunk_values.detach())
        mean_values = torch.cat(values).view(-1, k).mean(dim=1).to(torch.float32)
        return embeds.grad * scale, mean_values

    def _gradient_window(
        self, estimator: str, num_inference_steps: int, m: int, tweedie_t: int | None
    ) -> tuple[int, int | None, float]:
        """(first step index that is differentiated, step index whose Tweedie x0 ends sampling
        or None to run the full loop, factor that puts the estimate on the full gradient's scale)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        last = len(timesteps) - 1
        if estimator == "full":
            return 0, None, 1.0
        if estimator == "last_step":
            return last, last, float(num_inference_steps)
        if estimator == "last_m":
            grad_from = max(0, last - m + 1)
            return grad_from, last, num_inference_steps / (last - grad_from + 1)
        if tweedie_t is None:
            target = 0.3 * self.scheduler.config.num_train_timesteps
            tweedie_t = float(timesteps[(timesteps.float() - target).abs().argmin()])
        reached = (timesteps <= tweedie_t).nonzero()
        stop = int(reached[0]) if len(reached) else last
        return stop, stop, float(num_inference_steps)

    # ------------------------------------------------------------------ the loop

    def _denoise(
        self,
        cond: Tensor,
        noise: Tensor,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        extra_step_kwargs: dict[str, Any],
        grad_from: int = 0,
        tweedie_at: int | None = None,
        start: int | None = None,
    ) -> Tensor:
        """The pipeline's denoising loop. Returns the final latents, or, when ``tweedie_at`` is
        given, the Tweedie x0-prediction at that step index (the loop stops there).

        Steps before ``grad_from`` run without autograd (when grad is enabled at all), so
        only the window [grad_from, end] is differentiated. With ``start`` (image-to-image),
        ``noise`` is already the noised latent of step ``start`` and the steps before it are skipped.
        """
        # set_timesteps also resets stateful schedulers (PNDM's history, Euler's step index).
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        if start is not None and hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        latents = noise * self.scheduler.init_noise_sigma if start is None else noise
        start = start or 0
        grad_enabled = torch.is_grad_enabled()
        # As the pipeline does: the [uncond, cond] conditioning is built once, not per step.
        unet_dtype = self.unet.dtype
        if guidance_scale > 1.0:
            hidden = torch.cat([self.uncond.expand(cond.shape[0], -1, -1).to(cond.dtype), cond]).to(unet_dtype)
        else:
            hidden = cond.to(unet_dtype)
        for i, t in enumerate(self.scheduler.timesteps):
            if i < start:
                continue
            with torch.set_grad_enabled(grad_enabled and i >= grad_from):
                model_output, x_t = self._model_output(latents, t, hidden, guidance_scale, unet_dtype)
                if i == tweedie_at:
                    return self._predict_x0(model_output, x_t, i, t)
                latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs, return_dict=False)[0]
        return latents

    def _model_output(self, latents: Tensor, t: Tensor, hidden: Tensor, guidance_scale: float,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One UNet call with classifier-free guidance, as in the pipeline.

        ``hidden`` is the UNet conditioning in ``dtype``: [uncond, cond] stacked when guidance
        is on. Returns the guided model output and the scaled model input x_t (the
        variance-preserving sample the UNet sees), both in ``compute_dtype``.
        """
        x_t = self.scheduler.scale_model_input(latents, t)
        do_cfg = guidance_scale > 1.0
        model_input = torch.cat([x_t] * 2) if do_cfg else x_t
        # compute_dtype from the UNet dtype passed in: the property walks every parameter of the
        # UNet, which at one call per step cost ~3-5 % of generation against diffusers' own loop.
        output = self.unet(model_input.to(dtype), t, encoder_hidden_states=hidden, return_dict=False)[0].to(
            torch.promote_types(dtype, torch.float32))
        self.num_unet_calls += 1
        if do_cfg:
            output_uncond, output_text = output.chunk(2)
            output = output_uncond + guidance_scale * (output_text - output_uncond)
        return output, x_t

    def _predict_x0(self, model_output: Tensor, x_t: Tensor, step_index: int, t: Tensor) -> Tensor:
        """Tweedie's x0-prediction from one model output, per ``prediction_type``.

        Works in the variance-preserving parameterisation x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        (Eq. 3), which is what the UNet sees after ``scale_model_input``. Sigma-parameterised
        schedulers (Euler, DPM-Solver) keep sigma^2 = (1 - abar) / abar per step, so abar comes
        from their ``sigmas``; the others index ``alphas_cumprod`` by the timestep.
        No clipping: the decoder's clamp to [0, 1] plays that role.
        """
        sigmas = getattr(self.scheduler, "sigmas", None)
        if sigmas is not None:
            alpha_bar = 1.0 / (1.0 + sigmas[step_index].to(x_t.device, x_t.dtype) ** 2)
        else:
            alpha_bar = self.scheduler.alphas_cumprod[int(t)].to(x_t.device, x_t.dtype)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return (x_t - (1 - alpha_bar) ** 0.5 * model_output) / alpha_bar**0.5
        if prediction_type == "v_prediction":
            return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * model_output
        if prediction_type == "sample":
            return model_output
        raise GalotError(f"scheduler.prediction_type: {prediction_type!r} is not epsilon, v_prediction or sample")

    def _decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [0, 1], like ``vae.decode`` + ``image_processor.postprocess(output_type="pt")``."""
        if self.vae is None:
            image = latents
        else:
            image = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype), return_dict=False)[0]
        return (image.to(self.compute_dtype) * 0.5 + 0.5).clamp(0, 1)

    def _extra_step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        """``eta`` / ``generator`` for schedulers whose ``step`` accepts them (the pipeline's rule)."""
        parameters = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in parameters:
            kwargs["eta"] = eta
        if "generator" in parameters:
            kwargs["generator"] = generator
        return kwargs


# ---------------------------------------------------------------------- loading helpers


def _moved(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> torch.nn.Module:
    """``module`` on ``device``, cast only when the dtype really changes (diffusers warns on every
    ``.to(dtype=...)``, even a no-op one)."""
    module = module.to(device)
    return module if dtype is None or dtype == module.dtype else module.to(dtype=dtype)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise GalotError(f"t2i.device: {device!r} is not a device: use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GalotError(f"t2i.device: {device!r} but CUDA is not available here: use auto or cpu")
    return resolved


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise GalotError(f"t2i.dtype: {dtype!r} is not one of auto, {', '.join(_DTYPES)}: fix the value")
    return _DTYPES[dtype]


def _local_folder(id_or_path: str, *, revision: str | None, local_files_only: bool | None) -> Path:
    """A local diffusers folder: the path itself, or the hub snapshot (downloaded or cached)."""
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        return path
    kwargs: dict[str, Any] = {"revision": revision}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        return Path(DiffusionPipeline.download(id_or_path, **kwargs))
    except (OSError, ValueError):
        if local_files_only:
            raise GalotError(
                f"t2i.model: {id_or_path!r} is not a local folder nor in the local hub cache, and downloads are off; "
                "set t2i.allow_download: true on a machine with network, or point t2i.model at a local diffusers "
                "folder"
            ) from None
        raise GalotError(
            f"t2i.model: model {id_or_path!r} is not a local folder and could not be fetched from the hub "
            "(offline?): download it once with network, or point t2i.model at a local diffusers folder"
        ) from None


def _read_model_index(folder: Path) -> dict[str, tuple[str, str]]:
    """The components listed in ``model_index.json`` as {name: (library, class)}; checks the folders exist."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise GalotError(
            f"t2i.model: folder '{folder}' is missing model_index.json: point t2i.model at a diffusers folder "
            f"({_LAYOUT}), e.g. one written by pipeline.save_pretrained()"
        )
    index = {
        name: (entry[0], entry[1])
        for name, entry in json.loads(index_file.read_text()).items()
        if name in (*_REQUIRED_COMPONENTS, "vae") and isinstance(entry, list) and entry[0] and entry[1]
    }
    # vae/ is optional (pixel-space models list it as [null, null]); the rest must be there.
    expected = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
                if name in _REQUIRED_COMPONENTS or name in index]
    problems = [f"{name}/" for name in expected if not (folder / name).is_dir()]
    problems += [f"{name} in model_index.json" for name in _REQUIRED_COMPONENTS if name not in index]
    if problems:
        raise GalotError(
            f"t2i.model: local folder '{folder}' is missing {', '.join(problems)}: a diffusers folder needs "
            f"{_LAYOUT} (vae/ optional for pixel-space models); re-save it with pipeline.save_pretrained()"
        )
    return index


def _load_component(folder: Path, name: str, library: str, class_name: str, **kwargs: Any) -> Any:
    """Load ``folder/name`` with the class that model_index.json names (e.g. transformers.BertModel)."""
    component_class = getattr(importlib.import_module(library), class_name, None)
    if component_class is None:
        raise GalotError(
            f"t2i.model: model_index.json names {library}.{class_name} for {name}/, which the installed "
            f"{library} does not provide: install a matching {library} version"
        )
    try:
        return component_class.from_pretrained(folder / name, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GalotError(f"t2i.model: cannot load {name}/ from '{folder}' ({first_line}): re-save the model") from None
