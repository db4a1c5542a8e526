"""Step 2 (Algorithm 1, lines 6–8): s* = h_τ(y) per class, then TextOpt against the last classifier.

TextOpt is split into groups of classes (``runner.textopt_classes_per_task``) so that it can
fan out like generation. Eq. 2 is a separate problem per class, and every group draws the
noise of the whole batch and keeps its own rows, so the grouping changes nothing but where
the work runs. One group (the default) is one batched call per PGD step.
"""

from __future__ import annotations

import torch

from galot_core import textopt
from galot_core.context import Context
from galot_core.errors import GalotError
from galot_core.faults import simulated_oom
from galot_core.steps.adapt import centres, use_adapter


def textopt_groups(ctx: Context) -> list[list[int]]:
    """The classes of each TextOpt group."""
    n = len(ctx.dataset.class_names)
    per = ctx.cfg.runner.textopt_classes_per_task or n
    return [list(range(a, min(a + per, n))) for a in range(0, n, per)]


def alpha(ctx: Context, eps: torch.Tensor, s_star: torch.Tensor) -> torch.Tensor:
    """PGD step size per class: α = alpha_ratio·ε (the paper's Table 8), per coordinate or per ball.

    With ``gal.step_scale: paper`` a sign step moves every one of the D coordinates by α, an
    L2 step of α·√D ≫ ε, so each step leaves the ball and the projection throws it back
    onto the sphere (docs/results.md, "Step rule"). ``ball`` divides a sign step by √D so that its L2 length is
    alpha_ratio·ε, as the ``l2`` step's already is.
    """
    g = ctx.cfg.gal
    scale = 1.0 / s_star[0].numel() ** 0.5 if g.step_scale == "ball" and g.step_rule == "sign" else 1.0
    return g.alpha_ratio * eps * scale


def template_embeddings(ctx: Context) -> torch.Tensor:
    """s* = h_τ(y): the text embedding of every class's prompt (line 6)."""
    with ctx.t2i_lock:  # also the first load: tasks in threads must not load the model twice
        return ctx.t2i.encode(ctx.prompts()).float()


def centre_embeddings(ctx: Context, cycle: int) -> torch.Tensor:
    """The centres of the cycle's ε-balls: s* (line 6), or each class's fit with ``gal.adapt: embedding``."""
    fitted = centres(ctx, cycle)
    return fitted.float() if fitted is not None else template_embeddings(ctx)


class GroupGradient:
    """The ``grad_fn`` TextOpt ascends for one group of classes: :func:`textopt.sigma_gal_gradient`
    on the group's rows, with the noise of the whole batch, a batch that shrinks on out-of-memory,
    and the UNet calls it spent counted in :attr:`calls`."""

    def __init__(self, ctx: Context, cycle: int, rows: list[int], classifier: torch.nn.Module) -> None:
        self.ctx, self.cycle, self.rows, self.calls, self.step = ctx, cycle, rows, 0, 0
        self.classifier = classifier.to(ctx.t2i.device).eval().requires_grad_(False)
        self.preprocess = ctx.preprocess.to(ctx.t2i.device)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        g, t2i, classes = self.ctx.cfg.gal, self.ctx.t2i, len(self.ctx.dataset.class_names)
        # Fresh noise per PGD step estimates Eq. 5's expectation; common noise optimises a
        # fixed sample average, which has less variance between steps.
        step, self.step = (0 if g.common_noise else self.step), self.step + 1
        want = g.samples * len(s)
        while True:
            gen = torch.Generator(t2i.device).manual_seed(self.ctx.seed(self.cycle, 3, step))
            batch = self.ctx.batch_size("TextOpt")
            with self.ctx.t2i_lock:
                use_adapter(self.ctx, self.cycle)
                before = t2i.num_denoiser_calls
                noise = t2i.initial_noise(classes * g.samples, gen)  # every class's, as one draw
                noise = noise.view(classes, g.samples, *noise.shape[1:])[self.rows].flatten(0, 1)
                try:
                    simulated_oom(min(batch, want))
                    return textopt.sigma_gal_gradient(
                        t2i, self.classifier, self.preprocess, g.strategy, s, samples=g.samples, generator=gen,
                        noise=noise, num_inference_steps=self.ctx.cfg.t2i.steps,
                        guidance_scale=self.ctx.cfg.t2i.guidance_scale, estimator=g.estimator, batch_size=batch)
                except torch.cuda.OutOfMemoryError:
                    self.ctx.halve_batch("TextOpt", min(batch, want))
                finally:
                    self.calls += t2i.num_denoiser_calls - before


