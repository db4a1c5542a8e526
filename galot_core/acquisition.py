"""Acquisition: which real images to label next (σ_AL), and what TextOpt maximises (σ_GAL).

Three entry points:

* :func:`score` — the textbook uncertainty scores of the paper's Table 1 baselines on
  probabilities, higher = more informative.
* :func:`select` — pool-based selection of ``n`` distinct unlabelled pool indices with
  any of :data:`galot_core.config.AL_STRATEGIES`; model outputs come from
  :func:`galot_core.train.predict`, so selection sees images exactly as training does.
* :func:`objective` — the differentiable versions of the σ_GAL scores on logits, which
  TextOpt's projected gradient ascent maximises (paper Eq. 4–5).

Every random choice draws from the caller's ``torch.Generator``: the same generator state
gives the same picks. Distance-based strategies (BADGE, CoreSet, KMeans) run the set-selection
algorithms of :mod:`galot_core.diversity`, which never build an N×N (or N×C·D) matrix, so they
scale to pools of tens of thousands of images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from galot_core.config import GAL_STRATEGIES
from galot_core.diversity import badge_seeding, k_center_greedy, kmeans_representatives
from galot_core.models import Classifier
from galot_core.train import predict
from galot_core.transforms import Preprocess


# --------------------------------------------------------------------------- scores


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the last axis, natural log, with 0·log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def _margin(probs: torch.Tensor) -> torch.Tensor:
    """Scheffer et al. / Roth & Small: a small top-1 − top-2 gap means the model hesitates."""
    top2 = probs.topk(2, dim=-1).values
    return -(top2[..., 0] - top2[..., 1])


def _least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """Lewis & Gale / Settles: the less probable the predicted class, the more informative."""
    return -probs.max(-1).values


def _var_ratio(probs: torch.Tensor) -> torch.Tensor:
    """Freeman's variation ratio 1 − max p (the ranking of LeastConfidence, a [0, 1) scale)."""
    return 1.0 - probs.max(-1).values


def _bald(mc_probs: torch.Tensor) -> torch.Tensor:
    """Houlsby et al. / Gal et al.: mutual information between the label and the weights,
    H(E_t p_t) − E_t H(p_t), estimated over MC-dropout samples t."""
    return _entropy(mc_probs.mean(0)) - _entropy(mc_probs).mean(0)


def _mean_std(mc_probs: torch.Tensor) -> torch.Tensor:
    """Kampffmeyer et al.: mean over classes of the std of p over MC-dropout samples.

    The population std (unbiased=False) is used, as ``np.std`` in the deepAL / deepALplus
    implementations the paper's baselines come from.
    """
    return mc_probs.std(0, unbiased=False).mean(-1)


# name → (probs ndim, score function): (N, C) for point estimates, (T, N, C) for MC dropout.
_SCORES: dict[str, tuple[int, Callable[[torch.Tensor], torch.Tensor]]] = {
    "MarginSampling": (2, _margin),
    "EntropySampling": (2, _entropy),
    "LeastConfidence": (2, _least_confidence),
    "VarRatio": (2, _var_ratio),
    "BALD": (3, _bald),
    "MeanSTD": (3, _mean_std),
}


def score(name: str, probs: torch.Tensor) -> torch.Tensor:
    """Informativeness of each sample, (N,) float, higher = more informative.

    ``probs`` is (N, C) for MarginSampling, EntropySampling, LeastConfidence and VarRatio,
    and (T, N, C) Monte-Carlo dropout samples for BALD and MeanSTD.
    """
    allowed = ", ".join(f"{k} {'(T, N, C)' if d == 3 else '(N, C)'}" for k, (d, _) in _SCORES.items())
    if name not in _SCORES:
        raise ValueError(f"no score for strategy {name!r}; scores exist for: {allowed}")
    ndim, fn = _SCORES[name]
    if probs.ndim != ndim:
        raise ValueError(f"{name} needs probs of {ndim} dims, got shape {tuple(probs.shape)}; "
                         f"expected shapes: {allowed}")
    return fn(probs)


