"""The scheduler maths that the denoising loop and the gradient estimators share: which
parameterisation a scheduler uses, Tweedie's x̂0 from one model output, and the ``step`` keywords.

Pure functions of a diffusers scheduler (no model), so they can be read and tested on their own;
the backend's hooks (``_predict_x0``, ``_extra_step_kwargs``) call them with its scheduler.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from torch import Tensor

from galot_core.errors import GalotError


def is_flow_matching(scheduler: Any) -> bool:
    """Rectified-flow schedulers (FLUX, SD3, Z-Image): x_t = (1 - sigma) x0 + sigma eps, the model predicts
    the velocity eps - x0; DPM-Solver/UniPC run in that mode with ``prediction_type="flow_prediction"``."""
    config = scheduler.config
    return (type(scheduler).__name__.startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"
            or bool(config.get("use_flow_sigmas", False)))


def predict_x0(scheduler: Any, model_output: Tensor, x_t: Tensor, step_index: int, t: Tensor) -> Tensor:
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
    if is_flow_matching(scheduler):
        sigma = scheduler.sigmas[step_index].to(x_t.device, x_t.dtype)
        return x_t - sigma * model_output
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        alpha_bar = 1.0 / (1.0 + sigmas[step_index].to(x_t.device, x_t.dtype) ** 2)
    else:
        alpha_bar = scheduler.alphas_cumprod[int(t)].to(x_t.device, x_t.dtype)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_bar) ** 0.5 * model_output) / alpha_bar**0.5
    if prediction_type == "v_prediction":
        return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * model_output
    if prediction_type == "sample":
        return model_output
    raise GalotError(f"scheduler.prediction_type: {prediction_type!r} is not epsilon, v_prediction or sample")


def step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
    """``eta`` / ``generator`` for schedulers whose ``step`` accepts them (the pipeline's rule)."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in parameters:
        kwargs["eta"] = eta
    if "generator" in parameters:
        kwargs["generator"] = generator
    return kwargs


def resolution_shift(scheduler: Any, image_seq_len: int, max_shift: float = 1.15) -> float:
    """mu of the resolution-dependent shift (FLUX.1, SD3, Z-Image pipelines): linear in the number of
    image tokens between the config's base and max sequence lengths; ``max_shift`` is the pipeline's
    fallback when the config has none (SD3's is 1.16)."""
    config = scheduler.config
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", max_shift))


def set_flow_timesteps(scheduler: Any, num_inference_steps: int, mu: float, device: torch.device) -> None:
    """FLUX's schedule (FLUX.1 and FLUX.2 pipelines alike): sigmas linspace(1, 1/T, T) shifted by ``mu``,
    or the scheduler's own flow sigmas when its config has ``use_flow_sigmas``; from step 0."""
    if scheduler.config.get("use_flow_sigmas"):
        scheduler.set_timesteps(num_inference_steps, device=device, mu=mu)
    else:
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        scheduler.set_timesteps(sigmas=sigmas, device=device, mu=mu)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
