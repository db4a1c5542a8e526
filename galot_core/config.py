"""The schema of ``params.yaml``: typed, validated parameters for one experiment.

Every key used anywhere in galot is declared here, once, with its default, type and
allowed range; ``params.yaml`` (which DVC reads for its stage dependencies and ``dvc exp
run -S section.key=value`` edits) sets values for them. Two layers, stated once here:

- the schema's defaults are the paper's Table 8 where it applies (σ = MarginSampling, ε
  growing linearly from 0 to 0.5, α = ε/5, k = 6 samples, n = 10 PGD steps, B_GAL = |L|),
  with budgets, epochs and image counts scaled to MNIST digits on a laptop CPU;
- the repository's ``params.yaml`` is the embedded preset: those defaults with exactly the
  keys of :data:`EMBEDDED_PRESET` changed for the embedded model galot-mini
  (tests/test_config.py checks that the file and this table agree).

A mistake is reported as one line naming the key and what is allowed, e.g.
``params.yaml: al.strategy must be one of [...], got 'Margin'``.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from galot_core.errors import GalotError
from galot_core.images import DEFAULT_MAX_PIXELS

# Names as in the paper's Table 1; they are also the values accepted in params.yaml.
AL_STRATEGIES = (
    "RandomSampling",
    "EntropySampling",
    "MarginSampling",
    "LeastConfidence",
    "BALD",
    "BADGE",
    "MeanSTD",
    "VarRatio",
    "KMeans",
    "CoreSet",
    "LossPrediction",
)
# Differentiable acquisitions that TextOpt can maximise (σ_GAL, paper Fig. 5).
GAL_STRATEGIES = ("RandomSampling", "EntropySampling", "MarginSampling", "LeastConfidence")
ARCHITECTURES = ("small_cnn", "resnet18", "vgg16", "densenet121", "mobilenet_v2")
DATASETS = ("mnist5k", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "imagefolder", "folder")
MODES = ("al", "gal", "al+gal")
# Who answers the label queries: the dataset's ground truth (benchmarks) or a person (galot label …).
ORACLES = ("simulated", "human")


def _field(default: Any, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, min_exclusive: bool = False, help: str = "", why: str = "") -> Any:
    """A schema entry; ``why`` says why ``max`` is where it is (appended to the help text)."""
    if max is not None and why:
        help = f"{help} (at most {max:g}: {why})" if help else f"at most {max:g}: {why}"
    meta = {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "help": help, "why": why}
    return field(default=default, metadata=meta)


# Values echoed in error messages are shortened: a params file must never make galot print
# (or hold in memory) more than a line, whatever it contains.
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 4, 4
# Bounds shared by several keys, with the reason stated once.
_SEED_MAX = 2**32 - 1          # numpy's and torch's generators take 32-bit seeds
_BATCH_MAX = 65536             # more images per batch than any accelerator holds
_STEPS_MAX = 10**7             # optimiser steps: ~days on an accelerator
_WORKERS_MAX = 1024
_LR_MAX = 100.0                # a learning rate above this diverges for every model here


def show(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, for error messages that echo input."""
    return _REPR.repr(value)


