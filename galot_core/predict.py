"""Classify new images with a trained classifier: what ``galot predict`` and the MLflow model run.

A classifier alone is not enough to classify a file: it was trained on images decoded to
the dataset's size and channels and normalised with the dataset's mean and std. A
:class:`ModelCard` holds exactly that (plus the class names), and :class:`Predictor` wraps
the classifier with its preprocessing into one module that maps uint8 images
(N, C, S, S) to class probabilities — the module galot exports to MLflow, so that
``mlflow.pytorch.load_model`` gives the same numbers as ``galot predict``.

Where the card comes from: a run folder's ``config.json`` names the dataset, whose
statistics are recomputed exactly as in training; an exported MLflow model carries the
card in its metadata.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from galot_core.checkpoint import load_classifier
from galot_core.data import Dataset
from galot_core.errors import GalotError
from galot_core.models import Classifier
from galot_core.transforms import Preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ModelCard:
    """What a classifier's input must look like, and what its outputs mean."""

    class_names: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, dataset: Dataset) -> "ModelCard":
        return cls(tuple(dataset.class_names), dataset.image_size, dataset.channels, tuple(dataset.mean),
                   tuple(dataset.std))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        return cls(tuple(d["class_names"]), int(d["image_size"]), int(d["channels"]), tuple(d["mean"]),
                   tuple(d["std"]))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def pil_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


class Predictor(nn.Module):
    """uint8 images (N, C, S, S) at the card's size → class probabilities (N, K), preprocessing included."""

    def __init__(self, model: Classifier, card: ModelCard) -> None:
        super().__init__()
        self.model = model.eval()
        self.preprocess = Preprocess(card.image_size, card.channels, card.mean, card.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images)).softmax(1)


def card_of_run(run: Path) -> ModelCard:
    """The card of a run folder: its dataset loaded as in training (data.root resolved from here,
    else from the project folder the run lives in)."""
    from galot_core.config import config_from_dict
    from galot_core.data import load_dataset
    from galot_core.runfolder import RunFolder

    folder = RunFolder(run)
    cfg = config_from_dict(folder.read_config(), source=str(folder.config_path))  # not JSON: one line
    data = cfg.data
    for key in ("root", "test_root"):
        value = getattr(data, key)
        if value and not Path(value).is_absolute() and not Path(value).exists():
            project = run.resolve().parent.parent
            if (project / value).exists():
                data = data.model_copy(update={key: str(project / value)})
    return ModelCard.of(load_dataset(data))


def load_predictor(source: str | os.PathLike) -> tuple[Predictor, ModelCard]:
    """A run folder (``runs/<name>``: its classifier.safetensors and config.json) as a predictor."""
    from galot_core.runfolder import RunFolder

    run = Path(source)
    if run.is_dir() and (run / "config.json").exists():
        folder = RunFolder(run)
        model_file = folder.classifier_path
        # The run-level files must agree with the cycles (a run stopped before its summary has
        # the previous cycle's classifier here: one line saying to finish it).
        folder.finished_rows()
        if not model_file.exists():
            raise GalotError(f"{run}: no classifier.safetensors yet; finish at least one cycle with `galot run`")
        card = card_of_run(run)
        model, _, _ = load_classifier(model_file)
        if model.num_classes != len(card.class_names):
            # A class list shorter than the outputs would index past it, a longer one name them wrongly.
            raise GalotError(f"{folder.config_path}: lists {len(card.class_names)} classes but {model_file.name} has "
                             f"{model.num_classes} outputs; the file was edited or belongs to another run — restore "
                             "it from a backup")
        return Predictor(model, card), card
    raise GalotError(f"RUN_OR_MODEL: '{source}' is not a galot run folder (no config.json) nor an MLflow model; "
                     "give runs/<experiment.name>, runs:/<mlflow run id>/model or a folder with an MLmodel file")


def image_files(patterns: list[str]) -> list[Path]:
    """Files named directly, every image under a folder (recursively), or matching a glob; sorted per argument."""
    out: list[Path] = []
    for p in patterns:
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
        if not found:
            raise GalotError(f"IMAGES: '{p}' matches no image file; give files, folders or a quoted glob such as "
                             "'photos/*.jpg'")
        out += found
    return out


def classify(predictor: nn.Module, card: ModelCard, files: list[Path], *, top_k: int = 3,
             batch_size: int = 256) -> tuple[list[dict], list[Path]]:
    """Decode ``files`` as in training and classify them; returns one row per readable file
    ({"image", "top": [(class, probability), ...]}) and the files that could not be read."""
    from galot_core.data.imagefolder import decode_images

    images, kept = decode_images(files, (card.image_size, card.image_size), card.pil_mode, "skip")
    probs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            probs.append(predictor(images[i:i + batch_size]).float())
    probs = torch.cat(probs) if probs else torch.zeros((0, len(card.class_names)))
    k = min(top_k, len(card.class_names))
    values, indices = probs.topk(k, dim=1)
    rows = [{"image": str(files[i]), "top": [(card.class_names[c], float(v)) for v, c in zip(vs, cs)]}
            for i, vs, cs in zip(kept, values.tolist(), indices.tolist())]
    read = set(kept)  # a set: `i not in set(kept)` rebuilt it per file, O(n²) (15 of 58 s on 30,000 images)
    skipped = [f for i, f in enumerate(files) if i not in read]
    return rows, skipped


def rows_csv(rows: list[dict]) -> str:
    """``image,label,probability[,label_2,probability_2,...]``: the best class first."""
    import csv
    import io

    k = max((len(r["top"]) for r in rows), default=1)
    header = ["image", "label", "probability"]
    for j in range(2, k + 1):
        header += [f"label_{j}", f"probability_{j}"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([r["image"]] + [x for name, p in r["top"] for x in (name, f"{p:.6f}")])
    return buf.getvalue()