def _top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the ``n`` highest scores; ties go to the lower position (stable sort)."""
    return torch.sort(scores, descending=True, stable=True).indices[:n]


# -------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class _Pool:
    """Everything a strategy may look at; strategies return positions into ``unlabelled``."""

    model: Classifier
    images: torch.Tensor
    unlabelled: torch.Tensor
    labelled: torch.Tensor
    preprocess: Preprocess
    device: torch.device
    batch_size: int
    mc_samples: int
    generator: torch.Generator
    loss_head: nn.Module | None

    def outputs(self, indices: torch.Tensor, **kwargs: object) -> dict[str, torch.Tensor]:
        return predict(self.model, self.images[indices], self.preprocess, device=self.device,
                       batch_size=self.batch_size, **kwargs)


@contextlib.contextmanager
def _seeded_dropout(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Dropout draws from torch's global RNG: seed it from ``generator`` for reproducible
    masks, and restore the caller's RNG state afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _uniform(size: int, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(size, generator=generator)[:n]


def _random(n: int, pool: _Pool) -> torch.Tensor:
    """Uniform without replacement — the baseline every strategy must beat."""
    return _uniform(len(pool.unlabelled), n, pool.generator)


def _uncertainty(name: str) -> Callable[[int, _Pool], torch.Tensor]:
    def strategy(n: int, pool: _Pool) -> torch.Tensor:
        """Top-n of the point-estimate score on the classifier's softmax."""
        return _top_n(score(name, pool.outputs(pool.unlabelled)["probs"]), n)

    strategy.__name__ = f"_{name}"
    return strategy


def _mc_uncertainty(name: str) -> Callable[[int, _Pool], torch.Tensor]:
    def strategy(n: int, pool: _Pool) -> torch.Tensor:
        """Top-n of the score over Monte-Carlo dropout samples (Gal & Ghahramani)."""
        with _seeded_dropout(pool.generator, pool.device):
            mc_probs = pool.outputs(pool.unlabelled, mc_samples=pool.mc_samples)["mc_probs"]
        return _top_n(score(name, mc_probs), n)

    strategy.__name__ = f"_{name}"
    return strategy


def _badge(n: int, pool: _Pool) -> torch.Tensor:
    """Ash et al.: last-layer gradient embedding (p − onehot(ŷ)) ⊗ h, the predicted label ŷ
    standing in for the unknown true one, seeded with k-means++ — uncertain and diverse."""
    out = pool.outputs(pool.unlabelled)
    probs = out["probs"]
    a = probs - nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
    return badge_seeding(a.to(pool.device), out["features"].to(pool.device), n, pool.generator)


def _coreset(n: int, pool: _Pool) -> torch.Tensor:
    """Sener & Savarese: cover the feature space of the pool with the labelled set."""
    features = pool.outputs(pool.unlabelled)["features"].to(pool.device)
    if len(pool.labelled):
        centres = pool.outputs(pool.labelled)["features"].to(pool.device)
    else:
        centres = features[:0]
    return k_center_greedy(features, centres, n)


def _kmeans(n: int, pool: _Pool) -> torch.Tensor:
    """One representative per k-means cluster of the unlabelled features."""
    features = pool.outputs(pool.unlabelled)["features"].to(pool.device)
    return kmeans_representatives(features, n, pool.generator)


def _loss_prediction(n: int, pool: _Pool) -> torch.Tensor:
    """Yoo & Kweon: label the images whose loss the learned head predicts to be largest."""
    if pool.loss_head is None:
        raise ValueError("LossPrediction needs the loss-prediction head trained with the classifier "
                         "(pass loss_head=)")
    return _top_n(pool.outputs(pool.unlabelled, loss_head=pool.loss_head)["pred_loss"], n)


