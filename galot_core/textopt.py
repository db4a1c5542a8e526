"""TextOpt: projected gradient ascent on a text embedding (paper Sec. 3.2–3.3, Alg. 1 l. 8).

GALOT looks for the condition ``s`` whose generated images are most informative to the
classifier, without drifting far from the task's template embedding ``s*`` (Eq. 2)::

    max_s  E_{x ~ p(x|s)} σ(x, f_θ)   s.t.  ‖s − s*‖₂ ≤ ε

:func:`optimize` solves it with projected gradient ascent: an ascent step (Eq. 5, ``sgn``
of the estimated gradient; or the ``l2``-normalised gradient of the authors' public
code) followed by the radial projection back onto the ε-ball (Eq. 6). The gradient
estimate itself (Proposition 1, averaged over k generated images) needs the T2I model, so
it is passed in as ``grad_fn``; this module imports no diffusers and is pure tensors.

Why everything runs in fp32: the step size α = ε/5 (Table 8) is tiny next to embedding
entries of order 1, and an fp16 iterate would round ``s + α`` back to ``s``. The caller's
model may run in half precision; only the iterate's arithmetic is kept in fp32 here.

Batching: an ``s*`` of shape ``(B, L, D)`` holds one embedding per class, optimised jointly
by one batched ``grad_fn``. Each row ``b`` is its own problem (Eq. 2 is per condition), so
norms, ``l2`` normalisation and the projection are taken PER ROW, and ε / α may be given
per row as ``(B,)`` tensors. Any other shape (e.g. ``(L, D)``) is one embedding whose
norms are taken over the whole tensor; so ``(1, L, D)`` behaves exactly like ``(L, D)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from galot_core.faults import failpoint

GradFn = Callable[[Tensor], Tensor]
"""``s -> estimated gradient of the objective at s`` (same shape as ``s``)."""

Step = Literal["sign", "l2"]
Schedule = Literal["linear", "constant"]

STEPS: tuple[str, ...] = ("sign", "l2")
SCHEDULES: tuple[str, ...] = ("linear", "constant")


# --------------------------------------------------------------------------- helpers


def _is_batched(s: Tensor) -> bool:
    """``(B, L, D)`` (or higher) is a batch of embeddings; lower ranks are one embedding."""
    return s.dim() >= 3


def _rows(s: Tensor) -> Tensor:
    """View ``s`` as ``(rows, features)``: one row per independently constrained embedding."""
    return s.reshape(s.shape[0], -1) if _is_batched(s) else s.reshape(1, -1)


def _per_row(value: float | Tensor, rows: int, name: str, like: Tensor) -> Tensor:
    """``value`` as a finite, non-negative fp32 ``(rows, 1)`` column (broadcasts over features)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device).detach().flatten()
    if t.numel() == 1:
        t = t.expand(rows)
    elif t.numel() != rows:
        raise ValueError(
            f"{name} must be a float or a tensor with one value per embedding row "
            f"({rows}), got {t.numel()} values"
        )
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {t.tolist()}")
    return t.reshape(rows, 1)


def _project(s: Tensor, s_star: Tensor, eps: Tensor) -> Tensor:
    """Eq. 6: radial projection of each row onto ``‖s − s*‖₂ ≤ ε``.

    ``s* + (s − s*)·min(1, ε/‖s − s*‖)``: the closest point of the L2 ball, so an iterate
    already inside is left untouched. Shapes are ``(rows, features)``; ``eps`` is ``(rows, 1)``.
    """
    delta = s - s_star
    norm = delta.norm(dim=1, keepdim=True)
    scale = torch.where(norm > eps, eps / norm.clamp_min(torch.finfo(norm.dtype).tiny), 1.0)
    return s_star + delta * scale