def _name(key: Any) -> str:
    """A key as written in params.yaml, shortened like :func:`show` (without quotes)."""
    text = show(str(key))
    return text[1:-1] if text[:1] in "'\"" else text


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _field("default", help="run folder name under runs_dir")
    runs_dir: str = _field("runs", help="where run folders live")
    seed: int = _field(0, min=0, max=_SEED_MAX, why="generators take 32-bit seeds")
    mode: str = _field("al+gal", choices=MODES, help="al: real labels only; gal: generated only; al+gal: GALOT")
    cycles: int = _field(10, min=1, max=10_000, help="N, active-learning cycles",
                         why="one folder and one classifier per cycle")
    oracle: str = _field("simulated", choices=ORACLES,
                         help="simulated: labels read from the dataset (benchmarks); human: a person labels each "
                              "selected batch (`galot label serve|import`), the run stops until they are given")
    judge: str | None = _field(None, help="fully-supervised classifier (safetensors) that judges pseudo-labels; "
                                          "written by `galot prepare`, skipped when the file is absent")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _field("mnist5k", choices=DATASETS)
    root: str = _field("data", help="dataset folder (fashion_mnist: its IDX files, else Debian's copy; cifar/tinyimagenet/imagefolder/folder)")
    classes: tuple[str, ...] | None = _field(None, help="folder: the class names (words put into prompts)")
    test_root: str | None = _field(None, help="folder: optional labelled test set, one sub-folder per class "
                                              "named like data.classes; without it test accuracy is not computed")
    download: bool = _field(False, help="allow torchvision to download CIFAR (needs network)")
    image_size: int | None = _field(None, min=8, max=4096, help="resize imagefolder images to this size",
                                    why="every image is held in memory at this size")
    class_names_file: str | None = _field(None, help="imagefolder: folder name -> class name mapping")
    test_fraction: float = _field(0.2, min=0.0, max=0.9, min_exclusive=True)
    on_bad_image: str = _field("skip", choices=("skip", "fail"),
                               help="an image that cannot be decoded (or is larger than data.max_pixels): skip it with a warning, or fail")
    max_pixels: int = _field(DEFAULT_MAX_PIXELS, min=64, max=2**28,
                             help="largest image (width × height) decoded; a larger one is a bad image "
                                  "(data.on_bad_image)",
                             why="a 1 MB PNG can declare 2^28 pixels, about 1 GB decoded")


@dataclass(frozen=True)
class ALConfig:
    strategy: str = _field("MarginSampling", choices=AL_STRATEGIES, help="σ_AL")
    budget_per_cycle: int = _field(20, min=1, max=1_000_000, help="B_AL, real images labelled per cycle",
                                  why="more labels per cycle than any pool holds")
    mc_samples: int = _field(10, min=2, max=1000, help="MC-dropout passes for BALD / MeanSTD",
                            why="each pass scores the whole pool")


@dataclass(frozen=True)
class GALConfig:
    strategy: str = _field("MarginSampling", choices=GAL_STRATEGIES, help="σ_GAL, maximised by TextOpt")
    template: str = _field("a realistic photo of a {label}", help="prompt template τ with {label}")
    epsilon: float = _field(0.5, min=0.0, max=1e6, help="ε (final value of the schedule)",
                            why="far beyond any text embedding's norm")
    epsilon_schedule: str = _field("linear", choices=("linear", "constant"),
                                   help="linear: ε·(c-1)/(N-1) in cycle c, as linear(0, ε) in Table 8")
    epsilon_relative: bool = _field(False, help="ε as a fraction of ||s*||₂ instead of absolute")
    alpha_ratio: float = _field(0.2, min=0.0, min_exclusive=True, max=100.0, help="α = alpha_ratio·ε (Table 8: ε/5)",
                                why="a step of 100ε leaves the ε-ball at once")
    steps: int = _field(10, min=0, max=10_000, help="n, PGD steps", why="each step runs k denoising passes")
    samples: int = _field(6, min=1, max=4096, help="k, images per gradient estimate",
                         why="k images are denoised at every PGD step")
    step_rule: str = _field("sign", choices=("sign", "l2"), help="sign: Eq. 5; l2: the authors' code")
    estimator: str = _field("last_step", choices=("last_step", "full", "tweedie", "last_m"),
                            help="gradient through the last step (Prop. 1), all steps, or one x0 prediction")
    momentum: float = _field(0.0, min=0.0, max=0.99, help="heavy-ball momentum across PGD steps (0 = paper)")
    common_noise: bool = _field(False, help="same k noise samples at every PGD step (common random numbers)")
    budget_factor: float = _field(1.0, min=0.0, max=1000.0, help="B_GAL = budget_factor·|L| (gal mode: ·B_AL·c)",
                                  why="every generated image is kept on disk")
    accumulate: bool = _field(False, help="keep earlier cycles' synthetic images in training")
    # Beyond the paper (issue 15; docs/results.md "Generated images that teach"). Defaults = the paper.
    step_scale: str = _field("paper", choices=("paper", "ball"),
                             help="paper: α = alpha_ratio·ε per coordinate (a sign step then has L2 norm α·√D and "
                                  "leaves the ball); ball: α = alpha_ratio·ε in L2 norm (sign steps of α/√D)")
    diversity: float = _field(0.0, min=0.0, max=2.0,
                              help="per-image embedding offset, a random direction of this length relative to "
                                   "‖s*‖ (0 = every image of a class from the same embedding, as the paper)")
    anchor_strength: float = _field(0.0, min=0.0, max=1.0,
                                    help="0: text-to-image from noise (paper); >0: image-to-image from the labelled "
                                         "real images of the class (SDEdit strength; 1 = pure noise)")
    candidates: int = _field(1, min=1, max=32, help="m: generate m·B_GAL candidates and keep the B_GAL the classifier "
                                                    "is least sure of by σ_GAL (1 = keep all, as the paper)",
                             why="each candidate costs a full generation")
    select_by: str = _field("sigma", choices=("sigma", "intended_loss"),
                            help="which candidates to keep: sigma: the highest σ_GAL (uncertain between any classes); "
                                 "intended_loss: the highest cross-entropy of their prompted class (hard positives, "
                                 "as online hard example mining, Shrivastava et al., CVPR 2016)")
    label_check: str = _field("none", choices=("none", "diffusion"),
                              help="diffusion: drop generated images that the T2I model itself, as a zero-shot "
                                   "classifier (Diffusion Classifier), does not put in their prompted class")


