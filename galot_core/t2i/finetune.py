"""Fitting a text-to-image model to a few labelled images: the training-time denoising loss,
an embedding fit (textual inversion of the conditioning TextOpt moves) and a LoRA fit (peft).

The sampling loop in :mod:`~galot_core.t2i.backend` only ever runs the denoiser forward from
noise. Adaptation needs the other direction, as every diffusers training script does: encode a
real image to latents x0, noise it to a random time t, and regress the denoiser's output on
what it should have predicted. The target is the family's: ε (or v) for the SD/SDXL UNets on
their DDPM schedule, the velocity ε − x0 at x_t = (1 − σ)·x0 + σ·ε for the flow-matching
transformers (SD3, FLUX.1, FLUX.2, Z-Image). The denoiser is called through the family hooks
the loop uses, unguided, so one loss serves every family.

Why adapt at all: the generator's idea of "a photo of a {label}" is fixed when it is
pretrained; the labels galot buys each cycle never reach it (docs/results.md, "Issue 15's verdict"). A
LoRA on the denoiser's attention can redraw a class the model gets wrong; an embedding fit can
only move within what the frozen denoiser already draws, which is why it is kept inside a ball.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from galot_core.errors import GalotError

ADAPTER = "galot"  # the peft adapter's name inside the denoiser


def is_flow_matching(t2i: Any) -> bool:
    """Whether the family samples by flow matching (SD3, FLUX, Z-Image) rather than DDPM/DDIM."""
    return "FlowMatch" in type(t2i.scheduler).__name__


def training_latents(t2i: Any, images: Tensor) -> Tensor:
    """Images (B, C, H, W) in [0, 1] → x0 in the layout of :meth:`initial_noise` (what the loop denoises)."""
    return t2i.encode_images(images)


def _noised(t2i: Any, x0: Tensor, noise: Tensor, u: Tensor, steps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, t, target) for the family: flow matching at σ = shift(u), else DDPM at integer ``steps``."""
    if is_flow_matching(t2i):
        config = t2i.scheduler.config
        shift = 1.0 if config.get("use_dynamic_shifting", False) else float(config.get("shift", 1.0))
        sigma = shift * u / (1 + (shift - 1) * u)  # the scheduler's static shift, as its training sigmas
        s = sigma.view(-1, *[1] * (x0.dim() - 1))
        return (1 - s) * x0 + s * noise, sigma * 1000, noise - x0
    abar = t2i.scheduler.alphas_cumprod.to(x0.device, x0.dtype)[steps].view(-1, *[1] * (x0.dim() - 1))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    kind = t2i.scheduler.config.get("prediction_type", "epsilon")
    target = {"epsilon": noise, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0, "sample": x0}[kind]
    return x_t, steps, target