def _direction(g: Tensor, step: str) -> Tensor:
    """The raw ascent direction ``d`` of one row-shaped gradient ``(rows, features)``.

    ``sign`` is Eq. 5: every coordinate moves by exactly α, and ``sgn(0) = 0`` leaves a
    coordinate with zero gradient where it is (no evidence to move it either way).
    ``l2`` is the authors' code: the gradient scaled to unit norm per row; a row with a
    zero gradient does not move (there is no direction to normalise).
    """
    if step == "sign":
        return torch.sign(g)
    norm = g.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)


# --------------------------------------------------------------------------- TextOpt


def optimize(
    s_star: Tensor,
    grad_fn: GradFn,
    epsilon: float | Tensor,
    alpha: float | Tensor,
    steps: int,
    step: Step = "sign",
    momentum: float = 0.0,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """TextOpt (Alg. 1 l. 8): ``steps`` projected ascent steps from ``s*``; returns fp32 ``s'``.

    Each step ``i = 0 .. steps−1``:

    1. ``g = grad_fn(s)`` (a detached fp32 copy of the iterate, in ``s*``'s shape), cast to
       fp32. A non-finite ``g`` raises ``ValueError``: stepping on it would silently
       corrupt the embedding (a NaN survives sign, normalisation and projection).
    2. ``d = sgn(g)`` (``step="sign"``, Eq. 5) or ``d = g/‖g‖₂`` (``step="l2"``).
    3. Heavy-ball momentum on the normalised direction: ``v = μ·v + d`` (``v₀ = 0``), so
       ``μ = 0`` (default, the paper) gives ``v = d``. With ``μ > 0`` a sign step can move a
       coordinate by more than α; the projection still bounds the result.
    4. ``s ← s + α·v``, then the Eq. 6 projection onto ``‖s − s*‖₂ ≤ ε``.
    5. ``callback(i, s, g)`` with copies of the updated iterate and the fp32 gradient that
       produced it (e.g. to log the objective curve).

    ``epsilon`` and ``alpha`` are floats or, for a batched ``(B, L, D)`` ``s*``, ``(B,)``
    tensors (per-row radius / step, see :func:`resolve_epsilon`); norms, normalisation and
    projection are per row then. ``epsilon == 0`` (every row) or ``steps == 0`` returns
    ``s*`` as fp32 without calling ``grad_fn``: the ball is a point, or no step is asked,
    so no generator call is spent.
    """
    _check_options(step, steps, momentum)
    star = s_star.detach().to(torch.float32)
    shape = star.shape
    star_rows = _rows(star)
    rows = star_rows.shape[0]
    eps = _per_row(epsilon, rows, "epsilon", star)
    lr = _per_row(alpha, rows, "alpha", star)
    if steps == 0 or not bool((eps > 0).any()):
        return star.clone()

    s = star_rows.clone()
    velocity = torch.zeros_like(s)
    for i in range(steps):
        failpoint("textopt.step")
        g = _checked_gradient(grad_fn(s.reshape(shape).clone()), shape, s.device, i)
        velocity = momentum * velocity + _direction(_rows(g), step)
        s = _project(s + lr * velocity, star_rows, eps)
        if callback is not None:
            callback(i, s.reshape(shape).clone(), g)
    return s.reshape(shape)


def _check_options(step: str, steps: int, momentum: float) -> None:
    """Refuse an unknown step rule, a negative step count or a momentum outside [0, 1)."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")


def _checked_gradient(g: Tensor, shape: torch.Size, device: torch.device, i: int) -> Tensor:
    """``grad_fn``'s result of step ``i`` as detached fp32 on ``device``; a wrong shape or a
    non-finite value raises ``ValueError`` (a NaN would survive sign, normalisation and projection)."""
    if tuple(g.shape) != tuple(shape):
        raise ValueError(f"grad_fn returned shape {tuple(g.shape)}, expected {tuple(shape)}")
    g = g.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(g).all()):
        raise ValueError(
            f"TextOpt step {i}: grad_fn returned a non-finite gradient (NaN/Inf); "
            "refusing to step on it (check the generator's precision / the objective)"
        )
    return g


# --------------------------------------------------------------------------- ε and σ_GAL


def epsilon_for_cycle(cycle: int, cycles: int, epsilon: float, schedule: Schedule) -> float:
    """The radius ε for AL cycle ``cycle`` (1-based) of ``cycles`` (Table 8).

    ``linear`` is Table 8's "linear(0, 0.5)" read literally: ``ε·(c−1)/(N−1)``, so cycle 1
    optimises nothing (ε = 0, plain template generation) and cycle N reaches the full ε;
    a single cycle (N = 1) uses ε. The authors' code uses ``ε·(c+1)/T`` with 0-based
    ``c``, which never reaches 0; we follow the paper's text. ``constant`` is ε every cycle
    (the Table 4 ablation).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if cycles < 1 or not (1 <= cycle <= cycles):
        raise ValueError(f"need 1 <= cycle <= cycles, got cycle={cycle}, cycles={cycles}")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
    if schedule == "constant" or cycles == 1:
        return float(epsilon)
    return float(epsilon) * (cycle - 1) / (cycles - 1)


def resolve_epsilon(epsilon: float, s_star: Tensor, relative: bool) -> float | Tensor:
    """The absolute radius for :func:`optimize`: ``ε`` itself, or ``ε·‖s*‖₂`` if ``relative``.

    A relative radius makes ε comparable across text encoders whose embeddings have very
    different norms. For a batched ``(B, L, D)`` ``s*`` the norm is per row and a ``(B,)``
    fp32 tensor is returned (each class keeps its own ball); otherwise a float.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
    if not relative:
        return float(epsilon)
    norms = _rows(s_star.detach().to(torch.float32)).norm(dim=1)
    return epsilon * norms if _is_batched(s_star) else float(epsilon * norms[0])


def random_direction_grad(generator: torch.Generator) -> GradFn:
    """σ_GAL = "RandomSampling" (Table 8, Fig. 4/5, Sec. 4.4): a random walk in the ε-ball.

    The returned ``grad_fn`` ignores ``s`` and draws a standard normal tensor of ``s``'s
    shape from ``generator``, so "randomly optimizing the text embedding" costs no
    generator calls and is reproducible from the generator's seed.
    """

    def grad_fn(s: Tensor) -> Tensor:
        g = torch.randn(s.shape, generator=generator, device=generator.device)
        return g.to(device=s.device, dtype=torch.float32)

    return grad_fn


def sigma_gal_gradient(t2i, classifier: torch.nn.Module, preprocess: torch.nn.Module, strategy: str, s: Tensor, *,
                       samples: int, generator: torch.Generator, num_inference_steps: int, guidance_scale: float,
                       estimator: str = "last_step", noise: Tensor | None = None,
                       batch_size: int | None = None) -> Tensor:
    """∇_s E_{x ~ p(x|s)} σ_GAL(x, f_θ) (Eq. 5, Proposition 1): the gradient TextOpt ascends.

    ``t2i`` is a :class:`galot_core.t2i.DiffusersT2I` (any object with its ``acquisition_grad``);
    ``classifier`` is f_θ, fed the generated images through ``preprocess``; ``strategy`` is a
    differentiable σ_GAL (``gal.strategy``, galot_core.acquisition). Each row of ``s`` gets
    ``samples`` (k) images, from ``noise`` if given, else drawn from ``generator``. Wrap it in
    a ``lambda s: ...`` to pass it to :func:`optimize` as ``grad_fn``.
    """
    from galot_core import acquisition

    def objective(images: Tensor) -> Tensor:
        return acquisition.objective(strategy, classifier(preprocess(images)))

    return t2i.acquisition_grad(s, objective, k=samples, generator=generator, noise=noise,
                                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                estimator=estimator, batch_size=batch_size)[0]