@dataclass(frozen=True)
class T2IConfig:
    model: str = _field("models/galot-mini", help="diffusers folder or hub id")
    steps: int = _field(10, min=1, max=10_000, help="denoising steps T", why="schedulers train on 1,000 timesteps")
    guidance_scale: float = _field(3.0, min=0.0, max=1000.0, why="far beyond any useful guidance (1–20)")
    timestep_spacing: str | None = _field("trailing", choices=(None, "leading", "trailing", "linspace"))
    scheduler: str | None = _field(None, choices=(None, "ddim", "dpm++", "euler", "unipc"),
                                   help="null: the model folder's scheduler; else this one on its noise schedule")
    dtype: str = _field("auto", choices=("auto", "fp32", "fp16", "bf16"))
    device: str = _field("auto")
    batch_size: int = _field(100, min=1, max=_BATCH_MAX, help="images per generation batch (halved on out-of-memory)",
                            why="more than any accelerator holds")
    allow_download: bool = _field(False, help="fetch t2i.model from the Hugging Face hub if it is not local")
    revision: str = _field("", help="hub revision to pin (branch, tag or commit); empty = the default branch")
    variant: str = _field("", help="weight variant on the hub/in the folder, e.g. fp16; empty = the default weights")
    text_encoder_dtype: str = _field("fp32", choices=("fp32", "fp16", "bf16"),
                                     help="bf16 halves the text encoders' memory (T5-XXL: 9.5 GB in fp32)")
    resolution: int | None = _field(None, min=8, max=4096,
                                    help="image height = width in pixels; null = the model's default",
                                    why="no text-to-image model generates larger images")
    gradient_checkpointing: bool = _field(False, help="recompute denoiser activations in TextOpt's backward pass "
                                                      "(less memory, more time)")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _field("small_cnn", choices=ARCHITECTURES)
    dropout: float = _field(0.2, min=0.0, max=0.9, help="before the last layer; MC dropout for BALD/MeanSTD")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _field(40, min=1, max=100_000, why="epochs over the labelled set, retrained every cycle")
    min_steps: int = _field(300, min=0, max=_STEPS_MAX,
                            help="at least this many SGD steps, so tiny labelled sets still train",
                            why="days of training")
    batch_size: int = _field(32, min=1, max=_BATCH_MAX, why="more than any accelerator holds")
    lr: float = _field(0.01, min=0.0, min_exclusive=True, max=_LR_MAX, why="larger rates diverge")
    momentum: float = _field(0.9, min=0.0, max=1.0)
    weight_decay: float = _field(5e-4, min=0.0, max=1.0, why="a decay of 1 zeroes the weights every step")
    augment: str = _field("auto", choices=("auto", "none", "crop", "crop+flip"),
                          help="auto: crop+flip for natural images, crop for digits and for your own "
                               "imagefolder/folder images (a flip may change their class; set crop+flip "
                               "if mirrored images keep their class)")
    device: str = _field("auto")
    eval_batch_size: int = _field(512, min=1, max=_BATCH_MAX, why="more than any accelerator holds")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of the embedded galot-mini model (``galot pretrain-t2i``, DVC stage ``pretrain_t2i``)."""

    out: str = _field("models/galot-mini", help="where the diffusers folder is written")
    vae_steps: int = _field(450, min=1, max=_STEPS_MAX, why="days of training")
    vae_batch: int = _field(64, min=1, max=_BATCH_MAX, why="more than any accelerator holds")
    vae_lr: float = _field(2e-3, min=0.0, min_exclusive=True, max=_LR_MAX, why="larger rates diverge")
    kl_weight: float = _field(1e-6, min=0.0, max=1e6, why="the KL term would drown the reconstruction")
    unet_steps: int = _field(1500, min=1, max=_STEPS_MAX, why="days of training")
    unet_batch: int = _field(128, min=1, max=_BATCH_MAX, why="more than any accelerator holds")
    unet_lr: float = _field(1e-3, min=0.0, min_exclusive=True, max=_LR_MAX, why="larger rates diverge")
    warmup: int = _field(100, min=1, max=_STEPS_MAX, why="days of training")
    ema: float = _field(0.998, min=0.0, max=1.0)
    uncond_prob: float = _field(0.1, min=0.0, max=1.0, help="caption dropout for classifier-free guidance")
    seed: int = _field(0, min=0, max=_SEED_MAX, why="generators take 32-bit seeds")


@dataclass(frozen=True)
class TransferConfig:
    """Other architectures trained on a finished experiment's data (paper Table 2), no generation."""

    archs: tuple[str, ...] = _field(("vgg16", "densenet121", "mobilenet_v2"), choices=ARCHITECTURES)
    epochs: int = _field(40, min=1, max=100_000, why="epochs over the cached dataset")
    min_steps: int = _field(300, min=0, max=_STEPS_MAX, why="days of training")
    lr: float = _field(0.01, min=0.0, min_exclusive=True, max=_LR_MAX, why="larger rates diverge")
    seed: int = _field(0, min=0, max=_SEED_MAX, why="generators take 32-bit seeds")


