"""A Stable-Diffusion-style text-to-image model that GALOT can differentiate through.

GALOT (Sec. 3.3) optimises the *text embedding* ``s`` of a class prompt so that the images it
generates maximise an active-learning acquisition function ``sigma(x0, f_theta)``:

    s <- s + alpha * sgn E_{x0 ~ p(x0 | s)} [grad_s sigma(x0, f_theta)]        (Eq. 5)

``StableDiffusionPipeline.__call__`` is wrapped in ``torch.no_grad`` and hides the loop, so this
module re-writes the pipeline's denoising loop step for step (``generate`` reproduces the
pipeline's images) and adds :meth:`DiffusersT2I.acquisition_grad`, which estimates that
gradient with one of several estimators (see its docstring). Gradients flow only into the
conditional prompt embedding; the UNet, VAE and text encoder are frozen.

``DiffusersT2I`` itself is the Stable Diffusion 1.x/2.x family (one text encoder, a UNet, ε/v
prediction). The other families (SDXL, FLUX.1, ...) subclass it in their own modules and
override a few hooks (conditioning, one denoiser call, latent packing); :data:`PIPELINES` maps
``model_index.json``'s ``_class_name`` to the family, and :meth:`DiffusersT2I.from_pretrained`
dispatches on it.
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
from galot_core.t2i.conditioning import Conditioning
from galot_core.t2i.hub import local_folder

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

# model_index.json's _class_name -> (family, module, backend class). The family decides which
# components are loaded and how the denoiser is called; anything else is refused in one line.
PIPELINES: dict[str, tuple[str, str, str]] = {
    "StableDiffusionPipeline": ("sd", "galot_core.t2i.backend", "DiffusersT2I"),
    "StableDiffusionXLPipeline": ("sdxl", "galot_core.t2i.sdxl", "SDXLT2I"),
    "FluxPipeline": ("flux", "galot_core.t2i.flux", "FluxT2I"),
}


def is_flow_matching(scheduler: Any) -> bool:
    """Rectified-flow schedulers (FLUX, SD3, Z-Image): x_t = (1 - sigma) x0 + sigma eps, the model predicts
    the velocity eps - x0; DPM-Solver/UniPC run in that mode with ``prediction_type="flow_prediction"``."""
    config = scheduler.config
    return (type(scheduler).__name__.startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"
            or bool(config.get("use_flow_sigmas", False)))


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
        model_id, revision, variant: provenance only (recorded by callers in their metadata).
        text_encoder_dtype: dtype of the text encoder(s); default fp32. bf16 halves their memory
            (T5-XXL alone is 9.5 GB in fp32) at the price of slightly different embeddings.
        resolution: default image height and width in pixels; ``None`` = the family's default
            (SD/SDXL: the UNet's sample_size times the VAE factor).
        gradient_checkpointing: recompute the denoiser's activations in the backward pass
            instead of storing them (memory for time, for 4-12 B transformers on one GPU).

    ``unet`` is the family's denoiser (a UNet for SD/SDXL, a transformer for FLUX);
    ``num_unet_calls`` counts its forward passes (a classifier-free-guidance batch of
    [uncond, cond] is one call), so benchmarks can report cost independently of hardware.
    """

    family = "sd"

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
        variant: str = "",
        text_encoder_dtype: torch.dtype = torch.float32,
        resolution: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else unet.device
        self.text_encoder_dtype = text_encoder_dtype
        self.text_encoder = _moved(text_encoder, self.device, text_encoder_dtype)
        self.tokenizer = tokenizer
        self.unet = _moved(unet, self.device, unet_dtype)
        self.scheduler = scheduler
        self.vae = _moved(vae, self.device, unet_dtype) if vae is not None else None
        # We never train these here: only the prompt embedding receives gradients.
        self._freeze(self.text_encoder, self.unet, self.vae)
        if gradient_checkpointing:
            if not getattr(self.unet, "_supports_gradient_checkpointing", False):
                raise GalotError(f"t2i.gradient_checkpointing: {type(self.unet).__name__} does not support it: "
                                 "set it to false")
            self.unet.enable_gradient_checkpointing()
        self.resolution = resolution
        self.model_id = model_id
        self.revision = revision
        self.variant = variant
        self.num_unet_calls = 0
        self._uncond: Tensor | None = None

    @staticmethod
    def _freeze(*modules: torch.nn.Module | None) -> None:
        for module in modules:
            if module is not None:
                module.eval()
                module.requires_grad_(False)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer that predicts noise / velocity (the attribute is ``unet`` for history)."""
        return self.unet

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
        variant: str | None = None,
        text_encoder_dtype: str = "fp32",
        resolution: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> DiffusersT2I:
        """Load a diffusers-format checkpoint of a supported family: a local folder or a hub id.

        The family comes from ``model_index.json``'s ``_class_name`` (:data:`PIPELINES`); the
        component classes from its entries, so an SD text encoder may be CLIP or e.g. a MiniLM
        ``BertModel``, and ``vae`` may be absent (pixel space). Called on ``DiffusersT2I`` it
        returns the family's subclass.

        Args:
            device: "auto" (cuda if available, else cpu) or a torch device string.
            dtype: "auto" (fp16 UNet/VAE on CUDA, fp32 on CPU) or "fp32" / "fp16" / "bf16".
            timestep_spacing: overrides the scheduler config ("leading", "trailing", "linspace").
                "trailing" ends the schedule at a noisy timestep, which matters for the last-step
                gradient (see :meth:`acquisition_grad`).
            local_files_only: for hub ids; ``None`` follows ``HF_HUB_OFFLINE``.
            revision: hub revision (branch, tag or commit) to pin.
            scheduler: replace the folder's scheduler by one of :data:`SCHEDULERS` built from its
                config (same noise schedule): e.g. "dpm++" reaches the quality of DDIM at fewer
                steps (docs/performance.md measures it on galot-mini).
            variant: weight variant ("fp16", "bf16"): load ``*.fp16.safetensors`` files.
            text_encoder_dtype: "fp32" (default), "fp16" or "bf16" for the text encoder(s).
            resolution, gradient_checkpointing: see the class docstring.
        """
        # 1. Check the options before touching the disk or the network.
        torch_device = _resolve_device(device)
        model_dtype = _resolve_dtype(dtype, torch_device)
        if text_encoder_dtype not in _DTYPES:
            raise GalotError(f"t2i.text_encoder_dtype: {text_encoder_dtype!r} is not one of {', '.join(_DTYPES)}: "
                             "fix the value")
        if timestep_spacing is not None and timestep_spacing not in ("leading", "trailing", "linspace"):
            raise GalotError(
                f"t2i.timestep_spacing: {timestep_spacing!r} is not one of leading, trailing, linspace: fix the value"
            )
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise GalotError(f"t2i.scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}: fix the value")
        # 2. The folder (local, cached or downloaded) and its family.
        folder = local_folder(str(id_or_path), revision=revision, variant=variant, local_files_only=local_files_only)
        family_class = _family_class(folder)
        # 3. The family loads its components; the scheduler options apply to every family.
        components = family_class._load_components(folder, model_dtype=model_dtype, variant=variant or None,
                                                   text_encoder_dtype=_DTYPES[text_encoder_dtype])
        sched = components.pop("scheduler")
        if scheduler is not None:
            sched = getattr(diffusers, SCHEDULERS[scheduler]).from_config(sched.config)
        if timestep_spacing is not None:
            sched = type(sched).from_config(sched.config, timestep_spacing=timestep_spacing)
        return family_class(
            **components,
            scheduler=sched,
            device=torch_device,
            unet_dtype=model_dtype,
            model_id=str(id_or_path),
            revision=revision or "",
            variant=variant or "",
            text_encoder_dtype=_DTYPES[text_encoder_dtype],
            resolution=resolution,
            gradient_checkpointing=gradient_checkpointing,
        )

    @classmethod
    def _load_components(cls, folder: Path, *, model_dtype: torch.dtype, variant: str | None,
                         text_encoder_dtype: torch.dtype) -> dict[str, Any]:
        """This family's components from ``folder`` as constructor keyword arguments (plus "scheduler")."""
        index = _read_model_index(folder)
        load = _loader(folder, index, variant)
        return {
            "unet": load("unet", torch_dtype=model_dtype),
            "vae": load("vae", torch_dtype=model_dtype) if "vae" in index else None,
            "text_encoder": load("text_encoder", dtype=text_encoder_dtype),
            "tokenizer": load("tokenizer"),
            "scheduler": load("scheduler"),
        }

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

    def encode_conditioning(self, prompts: list[str]) -> Conditioning:
        """The typed conditioning of ``prompts``; for SD 1/2 only token embeddings (its ``pack()`` is
        :meth:`encode`'s tensor). Families with more parts override this, ``encode`` and ``unpack``."""
        return Conditioning(self.encode(prompts))

    def unpack(self, packed: Tensor) -> Conditioning:
        """The parts of a packed conditioning (what :meth:`encode` returns and TextOpt moves)."""
        return Conditioning(packed)

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
        """Images (B, C, H, W) in [0, 1], one per row of ``prompt_embeds`` (B, L, D) — for SDXL and
        FLUX the packed conditioning (B, 1, N) that their :meth:`encode` returns.

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
            if type(self) is not DiffusersT2I:
                raise GalotError(f"gal.anchor_strength: image-to-image is implemented for Stable Diffusion 1/2 "
                                 f"folders only, not {type(self).__name__}; set gal.anchor_strength: 0")
            self._set_timesteps(num_inference_steps, latents)
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
        height, width = self._image_size(height, width)
        shape = (
            batch_size,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.compute_dtype)

    def _image_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) in pixels: the arguments, else ``resolution``, else the UNet's sample_size
        times the VAE factor (the pipeline's default)."""
        if self.resolution is not None:
            return height or self.resolution, width or self.resolution
        sample_size = self.unet.config.sample_size
        default_h, default_w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        return height or default_h * self.vae_scale_factor, width or default_w * self.vae_scale_factor

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
        embeds = prompt_embeds.detach().to(self.device, torch.float32).requires_grad_(True)
        n_samples = embeds.shape[0] * k
        if noise is None:
            noise = self.initial_noise(n_samples, generator, height=height, width=width)
        elif noise.shape[0] != n_samples:
            raise ValueError(f"noise has {noise.shape[0]} rows, expected {n_samples} ({embeds.shape[0]} embeddings × k={k})")
        grad_from, tweedie_at, scale = self._gradient_window(estimator, num_inference_steps, m, tweedie_t, noise)
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
        self, estimator: str, num_inference_steps: int, m: int, tweedie_t: int | None, noise: Tensor
    ) -> tuple[int, int | None, float]:
        """(first step index that is differentiated, step index whose Tweedie x0 ends sampling
        or None to run the full loop, factor that puts the estimate on the full gradient's scale)."""
        self._set_timesteps(num_inference_steps, noise)
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
        # 1. set_timesteps also resets stateful schedulers (PNDM's history, Euler's step index).
        self._set_timesteps(num_inference_steps, noise)
        if start is not None and hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        latents = self._pack(noise) * (getattr(self.scheduler, "init_noise_sigma", 1.0) if start is None else 1.0)
        start = start or 0
        grad_enabled = torch.is_grad_enabled()
        # 2. As the pipeline does: the [uncond, cond] conditioning is built once, not per step.
        unet_dtype = self.unet.dtype
        inputs = self._model_inputs(cond, guidance_scale, unet_dtype, noise)
        # 3. The loop; only steps from grad_from on are recorded for autograd.
        for i, t in enumerate(self.scheduler.timesteps):
            if i < start:
                continue
            with torch.set_grad_enabled(grad_enabled and i >= grad_from):
                model_output, x_t = self._model_output(latents, t, inputs, guidance_scale, unet_dtype)
                if i == tweedie_at:
                    return self._unpack(self._predict_x0(model_output, x_t, i, t), noise)
                latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs, return_dict=False)[0]
        return self._unpack(latents, noise)

    # ------------------------------------------------------------------ family hooks (SD 1/2 here)

    def _set_timesteps(self, num_inference_steps: int, noise: Tensor) -> None:
        """The scheduler's timesteps for this run; ``noise`` (B, C, h, w) gives the image size to
        families whose schedule depends on it (FLUX's resolution-dependent shift)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)

    def _pack(self, noise: Tensor) -> Tensor:
        """Latents (B, C, h, w) as the denoiser takes them (FLUX packs 2x2 patches into tokens)."""
        return noise

    def _unpack(self, latents: Tensor, noise: Tensor) -> Tensor:
        """The inverse of :meth:`_pack`; ``noise`` gives the unpacked shape."""
        return latents

    def _model_inputs(self, cond: Tensor, guidance_scale: float, dtype: torch.dtype, noise: Tensor) -> Any:
        """Everything the denoiser needs besides x_t and t, built once per loop: for SD the
        cross-attention states, [uncond, cond] stacked when guidance is on, in ``dtype``."""
        if guidance_scale > 1.0:
            return torch.cat([self.uncond.expand(cond.shape[0], -1, -1).to(cond.dtype), cond]).to(dtype)
        return cond.to(dtype)

    def _denoiser_call(self, model_input: Tensor, t: Tensor, inputs: Any) -> Tensor:
        """One raw forward pass of the denoiser on ``model_input`` (already in its dtype)."""
        return self.unet(model_input, t, encoder_hidden_states=inputs, return_dict=False)[0]

    def _model_output(self, latents: Tensor, t: Tensor, inputs: Any, guidance_scale: float,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One UNet call with classifier-free guidance, as in the pipeline.

        ``inputs`` is the UNet conditioning from :meth:`_model_inputs`, in ``dtype``: [uncond,
        cond] stacked when guidance is on. Returns the guided model output and the scaled model
        input x_t (the variance-preserving sample the UNet sees), both in ``compute_dtype``.
        """
        x_t = self.scheduler.scale_model_input(latents, t) if hasattr(self.scheduler, "scale_model_input") else latents
        do_cfg = guidance_scale > 1.0
        model_input = torch.cat([x_t] * 2) if do_cfg else x_t
        # compute_dtype from the UNet dtype passed in: the property walks every parameter of the
        # UNet, which at one call per step cost ~3-5 % of generation against diffusers' own loop.
        output = self._denoiser_call(model_input.to(dtype), t, inputs).to(torch.promote_types(dtype, torch.float32))
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
        Flow-matching models are different: x_t = (1 - sigma) x0 + sigma eps and the output is
        the velocity eps - x0, so x0 = x_t - sigma * output (not the VP formula with
        abar = 1 / (1 + sigma^2)).
        No clipping: the decoder's clamp to [0, 1] plays that role.
        """
        if is_flow_matching(self.scheduler):
            sigma = self.scheduler.sigmas[step_index].to(x_t.device, x_t.dtype)
            return x_t - sigma * model_output
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
            image = self.vae.decode(self._vae_latents(latents).to(self.vae.dtype), return_dict=False)[0]
        return (image.to(self.compute_dtype) * 0.5 + 0.5).clamp(0, 1)

    def _vae_latents(self, latents: Tensor) -> Tensor:
        """Denoiser latents -> the VAE's latent space: undo ``scaling_factor`` and, where the VAE
        config has them, ``shift_factor`` (FLUX, SD3) or per-channel ``latents_mean``/``latents_std``."""
        config = self.vae.config
        mean, std = config.get("latents_mean"), config.get("latents_std")
        if mean is not None and std is not None:
            view = (1, len(mean), 1, 1)
            return (latents * torch.tensor(std, dtype=latents.dtype, device=latents.device).view(view)
                    / config.scaling_factor + torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(view))
        latents = latents / config.scaling_factor
        shift = config.get("shift_factor")
        return latents + shift if shift is not None else latents

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


class PackedT2I(DiffusersT2I):
    """A family whose conditioning has several parts (tokens, pooled vector): TextOpt moves them
    packed into one row, and the layout of the unconditional encoding unpacks them (SDXL, FLUX)."""

    _layout: tuple[tuple[int, int], int | None] | None = None

    def encode(self, prompts: list[str]) -> Tensor:
        """The packed optimised conditioning (B, 1, N) of ``prompts`` (TextOpt's variable)."""
        return self.encode_conditioning(prompts).pack()

    def unconditional(self) -> Conditioning:
        """The conditioning of the unconditional half of guidance: the encoding of ""."""
        return self.encode_conditioning([""])

    @property
    def uncond(self) -> Tensor:
        """The packed unconditional conditioning (1, 1, N); computing it also fixes the layout."""
        if self._uncond is None:
            empty = self.unconditional()
            self._layout = empty.layout()
            self._uncond = empty.pack()
        return self._uncond

    def unpack(self, packed: Tensor) -> Conditioning:
        """Tokens and pooled of a packed conditioning (views: gradients reach ``packed``)."""
        if self._layout is None:
            self.uncond  # noqa: B018 - computes the layout
        return Conditioning.unpack(packed, self._layout)


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


def _family_class(folder: Path) -> type[DiffusersT2I]:
    """The backend class for the pipeline that ``folder/model_index.json`` names; others are refused."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise GalotError(
            f"t2i.model: folder '{folder}' is missing model_index.json: point t2i.model at a diffusers folder "
            f"({_LAYOUT}), e.g. one written by pipeline.save_pretrained()"
        )
    try:
        class_name = json.loads(index_file.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise GalotError(f"t2i.model: '{index_file}' is not a JSON object: re-save the model with "
                         "pipeline.save_pretrained()") from None
    if class_name not in PIPELINES:
        raise GalotError(
            f"t2i.model: '{folder}' holds a {class_name} (model_index.json _class_name), which galot does not "
            f"support: use a model of one of {', '.join(PIPELINES)}"
        )
    _, module, backend = PIPELINES[class_name]
    return getattr(importlib.import_module(module), backend)


def _loader(folder: Path, index: dict[str, tuple[str, str]], variant: str | None) -> Callable[..., Any]:
    """``load(name, **kwargs)``: the component ``folder/name`` with the class model_index.json names;
    weights of ``variant`` (e.g. fp16) for models (tokenizers and schedulers have no variants)."""

    def load(name: str, **kwargs: Any) -> Any:
        library, class_name = index[name]
        if variant and name.split("_")[0] not in ("tokenizer", "scheduler"):
            kwargs["variant"] = variant
        return _load_component(folder, name, library, class_name, **kwargs)

    return load


def _read_model_index(folder: Path, required: tuple[str, ...] = _REQUIRED_COMPONENTS,
                      optional: tuple[str, ...] = ("vae",), layout: str = _LAYOUT,
                      order: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                      ) -> dict[str, tuple[str, str]]:
    """The components listed in ``model_index.json`` as {name: (library, class)}; checks the folders exist.

    ``required`` must be listed and present; ``optional`` ones (SD's vae/ for pixel-space models)
    only when listed; ``order`` is the order in which missing folders are named.
    """
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise GalotError(
            f"t2i.model: folder '{folder}' is missing model_index.json: point t2i.model at a diffusers folder "
            f"({_LAYOUT}), e.g. one written by pipeline.save_pretrained()"
        )
    index = {
        name: (entry[0], entry[1])
        for name, entry in json.loads(index_file.read_text()).items()
        if name in (*required, *optional) and isinstance(entry, list) and entry[0] and entry[1]
    }
    # Optional components (pixel-space models list vae as [null, null]) are checked only when listed.
    expected = [name for name in order if name in required or name in index]
    problems = [f"{name}/" for name in expected if not (folder / name).is_dir()]
    problems += [f"{name} in model_index.json" for name in required if name not in index]
    if problems:
        optional_note = f" ({', '.join(f'{name}/' for name in optional)} optional)" if optional else ""
        raise GalotError(
            f"t2i.model: local folder '{folder}' is missing {', '.join(problems)}: a diffusers folder needs "
            f"{layout}{optional_note}; re-save it with pipeline.save_pretrained()"
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
