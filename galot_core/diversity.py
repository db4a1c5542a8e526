"""Batch (diversity) selection over feature vectors: BADGE's k-means++ seeding on gradient
embeddings, greedy k-centre (CoreSet) and k-means representatives (KMeans).

These pick a *set* of points that covers the pool, unlike the per-image uncertainty scores of
:mod:`galot_core.acquisition`, which wraps them as strategies. Every random choice draws from
the caller's ``torch.Generator``; distances are computed in row blocks (never an N×N or N×C·D
matrix), so they scale to pools of tens of thousands of images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

# Lloyd iterations for the KMeans strategy: it stops earlier once assignments settle.
KMEANS_ITERATIONS = 20
# Distance blocks hold at most this many entries (64 MiB of float32).
_BLOCK_ENTRIES = 1 << 24


# ------------------------------------------------------------------ distance helpers


def _row_blocks(rows: int, cols: int) -> Iterator[slice]:
    """Row slices such that a (block, cols) distance matrix stays under _BLOCK_ENTRIES."""
    step = max(1, _BLOCK_ENTRIES // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(x), len(c)) through one matrix product."""
    d = x.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2.0 * (x @ c.T)
    return d.clamp_min_(0.0)


def _sq_dists_to(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (N,) from every row of ``x`` to one point ``c``, given the rows'
    squared norms: one mat-vec, which is what a greedy pick costs."""
    return (x_sq + c.pow(2).sum() - 2.0 * (x @ c)).clamp_min_(0.0)


def _nearest_centre(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``x``: squared distance to, and index of, its nearest centre."""
    values, indices = [], []
    for rows in _row_blocks(len(x), len(centres)):
        v, i = _sq_dists(x[rows], centres).min(1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def _nearest_point(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """For each centre: the index of its nearest row of ``x`` (lowest index on ties)."""
    best = torch.full((len(centres),), math.inf, dtype=x.dtype, device=x.device)
    where = torch.zeros(len(centres), dtype=torch.int64, device=x.device)
    for rows in _row_blocks(len(x), len(centres)):
        v, i = _sq_dists(x[rows], centres).min(0)
        better = v < best
        best = torch.where(better, v, best)
        where = torch.where(better, i + rows.start, where)
    return where


def _d2_sample(weights: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator) -> int:
    """k-means++ D² sampling: one unchosen index with probability ∝ ``weights``.

    When every unchosen point coincides with a chosen one (all weights 0), the pick is
    uniform among the unchosen, so ``n`` distinct points can always be drawn.
    """
    w = weights.masked_fill(chosen, 0.0).clamp_min(0.0).double().cpu()
    if not bool(w.sum() > 0):
        w = (~chosen).double().cpu()
    return int(torch.multinomial(w, 1, generator=generator))


# ------------------------------------------------------------- selection algorithms


def gradient_sq_norms(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """‖a_i ⊗ h_i‖² = ‖a_i‖²‖h_i‖²."""
    return a.pow(2).sum(1) * h.pow(2).sum(1)


def gradient_sq_distances(a: torch.Tensor, h: torch.Tensor, sq_norms: torch.Tensor, j: int) -> torch.Tensor:
    """‖g_i − g_j‖² for BADGE embeddings g_i = a_i ⊗ h_i, without forming any g.

    ‖a⊗h − b⊗h'‖² = ‖a‖²‖h‖² + ‖b‖²‖h'‖² − 2(a·b)(h·h'), so with ``sq_norms`` from
    :func:`gradient_sq_norms` a distance to one centre costs O(N·(C + D)) instead of
    O(N·C·D).
    """
    return (sq_norms + sq_norms[j] - 2.0 * (a @ a[j]) * (h @ h[j])).clamp_min(0.0)


def badge_seeding(a: torch.Tensor, h: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding over BADGE gradient embeddings a_i ⊗ h_i (Ash et al., ICLR 2020).

    As in the reference code, the first centre is the embedding with the largest norm
    (‖g‖ = ‖a‖·‖h‖: a large expected update of the last layer); each next one is
    D²-sampled, which trades magnitude (uncertainty) off against diversity. Returns
    ``n`` ≥ 1 distinct row positions.
    """
    a, h = a.double(), h.double()  # float64: the expansion cancels badly for near points
    norms = gradient_sq_norms(a, h)
    chosen = torch.zeros(len(a), dtype=torch.bool, device=a.device)
    picks = [int(norms.argmax())]
    chosen[picks[0]] = True
    min_d = gradient_sq_distances(a, h, norms, picks[0])
    while len(picks) < n:
        j = _d2_sample(min_d, chosen, generator)
        picks.append(j)
        chosen[j] = True
        min_d = torch.minimum(min_d, gradient_sq_distances(a, h, norms, j))
    return torch.tensor(picks, dtype=torch.int64)


def k_center_greedy(features: torch.Tensor, centres: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy k-centre (Sener & Savarese, ICLR 2018): repeatedly take the point farthest
    from everything labelled or already picked — a 2-approximation of the minimax cover.

    ``features`` (N, D) are the candidates, ``centres`` (M, D) the labelled points (M may
    be 0: then the first pick is the candidate nearest the mean). Returns ``n`` distinct
    row positions of ``features``.
    """
    x_sq = features.pow(2).sum(1)
    chosen = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    picks: list[int] = []
    if len(centres):
        min_d = _nearest_centre(features, centres)[0]
    else:  # nothing labelled yet: the most central point is the first centre
        picks.append(int(_sq_dists_to(features, x_sq, features.mean(0)).argmin()))
        chosen[picks[0]] = True
        min_d = _sq_dists_to(features, x_sq, features[picks[0]])
    while len(picks) < n:
        j = int(min_d.masked_fill(chosen, -math.inf).argmax())
        picks.append(j)
        chosen[j] = True
        min_d = torch.minimum(min_d, _sq_dists_to(features, x_sq, features[j]))
    return torch.tensor(picks[:n], dtype=torch.int64)


def kmeans_representatives(features: torch.Tensor, n: int, generator: torch.Generator,
                           iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """k-means with k = ``n`` (k-means++ init, Lloyd), then per cluster the nearest point.

    The KMeans baseline of deepAL (Huang): it labels one representative per region of
    feature space. Two centres never share a representative: a centre whose nearest point
    is already taken gets its nearest untaken one. Returns ``n`` ≥ 1 distinct row positions.
    """
    x = features.float()
    x_sq = x.pow(2).sum(1)
    chosen = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    first = int(torch.randint(len(x), (1,), generator=generator))
    init = [first]
    chosen[first] = True
    min_d = _sq_dists_to(x, x_sq, x[first])
    while len(init) < n:
        j = _d2_sample(min_d, chosen, generator)
        init.append(j)
        chosen[j] = True
        min_d = torch.minimum(min_d, _sq_dists_to(x, x_sq, x[j]))
    centres = x[init].clone()

    assign = None
    for _ in range(iterations):
        new_assign = _nearest_centre(x, centres)[1]
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=n)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0  # an empty cluster keeps its previous centre
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)

    nearest = _nearest_point(x, centres).tolist()
    taken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    picks = []
    for c, i in enumerate(nearest):
        if taken[i]:
            i = int(_sq_dists_to(x, x_sq, centres[c]).masked_fill(taken, math.inf).argmin())
        taken[i] = True
        picks.append(i)
    return torch.tensor(picks, dtype=torch.int64)