@dataclass(frozen=True)
class BaselinesConfig:
    """AL-only runs with the same budgets, for comparison (DVC stage ``baselines``, ``galot report``)."""

    strategies: tuple[str, ...] = _field(("RandomSampling", "EntropySampling", "MarginSampling"),
                                         choices=AL_STRATEGIES)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow; the tracking URI comes from ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``)."""

    mlflow: bool = _field(True, help="log params, per-cycle metrics, models and grids to MLflow")
    experiment: str = _field("galot", help="MLflow experiment name")


@dataclass(frozen=True)
class RunnerConfig:
    """Where the diffusion-model work runs; never changes what is computed (same images, same manifest)."""

    task_runner: str = _field("thread", choices=("thread", "dask"),
                              help="thread: this process; dask: prefect-dask's DaskTaskRunner")
    dask_address: str | None = _field(None, help="an existing Dask scheduler (tcp://host:8786); "
                                                 "unset: a local cluster of dask_workers processes")
    dask_workers: int = _field(0, min=0, max=_WORKERS_MAX,
                              help="local cluster size; 0 = one per visible GPU (1 without GPU)",
                              why="one process each")
    shard_size: int = _field(100, min=1, max=1_000_000, help="generated images per task (a multiple of "
                                                          "t2i.batch_size keeps every batch full)",
                            why="one task's images are held in memory")
    textopt_classes_per_task: int = _field(0, min=0, max=1_000_000,
                                          help="classes per TextOpt task; 0 = all classes in one batched task "
                                               "(cheapest on one device)", why="more than any dataset has")


@dataclass(frozen=True)
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    al: ALConfig = field(default_factory=ALConfig)
    gal: GALConfig = field(default_factory=GALConfig)
    t2i: T2IConfig = field(default_factory=T2IConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        d = dataclasses.asdict(self)
        for section in d.values():  # tuples → lists, so the dict is plain JSON / YAML
            for k, v in section.items():
                if isinstance(v, tuple):
                    section[k] = list(v)
        return d

    @property
    def run_dir(self) -> Path:
        return Path(self.experiment.runs_dir) / self.experiment.name


# params.yaml = Config() with these values (why: the comments next to them in params.yaml).
EMBEDDED_PRESET: dict[tuple[str, str], Any] = {
    ("experiment", "judge"): "models/judge-mnist5k.safetensors",  # written by `galot prepare`
    ("gal", "epsilon"): 0.2,               # relative: galot-mini's MiniLM embedding has ‖s*‖ ≈ 36
    ("gal", "epsilon_relative"): True,
    ("t2i", "steps"): 4,                   # galot-mini keeps its quality at 4 DDIM steps
    ("transfer", "epochs"): 15,            # DenseNet121 within minutes on 2 CPU cores
    ("transfer", "min_steps"): 150,
}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    args = typing.get_args(tp)
    if args and type(None) in args and typing.get_origin(tp) is not tuple:  # Optional[...]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:  # tuple[str, ...]: a YAML list (or one bare value)
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise GalotError(f"{source}: {key} must list at least one value")
        return tuple(_coerce(v, args[0], key, source) for v in items)
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer too large for a float
                number = math.inf
            if not math.isfinite(number):
                raise GalotError(f"{source}: {key} must be a finite number, got {show(value)}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise GalotError(f"{source}: {key} must be {_type_name(tp)}, got {show(value)}")


def _check_range(value: Any, f: dataclasses.Field, key: str, source: str) -> None:
    m = f.metadata
    if isinstance(value, tuple):
        for v in value:
            _check_range(v, f, key, source)
        return
    if m.get("choices") is not None and value not in m["choices"]:
        allowed = ", ".join("null" if c is None else str(c) for c in m["choices"])
        raise GalotError(f"{source}: {key} must be one of [{allowed}], got {show(value)}")
    if value is None or isinstance(value, (str, bool)):
        return
    lo, hi = m.get("min"), m.get("max")
    if lo is not None and (value < lo or (m.get("min_exclusive") and value == lo)):
        op = ">" if m.get("min_exclusive") else ">="
        raise GalotError(f"{source}: {key} must be {op} {lo}, got {show(value)}")
    if hi is not None and value > hi:
        why = f" ({m['why']})" if m.get("why") else ""
        raise GalotError(f"{source}: {key} must be <= {hi:g}{why}, got {show(value)}")


def _build_section(cls: type, raw: Any, section: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GalotError(f"{source}: '{section}' must be a mapping of keys, got {show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in raw if k not in fields), key=str)
    if unknown:
        raise GalotError(
            f"{source}: unknown key '{section}.{_name(unknown[0])}' (allowed in '{section}': {', '.join(fields)})"
        )
    values = {}
    for name, f in fields.items():
        key = f"{section}.{name}"
        value = _coerce(raw[name], hints[name], key, source) if name in raw else f.default
        _check_range(value, f, key, source)
        values[name] = value
    return cls(**values)


def config_from_dict(raw: Any, source: str = "params.yaml") -> Config:
    """Validate a parsed ``params.yaml`` and return a :class:`Config`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GalotError(f"{source}: expected a mapping of sections at the top level")
    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted((k for k in raw if k not in sections), key=str)
    if unknown:
        raise GalotError(f"{source}: unknown section '{_name(unknown[0])}' (allowed: {', '.join(sorted(sections))})")
    cfg = Config(**{name: _build_section(hints[name], raw.get(name), name, source) for name in sections})
    _check_consistency(cfg, source)
    return cfg


