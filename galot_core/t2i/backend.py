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
override a few hooks (conditioning, one denoiser call, latent packing) and register in :data:`FAMILIES`
by their ``family`` name; :data:`~galot_core.t2i.loading.PIPELINES` maps ``model_index.json``'s
``_class_name`` to that name, and :meth:`DiffusersT2I.from_pretrained` dispatches on it (the package,
``galot_core/t2i/__init__.py``, imports every family module, so the table is full before any use).

This module holds the model and its loop, top to bottom; the rest lives by concept next to it:
reading a folder in :mod:`~galot_core.t2i.loading`, the scheduler maths (x̂0, step keywords) in
:mod:`~galot_core.t2i.schedule`, images <-> latents in :mod:`~galot_core.t2i.latents`, the gradient
estimators in :mod:`~galot_core.t2i.gradients`, the multi-part conditioning of SDXL/FLUX in
:mod:`~galot_core.t2i.packed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from galot_core.errors import GalotError
from galot_core.t2i.conditioning import Conditioning
from galot_core.t2i.gradients import AcquisitionGradient
from galot_core.t2i.hub import local_folder
from galot_core.t2i.latents import LatentImages
from galot_core.t2i.loading import (component_loader, configured_scheduler, moved, pipe_family, pipeline_family,
                                    read_model_index, resolve_options)
from galot_core.t2i.schedule import predict_x0, step_kwargs
from galot_core.t2i.text_encoders import TextEncoderPlacement, with_text_encoders


FAMILIES: dict[str, type[DiffusersT2I]] = {}
"""family name (the values of :data:`~galot_core.t2i.loading.PIPELINES`) -> its class; every class
that sets ``family`` registers itself here when its module is imported."""


class DiffusersT2I(AcquisitionGradient, LatentImages, TextEncoderPlacement):
    """Frozen diffusers/transformers components plus a readable, differentiable sampling loop.

    Args:
        text_encoder: a transformers text model (``CLIPTextModel``, ``BertModel``, ...); kept fp32.
        tokenizer: its tokenizer; prompts are padded to ``tokenizer.model_max_length``.
        unet: a ``UNet2DConditionModel`` predicting epsilon, v or the sample (scheduler config says which).
        scheduler: any diffusers scheduler that exposes ``alphas_cumprod`` (DDIM, PNDM, Euler, DPM-Solver, ...).
        vae: an ``AutoencoderKL``; ``None`` means a pixel-space model whose UNet sample IS the image in [-1, 1].
        device: where all components live; default: the UNet's device.
        denoiser_dtype: dtype of the denoiser and VAE (e.g. fp16 on CUDA); default: leave as they are.
        model_id, revision, variant: provenance only (recorded by callers in their metadata).
        text_encoder_dtype: dtype of the text encoder(s); default fp32. bf16 halves their memory
            (T5-XXL alone is 9.5 GB in fp32) at the price of slightly different embeddings.
        resolution: default image height and width in pixels; ``None`` = the family's default
            (SD/SDXL: the UNet's sample_size times the VAE factor).
        gradient_checkpointing: recompute the denoiser's activations in the backward pass
            instead of storing them (memory for time, for 4-12 B transformers on one GPU).
        offload_text_encoders: keep the text encoders on the CPU between encodings
            (:mod:`~galot_core.t2i.text_encoders` says why only they).

    ``denoiser`` holds the family's noise / velocity predictor (the ``unet`` argument for SD/SDXL,
    a ``transformer`` for SD3, FLUX and Z-Image); ``num_denoiser_calls`` counts its forward passes (a classifier-free-guidance batch of
    [uncond, cond] is one call), so benchmarks can report cost independently of hardware.
    """

    family = "sd"
    training_guidance = 0.0
    """The guidance argument of the denoiser call during adaptation: unguided, one pass."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            FAMILIES[cls.family] = cls

    def __init__(
        self,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        unet: torch.nn.Module,
        scheduler: Any,
        vae: torch.nn.Module | None = None,
        *,
        device: str | torch.device | None = None,
        denoiser_dtype: torch.dtype | None = None,
        model_id: str = "",
        revision: str = "",
        variant: str = "",
        text_encoder_dtype: torch.dtype = torch.float32,
        resolution: int | None = None,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else unet.device
        self.text_encoder_dtype, self.offload_text_encoders = text_encoder_dtype, offload_text_encoders
        self.text_encoder = moved(text_encoder, self.encoder_device, text_encoder_dtype)
        self.tokenizer = tokenizer
        self.denoiser, self.scheduler = moved(unet, self.device, denoiser_dtype), scheduler
        self.vae = moved(vae, self.device, denoiser_dtype) if vae is not None else None
        # We never train these here: only the prompt embedding receives gradients.
        self._freeze(self.text_encoder, self.denoiser, self.vae)
        if gradient_checkpointing and not getattr(self.denoiser, "_supports_gradient_checkpointing", False):
            raise GalotError(f"t2i.gradient_checkpointing: {type(self.denoiser).__name__} does not support it: set it to false")
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.resolution = resolution
        self.model_id, self.revision, self.variant = model_id, revision, variant  # provenance
        self.num_denoiser_calls = 0
        self._uncond: Tensor | None = None

    @staticmethod
    def _freeze(*modules: torch.nn.Module | None) -> None:
        for module in (m for m in modules if m is not None):
            module.eval().requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pipeline(cls, pipe: DiffusionPipeline, **kwargs: Any) -> DiffusersT2I:
        """Wrap an already-built pipeline (its components are shared, not copied); on ``DiffusersT2I`` the
        pipeline's family picks the class (as diffusers' ``AutoPipelineForText2Image.from_pipe``)."""
        family = FAMILIES[pipe_family(pipe, None if cls is DiffusersT2I else cls.family)]
        if family is not cls:
            return family.from_pipeline(pipe, **kwargs)
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
        offload_text_encoders: bool = False,
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
            resolution, gradient_checkpointing, offload_text_encoders: see the class docstring.
        """
        # 1. Check the options before touching the disk or the network.
        torch_device, model_dtype, encoder_dtype = resolve_options(device, dtype, text_encoder_dtype,
                                                                   timestep_spacing, scheduler)
        # 2. The folder (local, cached or downloaded) and its family.
        folder = local_folder(str(id_or_path), revision=revision, variant=variant, local_files_only=local_files_only)
        family = FAMILIES[pipeline_family(folder)]
        # 3. The family loads its components; the scheduler options apply to every family.
        components = family._load_components(folder, model_dtype=model_dtype, variant=variant or None,
                                             text_encoder_dtype=encoder_dtype)
        sched = configured_scheduler(components.pop("scheduler"), scheduler, timestep_spacing)
        return family(**components, scheduler=sched, device=torch_device, denoiser_dtype=model_dtype,
                      model_id=str(id_or_path), revision=revision or "", variant=variant or "",
                      text_encoder_dtype=encoder_dtype, resolution=resolution,
                      gradient_checkpointing=gradient_checkpointing, offload_text_encoders=offload_text_encoders)

    @classmethod
    def _load_components(cls, folder: Path, *, model_dtype: torch.dtype, variant: str | None,
                         text_encoder_dtype: torch.dtype) -> dict[str, Any]:
        """This family's components from ``folder`` as constructor keyword arguments (plus "scheduler")."""
        index = read_model_index(folder)
        load = component_loader(folder, index, variant)
        return {
            "unet": load("unet", torch_dtype=model_dtype),
            "vae": load("vae", torch_dtype=model_dtype) if "vae" in index else None,
            "text_encoder": load("text_encoder", dtype=text_encoder_dtype),
            "tokenizer": load("tokenizer"),
            "scheduler": load("scheduler"),
        }

    # ------------------------------------------------------------------ properties
    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of latents and scheduler arithmetic: at least fp32, so an fp16 UNet does not
        degrade the scheduler's update or change the noise; fp64 when the UNet is fp64 (used by
        finite-difference checks)."""
        return torch.promote_types(self.denoiser.dtype, torch.float32)

    @property
    def uncond(self) -> Tensor:
        """The empty-prompt embedding (1, L, D), the fixed unconditional half of classifier-free guidance."""
        if self._uncond is None:
            self._uncond = self.encode([""])
        return self._uncond

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    @with_text_encoders
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
        denoiser_dtype = self.denoiser.dtype
        inputs = self._model_inputs(cond, guidance_scale, denoiser_dtype, noise)
        # 3. The loop; only steps from grad_from on are recorded for autograd.
        for i, t in enumerate(self.scheduler.timesteps):
            if i < start:
                continue
            with torch.set_grad_enabled(grad_enabled and i >= grad_from):
                model_output, x_t = self._model_output(latents, t, inputs, guidance_scale, denoiser_dtype)
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
        return self.denoiser(model_input, t, encoder_hidden_states=inputs, return_dict=False)[0]

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
        self.num_denoiser_calls += 1
        if do_cfg:
            output_uncond, output_text = output.chunk(2)
            output = output_uncond + guidance_scale * (output_text - output_uncond)
        return output, x_t

    def _predict_x0(self, model_output: Tensor, x_t: Tensor, step_index: int, t: Tensor) -> Tensor:
        """Tweedie's x0-prediction from one model output (:func:`galot_core.t2i.schedule.predict_x0`)."""
        return predict_x0(self.scheduler, model_output, x_t, step_index, t)

    def _extra_step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        """``eta`` / ``generator`` for schedulers whose ``step`` accepts them (the pipeline's rule)."""
        return step_kwargs(self.scheduler, generator, eta)


FAMILIES[DiffusersT2I.family] = DiffusersT2I