def denoiser_output(t2i: Any, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
    """One unguided denoiser call on x_t (initial-noise layout) at times ``t`` (B,), same layout out."""
    dtype = t2i.denoiser.dtype
    inputs = t2i._model_inputs(cond.to(t2i.device, t2i.compute_dtype), t2i.training_guidance, dtype, x_t)
    if is_flow_matching(t2i):
        out, _ = t2i._model_output(t2i._pack(x_t), t, inputs, t2i.training_guidance, dtype)
        return t2i._unpack(out, x_t)
    t2i.num_denoiser_calls += 1
    return t2i._denoiser_call(x_t.to(dtype), t, inputs).to(t2i.compute_dtype)


def denoising_loss(t2i: Any, x0: Tensor, cond: Tensor, generator: torch.Generator) -> Tensor:
    """The family's training loss on x0 (B, ...) under conditionings ``cond`` (B, ...): MSE of the
    denoiser's output against its target at one random time per image."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
    u = torch.rand(b, generator=generator).to(x0)
    steps = torch.randint(0, t2i.scheduler.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
    x_t, t, target = _noised(t2i, x0, noise, u, steps)
    return F.mse_loss(denoiser_output(t2i, x_t, t, cond).float(), target.float())


# ---------------------------------------------------------------------------------- embedding

def fit_embeddings(t2i: Any, x0: Tensor, labels: Tensor, template: Tensor, *, start: Tensor | None = None,
                   steps: int, lr: float, radius: float, batch: int, generator: torch.Generator,
                   progress: bool = True) -> tuple[Tensor, list[float]]:
    """Per class, the conditioning row whose denoising loss on the class's images is lowest.

    Starts from ``start`` (last cycle's fit) or ``template`` (s*_c, one row per class) and stays
    within ``radius``·‖s*_c‖ of the template (projected after every Adam step): in a pilot fit
    without the ball, labels were lost when the fit drifted freely toward the images' style. Only classes with images
    move; exact zeros of the template (Z-Image's padding rows) stay zero.
    """
    template = template.float()
    s = (template if start is None else start.float()).clone().requires_grad_(True)
    present = torch.zeros(len(template), dtype=torch.bool)
    present[labels.unique()] = True
    mask = (template != 0).float() * present.float().view(-1, *[1] * (template.dim() - 1))
    limit = radius * template.flatten(1).norm(dim=1)
    opt = torch.optim.Adam([s], lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="adapt embeddings", leave=False, disable=not progress):
        idx = torch.randint(0, len(x0), (min(batch, len(x0)),), generator=generator)
        loss = denoising_loss(t2i, x0[idx], s[labels[idx]], generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        s.grad *= mask
        opt.step()
        with torch.no_grad():  # back into the ball around the template
            d = (s - template).flatten(1)
            scale = (limit / d.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            s.copy_(template + (d * scale[:, None]).view_as(s))
        losses.append(loss.item())
    return s.detach(), losses


# ---------------------------------------------------------------------------------- LoRA

def check_lora_target(t2i: Any, modules: tuple[str, ...]) -> None:
    """Refuse, before any work, a denoiser that cannot take a LoRA on ``modules`` (one line each)."""
    den = t2i.denoiser
    if not hasattr(den, "add_adapter"):
        raise GalotError(f"gal.adapt: lora needs a diffusers model with peft support; {type(den).__name__} has "
                         "none: use gal.adapt: embedding or none")
    # a linear layer, or one peft already wraps (its ``base_layer`` is the linear layer)
    names = [n for n, m in den.named_modules() if isinstance(m, torch.nn.Linear) or hasattr(m, "base_layer")]
    if not any(n == m or n.endswith("." + m) for n in names for m in modules):
        raise GalotError(f"gal.adapt_modules: {list(modules)} match no linear layer of {type(den).__name__}; "
                         "name its attention projections, e.g. [to_q, to_k, to_v, to_out.0]")


def attach_lora(t2i: Any, rank: int, modules: tuple[str, ...], seed: int) -> None:
    """A fresh peft LoRA (rank r, alpha r, Gaussian A, zero B) on the denoiser's ``modules``, as
    diffusers' own LoRA training scripts add it; the model's output is unchanged until it is fitted."""
    from peft import LoraConfig

    check_lora_target(t2i, modules)
    den = t2i.denoiser
    if ADAPTER in getattr(den, "peft_config", {}):
        den.delete_adapters(ADAPTER)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            den.add_adapter(config, adapter_name=ADAPTER)
        except ValueError as e:
            raise GalotError(f"gal.adapt_modules: {list(modules)} match no layer of {type(den).__name__} ({e}); "
                             "name its attention projections, e.g. [to_q, to_k, to_v, to_out.0]") from None
    den.requires_grad_(False)


def _prefix(t2i: Any) -> str:
    """The key prefix of the denoiser in diffusers' LoRA files: ``unet`` or ``transformer``."""
    return "unet" if type(t2i.denoiser).__name__.startswith("UNet") else "transformer"


def lora_state(t2i: Any) -> dict[str, Tensor]:
    """The fitted LoRA weights with diffusers' keys (``unet.…lora_A.weight``), fp32, on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(t2i.denoiser, adapter_name=ADAPTER)
    return {f"{_prefix(t2i)}.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}


def load_lora_state(t2i: Any, tensors: dict[str, Tensor], source: str) -> None:
    """Put saved LoRA weights into the attached adapter; a file of another shape is one line naming it."""
    from peft.utils import set_peft_model_state_dict

    prefix = _prefix(t2i) + "."
    expected = lora_state(t2i)
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise GalotError(f"{source}: the LoRA weights do not fit this model's adapter (another model, rank or "
                         "gal.adapt_modules); delete the file to fit it again")
    state = {k[len(prefix):]: v.to(t2i.device, t2i.denoiser.dtype) for k, v in tensors.items()}
    set_peft_model_state_dict(t2i.denoiser, state, adapter_name=ADAPTER)
    t2i.denoiser.requires_grad_(False)


def set_lora_scale(t2i: Any, scale: float) -> None:
    """How strongly the adapter acts at generation (1 = as fitted, 0 = the pretrained model)."""
    from peft.tuners.lora import LoraLayer

    for module in t2i.denoiser.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(ADAPTER, scale)  # scaling = scale·alpha/r, set, not multiplied


def _like(uncond: Tensor, row: Tensor) -> Tensor:
    """The empty prompt's conditioning (1, L', ...) in the shape of one prompt's (L, ...): families
    whose token count follows the prompt (Z-Image) pad with zero rows, which they treat as padding."""
    u = uncond[0]
    if u.shape[0] >= row.shape[0]:
        return u[:row.shape[0]]
    return torch.cat([u, u.new_zeros((row.shape[0] - u.shape[0], *u.shape[1:]))])


def fit_lora(t2i: Any, x0: Tensor, cond: Tensor, uncond: Tensor, *, steps: int, lr: float, batch: int,
             generator: torch.Generator, uncond_prob: float = 0.1,
             progress: Callable[[int], None] | bool = True) -> list[float]:
    """AdamW on the attached LoRA's weights (lr, weight decay 1e-2), the denoiser otherwise frozen.

    ``cond`` (N, ...) is each image's class conditioning; ``uncond_prob`` of a batch's rows get
    the empty prompt instead, so the unconditional branch of classifier-free guidance learns the
    images' domain too (10 %, which kept guidance working in the pilot LoRA fit).
    """
    params = [p for n, p in t2i.denoiser.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    losses = []
    try:
        for _ in tqdm(range(steps), desc="adapt LoRA", leave=False, disable=progress is False):
            idx = torch.randint(0, len(x0), (min(batch, len(x0)),), generator=generator)
            c = cond[idx].clone()
            drop = torch.rand(len(idx), generator=generator) < uncond_prob
            c[drop] = _like(uncond.to(c), c[0])
            loss = denoising_loss(t2i, x0[idx], c, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
    finally:
        for p in params:
            p.requires_grad_(False)
    return losses
