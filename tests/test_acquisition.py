"""Acquisition scores against hand-computed values, and every strategy's selection contract."""

from __future__ import annotations

import pytest
import torch

from galot_core.acquisition import STRATEGIES, objective, score, select
from galot_core.config import AL_STRATEGIES, GAL_STRATEGIES
from galot_core.diversity import (
    badge_seeding,
    gradient_sq_distances,
    gradient_sq_norms,
    k_center_greedy,
    kmeans_representatives,
)
from galot_core.models import LossPredictionHead, build_model
from galot_core.transforms import Preprocess

# Rows: [0.7, 0.2, 0.1], a one-hot, a two-way tie, uniform over three classes.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]],
                     dtype=torch.float64)
LN2, LN3 = 0.6931471805599453, 1.0986122886681098
EXPECTED = {
    "MarginSampling": [-0.5, -1.0, 0.0, 0.0],
    # −(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) = 0.24967 + 0.32189 + 0.23026
    "EntropySampling": [0.8018185525433372, 0.0, LN2, LN3],
    "LeastConfidence": [-0.7, -1.0, -0.5, -1 / 3],
    "VarRatio": [0.3, 0.0, 0.5, 2 / 3],
}

# T = 2 dropout samples of N = 3 points, C = 2 classes.
MC_PROBS = torch.tensor([
    [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
    [[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]],
], dtype=torch.float64)
MC_EXPECTED = {
    # point 0: samples disagree completely, H(mean) = ln 2, mean H = 0;
    # point 1: samples agree on [.5, .5], H(mean) = mean H = ln 2;
    # point 2: H([.7, .3]) − (H([.9, .1]) + H([.5, .5]))/2 = 0.610864 − (0.325083 + 0.693147)/2
    "BALD": [LN2, 0.0, 0.10174922507919681],
    # population std over T: point 0 → 0.5 per class, point 2 → 0.2 per class
    "MeanSTD": [0.5, 0.0, 0.2],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_scores_hand_computed(name: str) -> None:
    torch.testing.assert_close(score(name, PROBS), torch.tensor(EXPECTED[name], dtype=torch.float64))


@pytest.mark.parametrize("name", list(MC_EXPECTED))
def test_mc_scores_hand_computed(name: str) -> None:
    torch.testing.assert_close(score(name, MC_PROBS), torch.tensor(MC_EXPECTED[name], dtype=torch.float64))


def test_score_rejects_unknown_names_and_shapes() -> None:
    with pytest.raises(ValueError, match="MarginSampling.*MeanSTD"):
        score("Margin", PROBS)
    with pytest.raises(ValueError, match="BALD"):
        score("BALD", PROBS)
    with pytest.raises(ValueError, match="EntropySampling"):
        score("EntropySampling", MC_PROBS)


@pytest.mark.parametrize("name", ["MarginSampling", "EntropySampling", "LeastConfidence"])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_objective_matches_score_with_finite_gradients(name: str, scale: float) -> None:
    logits = (torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale)
    logits.requires_grad_(True)
    value = objective(name, logits)
    torch.testing.assert_close(value, score(name, logits.detach().softmax(1)))
    value.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_objective_rejects_non_gal_names() -> None:
    with pytest.raises(ValueError, match="random direction"):
        objective("RandomSampling", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="MarginSampling"):
        objective("BALD", torch.zeros(2, 3))


def test_registries_follow_config() -> None:
    assert tuple(STRATEGIES) == AL_STRATEGIES
    for name in GAL_STRATEGIES[1:]:
        objective(name, torch.zeros(1, 3))


# ------------------------------------------------------------------ pool selection

N_POOL = 40


@pytest.fixture(scope="module")
def pool() -> dict:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (N_POOL, 1, 16, 16), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    order = torch.randperm(N_POOL, generator=torch.Generator().manual_seed(2))
    return {
        "model": build_model("small_cnn", 1, 3).eval(),
        "images": images,
        "unlabelled": order[:30],  # deliberately unsorted
        "labelled": order[30:],
        "preprocess": Preprocess(16, 1, (0.5,), (0.5,)),
        "loss_head": LossPredictionHead(128),
        "mc_samples": 3,
    }


def _select(name: str, n: int, pool: dict, seed: int = 0, **overrides) -> torch.Tensor:
    kwargs = {**pool, **overrides}
    return select(name, n, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("name", AL_STRATEGIES)
def test_every_strategy_picks_distinct_unlabelled_reproducibly(name: str, pool: dict) -> None:
    picks = _select(name, 5, pool)
    assert picks.dtype == torch.int64 and picks.shape == (5,)
    assert len(set(picks.tolist())) == 5
    assert set(picks.tolist()) <= set(pool["unlabelled"].tolist())
    assert torch.equal(picks, _select(name, 5, pool))


@pytest.mark.parametrize("name", AL_STRATEGIES)
def test_every_strategy_can_take_the_whole_unlabelled_set(name: str, pool: dict) -> None:
    picks = _select(name, 30, pool)
    assert sorted(picks.tolist()) == sorted(pool["unlabelled"].tolist())


def test_coreset_without_labelled_images(pool: dict) -> None:
    picks = _select("CoreSet", 4, pool, labelled=torch.zeros(0, dtype=torch.int64))
    assert len(set(picks.tolist())) == 4 and set(picks.tolist()) <= set(pool["unlabelled"].tolist())


def test_no_model_means_random_for_every_strategy(pool: dict) -> None:
    random = _select("RandomSampling", 5, pool, seed=3, model=None)
    for name in ("BADGE", "LossPrediction", "BALD"):
        assert torch.equal(_select(name, 5, pool, seed=3, model=None, loss_head=None), random)


def test_random_depends_on_the_generator(pool: dict) -> None:
    assert not torch.equal(_select("RandomSampling", 10, pool, seed=0), _select("RandomSampling", 10, pool, seed=1))


def test_uncertainty_is_top_n_of_the_score(pool: dict) -> None:
    from galot_core.train import predict

    unl = pool["unlabelled"].sort().values
    probs = predict(pool["model"], pool["images"][unl], pool["preprocess"])["probs"]
    expected = unl[torch.sort(score("MarginSampling", probs), descending=True, stable=True).indices[:6]]
    assert torch.equal(_select("MarginSampling", 6, pool), expected)


def test_ties_go_to_the_lowest_pool_index(pool: dict) -> None:
    model = build_model("small_cnn", 1, 3).eval()
    torch.nn.init.zeros_(model.fc.weight)
    torch.nn.init.zeros_(model.fc.bias)  # uniform probabilities: every score ties
    picks = _select("EntropySampling", 4, pool, model=model)
    assert picks.tolist() == sorted(pool["unlabelled"].tolist())[:4]


def test_selection_errors(pool: dict) -> None:
    with pytest.raises(ValueError, match="loss-prediction head"):
        _select("LossPrediction", 2, pool, loss_head=None)
    with pytest.raises(ValueError, match="cannot select 31"):
        _select("MarginSampling", 31, pool)
    with pytest.raises(ValueError, match="choose one of"):
        _select("Margin", 2, pool)
    with pytest.raises(ValueError, match="overlap"):
        _select("MarginSampling", 2, pool, labelled=pool["unlabelled"][:3])
    with pytest.raises(ValueError, match="duplicate"):
        _select("MarginSampling", 2, pool, unlabelled=pool["unlabelled"][[0, 0, 1]])


def test_selecting_nothing(pool: dict) -> None:
    assert _select("BADGE", 0, pool).shape == (0,)


# -------------------------------------------------------------- the algorithms


def test_k_center_takes_the_farthest_point_then_the_next() -> None:
    labelled = torch.tensor([[0.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    # distances to the labelled origin 1, 2, 10, 5 → (10, 0); then (0, 5) is still 5 away; then (2, 0)
    assert k_center_greedy(candidates, labelled, 3).tolist() == [2, 3, 1]


def test_k_center_without_labelled_starts_at_the_most_central_point() -> None:
    candidates = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 8.0], [0.0, -8.0]])
    assert k_center_greedy(candidates, candidates[:0], 3).tolist() == [0, 3, 4]


def _blobs() -> tuple[torch.Tensor, list[int]]:
    """Three far-apart plus-shaped clusters of 5 points; each centroid is a data point."""
    offsets = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    points = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    points = points[perm]
    centre_rows = [int((perm == 5 * c).nonzero()) for c in range(3)]
    return points, centre_rows


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_picks_each_cluster_centre(seed: int) -> None:
    points, centre_rows = _blobs()
    picks = kmeans_representatives(points, 3, torch.Generator().manual_seed(seed))
    assert sorted(picks.tolist()) == sorted(centre_rows)


def test_kmeans_representatives_are_distinct_with_duplicates() -> None:
    points = torch.zeros(6, 3)  # every centre has the same nearest point
    picks = kmeans_representatives(points, 4, torch.Generator().manual_seed(0))
    assert len(set(picks.tolist())) == 4


def test_badge_distances_equal_the_explicit_embedding() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 4, generator=g, dtype=torch.float64)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64)
    emb = (a[:, :, None] * h[:, None, :]).flatten(1)  # (N, C·D), only for the test
    norms = gradient_sq_norms(a, h)
    torch.testing.assert_close(norms, emb.pow(2).sum(1))
    for j in range(7):
        torch.testing.assert_close(gradient_sq_distances(a, h, norms, j), (emb - emb[j]).pow(2).sum(1))


def test_badge_starts_at_the_largest_gradient_and_is_reproducible() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(20, 3, generator=g).softmax(1)
    a = probs - torch.nn.functional.one_hot(probs.argmax(1), 3)
    h = torch.randn(20, 6, generator=g).relu()
    picks = badge_seeding(a, h, 8, torch.Generator().manual_seed(0))
    emb = (a[:, :, None] * h[:, None, :]).flatten(1)
    assert int(picks[0]) == int(emb.norm(dim=1).argmax())
    assert len(set(picks.tolist())) == 8
    assert torch.equal(picks, badge_seeding(a, h, 8, torch.Generator().manual_seed(0)))


def test_badge_draws_distinct_points_when_all_coincide() -> None:
    a = torch.ones(5, 2)
    h = torch.ones(5, 3)
    assert sorted(badge_seeding(a, h, 5, torch.Generator().manual_seed(0)).tolist()) == [0, 1, 2, 3, 4]


def test_mc_dropout_leaves_the_global_rng_alone(pool: dict) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _select("BALD", 3, pool)
    assert torch.equal(torch.rand(3), expected)


def test_mc_selection_depends_on_the_dropout_seed(pool: dict) -> None:
    mc = {**pool, "mc_samples": 2}
    picks = {tuple(_select("MeanSTD", 10, mc, seed=s).tolist()) for s in range(3)}
    assert len(picks) > 1