def _check_consistency(cfg: Config, source: str) -> None:
    """Rules that involve more than one key."""
    if "{label}" not in cfg.gal.template:
        raise GalotError(f"{source}: gal.template must contain '{{label}}', got {show(cfg.gal.template)}")
    _check_data_source(cfg, source)
    for name in ("experiment.name",):
        value = cfg.experiment.name
        if not value or "/" in value or "\\" in value or value in (".", "..") or "\0" in value:
            raise GalotError(f"{source}: {name} must be a plain folder name (no '/', '..'), got {show(value)}")


def _check_data_source(cfg: Config, source: str) -> None:
    """An unlabelled folder needs class names and a person to label it; class names are for the folder only."""
    d = cfg.data
    if d.dataset == "folder":
        if not d.classes:
            raise GalotError(f"{source}: data.classes must list the class names for data.dataset: folder, "
                             "e.g. classes: [cat, dog]")
        if cfg.experiment.oracle != "human" and cfg.experiment.mode != "gal":
            raise GalotError(f"{source}: experiment.oracle must be human for data.dataset: folder (its images have "
                             "no labels to simulate the oracle with); set experiment.oracle: human")
    elif d.classes is not None or d.test_root is not None:
        key = "data.classes" if d.classes is not None else "data.test_root"
        raise GalotError(f"{source}: {key} is only used with data.dataset: folder, got data.dataset: {d.dataset}; "
                         f"remove {key}")
    names = [" ".join(c.split()) for c in d.classes or ()]
    if any(not n for n in names):
        raise GalotError(f"{source}: data.classes must not contain empty names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GalotError(f"{source}: data.classes lists {show(dup[0])} twice; give each class once")
    if any(n.lower() == "skip" for n in names):
        raise GalotError(f"{source}: data.classes must not contain 'skip' (it is the label for 'none of these "
                         "classes'); rename that class")


PARAMS_MAX_BYTES = 1 << 20   # a params file is a few KB; anything larger is not one


class _AliasRefused(yaml.YAMLError):
    def __init__(self, mark: Any) -> None:
        self.line = mark.line + 1 if mark else None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*name``): a 300-byte file of nested aliases expands to gigabytes
    (a "billion laughs" bomb), and no galot parameter needs one."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML without aliases; a mistake is one :class:`GalotError` line."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except _AliasRefused as e:
        where = f" at line {e.line}" if e.line else ""
        raise GalotError(f"{source}: YAML alias (*name){where} is not allowed; write the value out") from None
    except RecursionError:
        raise GalotError(f"{source}: YAML nested too deeply; parameters are section.key: value") from None
    except ValueError:  # an integer of more than 4,300 digits
        raise GalotError(f"{source}: a number with thousands of digits; no parameter takes one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GalotError(f"{source}: not valid YAML{where}; fix the syntax") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"al.strategy=BALD"`` → (["al", "strategy"], "BALD"); values are parsed as YAML scalars."""
    if "=" not in text:
        raise GalotError(f"--set {show(text)}: expected section.key=value, e.g. --set al.strategy=BALD")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise GalotError(f"--set {show(text)}: key must be section.key, e.g. gal.epsilon")
    try:
        parsed = parse_yaml(value, f"--set {show(text)}") if value.strip() else None
    except GalotError as e:
        if "alias" in str(e) or "nested" in str(e):
            raise
        parsed = value  # not YAML: the text itself (a string value)
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    if raw is not None and not isinstance(raw, dict):
        return raw  # config_from_dict says what is wrong with it
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw or {}).items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise GalotError(f"--set {show(text)}: '{section}' is not a section")
        sec[key] = value
    return out


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read, override and validate ``params.yaml``; ``path=None``: every key at its default."""
    if path is None:
        return config_from_dict(apply_overrides({}, overrides or []), source="defaults (no params.yaml)")
    path = Path(path)
    if not path.exists():
        raise GalotError(f"{path}: file not found; pass --params PATH, or `galot init` to write a starter params.yaml")
    if not path.is_file():
        raise GalotError(f"{path}: not a regular file; pass --params with a YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read(PARAMS_MAX_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GalotError(f"{path}: cannot read the parameters ({e.__class__.__name__}); give a UTF-8 YAML file") \
            from None
    if len(data) > PARAMS_MAX_BYTES:
        raise GalotError(f"{path}: larger than {PARAMS_MAX_BYTES >> 20} MiB; a parameters file is a few KB")
    raw = parse_yaml(text, str(path)) or {}
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))