def optimize_group(ctx: Context, cycle: int, group: int) -> int:
    """Lines 6–8 for one group of classes: PGD on Eq. 2 from s* (or its adapted centre); returns the UNet
    calls spent."""
    run, g = ctx.folder, ctx.cfg.gal
    if run.group_path(cycle, group).exists() or run.embeddings_path(cycle).exists():
        return 0
    rows = textopt_groups(ctx)[group]
    s_star = centre_embeddings(ctx, cycle)
    eps = textopt.resolve_epsilon(ctx.epsilon(cycle), s_star, g.epsilon_relative)
    eps = torch.as_tensor(eps, dtype=torch.float32).expand(len(s_star)).clone()
    previous = ctx.load_model(cycle - 1)
    if previous is None or float(eps.max()) == 0.0 or g.steps == 0:
        s, eps, calls = s_star[rows].clone(), torch.zeros_like(eps), 0  # nothing to optimise against yet, or ε = 0
    else:
        if g.strategy == "RandomSampling":  # a random walk in the ball: no generator call
            walk = textopt.random_direction_grad(torch.Generator().manual_seed(ctx.seed(cycle, 4)))
            full = torch.empty(s_star.shape)
            grad_fn, count = (lambda _: walk(full)[rows]), None
        else:
            grad_fn = count = GroupGradient(ctx, cycle, rows, previous[0])
        s = textopt.optimize(s_star[rows], grad_fn, eps[rows], alpha(ctx, eps[rows], s_star), g.steps,
                             step=g.step_rule, momentum=g.momentum)
        calls = count.calls if count else 0
    run.write_group(cycle, group, {"s": s.float().cpu().contiguous(), "epsilon": eps[rows].cpu().contiguous()}, calls)
    return calls


def merge_embeddings(ctx: Context, cycle: int) -> dict[str, float]:
    """Stack the groups' optimised embeddings into embeddings.safetensors (s* or the adapted centres, s,
    ε per class)."""
    run = ctx.folder
    if not run.embeddings_path(cycle).exists():
        groups = range(len(textopt_groups(ctx)))
        parts = [run.read_group(cycle, k) for k in groups]
        missing = [run.group_path(cycle, k).name for k, p in zip(groups, parts) if p is None]
        if missing:
            raise GalotError(f"cycle {cycle}: TextOpt groups {', '.join(missing)} are not done; run the cycle again")
        tensors = {"s_star": centre_embeddings(ctx, cycle).cpu().contiguous(),
                   "s": torch.cat([p["s"] for p, _ in parts]).contiguous(),
                   "epsilon": torch.cat([p["epsilon"] for p, _ in parts]).contiguous()}
        run.write_embeddings(cycle, tensors, ctx.prompts(), sum(calls for _, calls in parts))
        for k in groups:
            run.group_path(cycle, k).unlink()
    return {"epsilon": effective_epsilon(ctx, cycle), "unet_calls": run.embeddings_calls(cycle)}


def effective_epsilon(ctx: Context, cycle: int) -> float:
    """The ε TextOpt actually used (0 when there was no classifier yet to optimise against)."""
    emb = ctx.folder.read_embeddings(cycle)
    return float(emb["epsilon"].max()) if emb is not None else 0.0
