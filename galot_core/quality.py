"""How good is a text-to-image model for a dataset: label fidelity, realism and diversity.

Three numbers for the images a T2I model generates from the class prompts at ε = 0:

- **judged accuracy**, overall and per class: the fraction the judge (the fully-supervised
  classifier, galot_core/judge.py) puts in their prompted class;
- **Fréchet distance** (FD) between the generated images and real reference images, in the
  judge's penultimate features (FID's formula on another network: no Inception weights exist
  offline, so the number is comparable only between models measured with the same judge);
- **diversity** per class: the mean pairwise L2 distance between the features of one class's
  images (0 when a class collapses to one image).

Each figure comes with its *real floor*: the same statistic for a real sample of the same size,
disjoint from the reference (the pool), so "FD 5 against a floor of 2.5" says how far from real
the model is, and "diversity 0.6 of real" how much narrower.

Which model was measured is part of the result: :func:`model_sha` names a galot-mini folder
by its denoiser weights, and :func:`stale_model` says in one line when a results file was made
by a model other than the one on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from galot_core.data.base import Dataset, ImageSet
from galot_core.judge import preprocess_for
from galot_core.models import Classifier
from galot_core.train import predict

SHA_DIGITS = 12


def model_sha(model: str | Path) -> str | None:
    """A diffusers folder's identity: the first 12 hex digits of its denoiser weights' sha256.

    None when the folder has no single-file denoiser (a hub id, sharded weights). A re-pretrained
    galot-mini is not bit-identical to the last one, so results name the model that made them."""
    for sub in ("unet", "transformer"):
        weights = Path(model) / sub / "diffusion_pytorch_model.safetensors"
        if weights.is_file():
            h = hashlib.sha256()
            with weights.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()[:SHA_DIGITS]
    return None


def stale_model(recorded: str | None, model: str | Path, what: str) -> str | None:
    """One line when ``what`` was measured on a model other than the one at ``model``; else None."""
    current = model_sha(model)
    if recorded is None:
        return f"{what}: names no model sha256; rerun it to measure the model at {model}"
    if current is None:
        return f"{what}: measured on model {recorded}, but {model} has no weights; run galot pretrain-t2i"
    if current != recorded:
        return (f"{what}: measured on model {recorded}, but {model} is model {current}; "
                "its numbers describe another model, rerun it")
    return None


def features(judge: Classifier, images: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """The judge's penultimate features (N, D), float64 for the covariance algebra."""
    return predict(judge, images, preprocess_for(dataset))["features"].double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½) between two feature sets (N, D).

    The trace of the matrix square root is taken from the eigenvalues of the symmetric
    Σa^½ Σb Σa^½, which is exact and needs no scipy (the same value as FID's sqrtm(Σa Σb))."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def diversity(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per class, the mean pairwise L2 distance between its images' features (0 for < 2 images)."""
    out = []
    for c in range(num_classes):
        f = feats[labels == c]
        n = len(f)
        out.append(float(torch.cdist(f, f).sum() / (n * (n - 1))) if n > 1 else 0.0)
    return out


def real_sample(images: ImageSet, per_class: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` real images of each class drawn at random (fewer where a class has fewer)."""
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(num_classes):
        members = torch.nonzero(images.labels == c).flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    idx = torch.cat(idx)
    return images.images[idx], images.labels[idx]


def realism(judge: Classifier, dataset: Dataset, generated: torch.Tensor, prompted: torch.Tensor,
            reference: ImageSet, seed: int = 0) -> dict:
    """Judged accuracy, FD and diversity of ``generated`` against ``reference``, each with its real floor.

    The floor sample is drawn from the pool (disjoint from the reference split), as many
    images per class as were generated."""
    c = dataset.num_classes
    per_class = int(torch.bincount(prompted, minlength=c).max())
    real, real_labels = real_sample(dataset.pool, per_class, c, seed)
    f_ref, f_gen, f_real = (features(judge, x, dataset) for x in (reference.images, generated, real))
    gen_logits = predict(judge, generated, preprocess_for(dataset))["logits"]
    right = gen_logits.argmax(1) == prompted
    return {
        "images": len(generated),
        "judged_accuracy": float(right.float().mean()),
        "judged_per_class": [float(right[prompted == k].float().mean()) for k in range(c)],
        "fd": frechet_distance(f_gen, f_ref),
        "fd_real_floor": frechet_distance(f_real, f_ref),
        "diversity_per_class": diversity(f_gen, prompted, c),
        "diversity_real_per_class": diversity(f_real, real_labels, c),
        "reference_images": len(reference.images),
    }
