"""The acquisition gradient: grad_s E_{x0 ~ p(x0|s)} sigma(x0, f_theta) (Eq. 5), by one of several estimators.

A mixin of :class:`~galot_core.t2i.backend.DiffusersT2I`: it runs the backend's denoising loop
(``_denoise``) with autograd on only for a window of steps and decodes the result (``_decode``);
which window, and the factor that puts the estimate on the exact gradient's scale, is the
estimator:

* ``"last_step"`` (default, the paper's Proposition 1): the first steps run
  without grad; only the last UNet call is differentiated. x0 is the Tweedie
  prediction from that call, not ``scheduler.step``'s output: with the common
  "leading" spacing the last timestep is t = 0 (or 1) and the scheduler's last
  step is numerically the identity, so its gradient w.r.t. ``s`` is 0 or ~1e-19
  (measured on SD 1/2's DDIM). The result is multiplied by T = ``num_inference_steps``
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
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import Tensor

from galot_core.errors import GalotError

Objective = Callable[[Tensor], Tensor]
"""Maps images (N, C, H, W) in [0, 1] (differentiably) to per-image values (N,); higher = more informative."""

Estimator = Literal["last_step", "last_m", "tweedie", "full"]
ESTIMATORS: tuple[str, ...] = ("last_step", "last_m", "tweedie", "full")


class AcquisitionGradient:
    """:meth:`acquisition_grad` for a backend with ``_denoise``, ``_decode``, ``initial_noise``,
    ``_set_timesteps`` and a ``scheduler``."""

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
            estimator: one of :data:`ESTIMATORS` (see the module docstring).
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
        _check_estimator(estimator, k, m)
        embeds = prompt_embeds.detach().to(self.device, torch.float32).requires_grad_(True)
        noise = self._estimator_noise(noise, embeds.shape[0], k, generator, height, width)
        grad_from, tweedie_at, scale = self._gradient_window(estimator, num_inference_steps, m, tweedie_t, noise)
        loop = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                "extra_step_kwargs": self._extra_step_kwargs(generator, eta=0.0),
                "grad_from": grad_from, "tweedie_at": tweedie_at}
        values = self._backpropagate(embeds, noise, objective, k, batch_size or noise.shape[0], loop)
        mean_values = torch.cat(values).view(-1, k).mean(dim=1).to(torch.float32)
        return embeds.grad * scale, mean_values

    def _estimator_noise(self, noise: Tensor | None, n_embeds: int, k: int, generator: torch.Generator | None,
                         height: int | None, width: int | None) -> Tensor:
        """The ``n_embeds * k`` initial latents: ``noise`` when given (checked), else one draw."""
        n_samples = n_embeds * k
        if noise is None:
            noise = self.initial_noise(n_samples, generator, height=height, width=width)
        elif noise.shape[0] != n_samples:
            raise ValueError(f"noise has {noise.shape[0]} rows, expected {n_samples} ({n_embeds} embeddings × k={k})")
        return noise

    def _backpropagate(self, embeds: Tensor, noise: Tensor, objective: Objective, k: int, chunk: int,
                       loop: dict[str, Any]) -> list[Tensor]:
        """Sample, decode and score ``chunk`` rows at a time, accumulating the gradient of each
        embedding's mean objective in ``embeds.grad``; returns the detached values per chunk."""
        values = []
        with torch.enable_grad():
            for start in range(0, noise.shape[0], chunk):
                rows = slice(start, start + chunk)
                cond = embeds.repeat_interleave(k, dim=0)[rows].to(self.compute_dtype)
                latents = self._denoise(cond, noise[rows], **loop)
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
        return values

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


def _check_estimator(estimator: str, k: int, m: int) -> None:
    """Refuse an unknown estimator or a sample/step count below one, before any work."""
    if estimator not in ESTIMATORS:
        raise GalotError(f"estimator: {estimator!r} is not one of {', '.join(ESTIMATORS)}: fix the value")
    if k < 1 or m < 1:
        raise GalotError(f"k={k}, m={m}: both must be >= 1")
