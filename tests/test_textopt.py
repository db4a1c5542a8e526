"""TextOpt (paper Eq. 2, 5, 6): projected gradient ascent on text embeddings, pure tensors."""

from __future__ import annotations

import pytest
import torch

from galot_core.textopt import (
    epsilon_for_cycle,
    optimize,
    random_direction_grad,
    resolve_epsilon,
)

L, D = 4, 8


def _random_grads(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda s: torch.randn(s.shape, generator=gen)


def _never(s):
    raise AssertionError("grad_fn must not be called")


@pytest.mark.parametrize("step", ["sign", "l2"])
@pytest.mark.parametrize("eps", [0.01, 0.3, 2.0])
def test_iterate_stays_in_ball_every_step(step, eps):
    s_star = torch.randn(L, D, generator=torch.Generator().manual_seed(0))
    dists = []
    out = optimize(
        s_star, _random_grads(1), eps, eps / 5, 12, step=step, momentum=0.5,
        callback=lambda i, s, g: dists.append((s - s_star).norm().item()),
    )
    assert len(dists) == 12
    assert max(dists) <= eps + 1e-6
    assert (out - s_star).norm() <= eps + 1e-6


def test_l2_step_converges_to_ball_boundary_along_linear_objective():
    # Maximising <w, s> over the ball: the optimum is s* + ε·w/‖w‖.
    gen = torch.Generator().manual_seed(2)
    s_star, w = torch.randn(L, D, generator=gen), torch.randn(L, D, generator=gen)
    eps = 0.5
    out = optimize(s_star, lambda s: w, eps, eps / 5, 10, step="l2")
    assert torch.allclose(out, s_star + eps * w / w.norm(), atol=1e-5)


def test_sign_step_moves_each_coordinate_by_alpha_and_zero_grad_stays():
    s_star = torch.randn(L, D, generator=torch.Generator().manual_seed(3))
    g = torch.randn(L, D, generator=torch.Generator().manual_seed(4))
    alpha = 0.01  # ε = 100 ≫ α·sqrt(L·D): projection inactive
    out = optimize(s_star, lambda s: g, 100.0, alpha, 1, step="sign")
    assert torch.allclose((out - s_star).abs(), torch.full((L, D), alpha), atol=1e-7)
    assert torch.equal(torch.sign(out - s_star), torch.sign(g))
    # sgn(0) = 0: a coordinate with no gradient evidence does not move.
    g0 = g.clone()
    g0[0, :3] = 0.0
    out0 = optimize(s_star, lambda s: g0, 100.0, alpha, 1, step="sign")
    assert torch.equal(out0[0, :3], s_star[0, :3])
    assert torch.allclose((out0 - s_star).abs()[1:], torch.full((L - 1, D), alpha), atol=1e-7)


def test_l2_zero_gradient_does_not_move():
    s_star = torch.randn(L, D)
    out = optimize(s_star, lambda s: torch.zeros_like(s), 1.0, 0.1, 3, step="l2")
    assert torch.equal(out, s_star)


@pytest.mark.parametrize("step", ["sign", "l2"])
def test_half_precision_inputs_iterate_in_fp32(step):
    gen = torch.Generator().manual_seed(5)
    s32 = torch.randn(L, D, generator=gen) + 1.0
    s16 = s32.half()
    grads = [torch.randn(L, D, generator=gen).half() for _ in range(3)]
    seen = []

    def fn(grads_list):
        it = iter(grads_list)

        def grad_fn(s):
            seen.append(s.dtype)
            return next(it)

        return grad_fn

    out16 = optimize(s16, fn(grads), 0.3, 0.06, 3, step=step)
    out32 = optimize(s16.float(), fn([g.float() for g in grads]), 0.3, 0.06, 3, step=step)
    assert out16.dtype == torch.float32 and set(seen) == {torch.float32}
    assert torch.equal(out16, out32)
    # α = 1e-4 on values ~1 is below fp16 resolution (~1e-3) but must still move the iterate.
    ones16 = (1.0 + 0.1 * torch.rand(L, D, generator=gen)).half()
    tiny = optimize(ones16, lambda s: torch.ones_like(s).half(), 1.0, 1e-4, 1, step="sign")
    assert (ones16 + 1e-4 == ones16).all()  # the step would be lost in fp16
    assert torch.allclose(tiny - ones16.float(), torch.full((L, D), 1e-4), atol=1e-7)


def test_zero_epsilon_or_steps_skip_grad_fn_and_return_fp32_s_star():
    s_star = torch.randn(L, D).half()
    for out in (
        optimize(s_star, _never, 0.0, 0.0, 10),
        optimize(s_star, _never, 0.5, 0.1, 0),
        optimize(torch.randn(3, L, D), _never, torch.zeros(3), 0.1, 5),
    ):
        assert out.dtype == torch.float32
    assert torch.equal(optimize(s_star, _never, 0.0, 0.0, 10), s_star.float())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_raises(bad):
    def grad_fn(s):
        g = torch.ones_like(s)
        g[0, 0] = bad
        return g

    with pytest.raises(ValueError, match="non-finite"):
        optimize(torch.randn(L, D), grad_fn, 0.5, 0.1, 3)


@pytest.mark.parametrize("step", ["sign", "l2"])
def test_batched_projection_is_per_row(step):
    gen = torch.Generator().manual_seed(6)
    B = 3
    s_star = torch.randn(B, L, D, generator=gen)
    eps = torch.tensor([0.05, 0.5, 2.0])
    # Strong constant gradient: every row saturates its own ball (radius ε_b, not a batch norm).
    w = torch.randn(B, L, D, generator=gen)
    out = optimize(s_star, lambda s: w, eps, eps / 2, 20, step=step)
    dist = (out - s_star).reshape(B, -1).norm(dim=1)
    assert torch.allclose(dist, eps, atol=1e-5)
    # l2 normalisation is per row too: each row converges to its own s*_b + ε_b·w_b/‖w_b‖.
    if step == "l2":
        wn = w / w.reshape(B, -1).norm(dim=1).view(B, 1, 1)
        assert torch.allclose(out, s_star + eps.view(B, 1, 1) * wn, atol=1e-5)


@pytest.mark.parametrize("step", ["sign", "l2"])
def test_single_row_batch_matches_unbatched(step):
    s_star = torch.randn(L, D, generator=torch.Generator().manual_seed(7))
    unb = optimize(s_star, _random_grads(8), 0.4, 0.1, 6, step=step)
    bat = optimize(s_star[None], _random_grads(8), torch.tensor([0.4]), 0.1, 6, step=step)
    assert bat.shape == (1, L, D)
    assert torch.allclose(bat[0], unb, atol=1e-7)


def test_resolve_epsilon_relative_per_row():
    s_star = torch.randn(3, L, D)
    assert resolve_epsilon(0.5, s_star, relative=False) == 0.5
    rel = resolve_epsilon(0.5, s_star, relative=True)
    assert rel.shape == (3,)
    assert torch.allclose(rel, 0.5 * s_star.reshape(3, -1).norm(dim=1))
    single = resolve_epsilon(0.5, s_star[0], relative=True)
    assert single == pytest.approx(0.5 * s_star[0].norm().item())


def test_epsilon_for_cycle_linear_and_constant():
    vals = [epsilon_for_cycle(c, 10, 0.5, "linear") for c in range(1, 11)]
    assert vals[0] == 0.0 and vals[-1] == pytest.approx(0.5)
    assert vals[1] == pytest.approx(0.0556, abs=1e-4)
    assert vals == pytest.approx([0.5 * i / 9 for i in range(10)])
    assert epsilon_for_cycle(1, 1, 0.5, "linear") == 0.5
    assert epsilon_for_cycle(3, 10, 0.5, "constant") == 0.5
    with pytest.raises(ValueError):
        epsilon_for_cycle(0, 10, 0.5, "linear")


def test_random_direction_grad_reproducible():
    s = torch.zeros(2, L, D)
    a = random_direction_grad(torch.Generator().manual_seed(9))
    b = random_direction_grad(torch.Generator().manual_seed(9))
    ga, gb = a(s), b(s)
    assert ga.shape == s.shape and torch.equal(ga, gb)
    assert not torch.equal(a(s), ga)  # a fresh draw each call
    out1 = optimize(s, random_direction_grad(torch.Generator().manual_seed(9)), 0.3, 0.06, 5)
    out2 = optimize(s, random_direction_grad(torch.Generator().manual_seed(9)), 0.3, 0.06, 5)
    assert torch.equal(out1, out2)