STRATEGIES: dict[str, Callable[[int, _Pool], torch.Tensor]] = {
    "RandomSampling": _random,
    "EntropySampling": _uncertainty("EntropySampling"),
    "MarginSampling": _uncertainty("MarginSampling"),
    "LeastConfidence": _uncertainty("LeastConfidence"),
    "BALD": _mc_uncertainty("BALD"),
    "BADGE": _badge,
    "MeanSTD": _mc_uncertainty("MeanSTD"),
    "VarRatio": _uncertainty("VarRatio"),
    "KMeans": _kmeans,
    "CoreSet": _coreset,
    "LossPrediction": _loss_prediction,
}


def _check_indices(name: str, idx: torch.Tensor, pool_size: int) -> None:
    if idx.ndim != 1 or idx.dtype != torch.int64:
        raise ValueError(f"{name} must be a 1-D int64 tensor, got {tuple(idx.shape)} {idx.dtype}")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= pool_size):
        raise ValueError(f"{name} has indices outside the pool of {pool_size} images")
    if len(torch.unique(idx)) != len(idx):
        raise ValueError(f"{name} has duplicate indices")


def select(
    name: str,
    n: int,
    *,
    model: Classifier | None,
    images: torch.Tensor,
    unlabelled: torch.Tensor,
    labelled: torch.Tensor,
    preprocess: Preprocess,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    mc_samples: int = 10,
    generator: torch.Generator,
    loss_head: nn.Module | None = None,
) -> torch.Tensor:
    """Pick ``n`` distinct members of ``unlabelled`` to label next with strategy ``name``.

    ``images`` is the whole pool, uint8 (N, C, H, W); ``unlabelled`` and ``labelled`` are
    int64 indices into it (CoreSet uses the labelled ones as existing centres). Returns
    pool indices (n,) int64. With ``model=None`` — no classifier yet, the first cycle —
    every strategy falls back to random selection, since there is nothing to be uncertain
    about. Ties between equal scores go to the lower pool index.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown acquisition strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    _check_indices("unlabelled", unlabelled, len(images))
    _check_indices("labelled", labelled, len(images))
    if bool(torch.isin(unlabelled, labelled).any()):
        raise ValueError("unlabelled and labelled indices overlap")
    if not 0 <= n <= len(unlabelled):
        raise ValueError(f"cannot select {n} images from {len(unlabelled)} unlabelled ones")
    unlabelled = unlabelled.sort().values  # canonical order: results ignore the caller's order
    if model is None:
        return unlabelled[_uniform(len(unlabelled), n, generator)]
    if n == 0:
        return unlabelled[:0].clone()
    pool = _Pool(model=model, images=images, unlabelled=unlabelled, labelled=labelled, preprocess=preprocess,
                 device=torch.device(device), batch_size=batch_size, mc_samples=mc_samples,
                 generator=generator, loss_head=loss_head)
    return unlabelled[STRATEGIES[name](n, pool).cpu()]


# ---------------------------------------------------------- differentiable objectives


def _margin_objective(logits: torch.Tensor) -> torch.Tensor:
    return _margin(logits.softmax(-1))


def _entropy_objective(logits: torch.Tensor) -> torch.Tensor:
    # From log_softmax: no log(0) = −inf, hence finite gradients for saturated logits.
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def _least_confidence_objective(logits: torch.Tensor) -> torch.Tensor:
    return _least_confidence(logits.softmax(-1))


_OBJECTIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "MarginSampling": _margin_objective,
    "EntropySampling": _entropy_objective,
    "LeastConfidence": _least_confidence_objective,
}


def objective(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Differentiable σ_GAL on classifier logits (N, C) → (N,), higher = more uncertain.

    Equals :func:`score` on ``softmax(logits)``; TextOpt ascends its gradient with respect
    to the text embedding (paper Eq. 4).
    """
    if name == "RandomSampling":
        raise ValueError("RandomSampling has no objective: TextOpt handles it as a random direction")
    if name not in _OBJECTIVES:
        raise ValueError(f"no differentiable objective for {name!r}; choose one of {', '.join(GAL_STRATEGIES)} "
                         "(RandomSampling is handled by TextOpt as a random direction)")
    return _OBJECTIVES[name](logits)
