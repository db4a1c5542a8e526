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

The schema is a set of frozen pydantic models, so one declaration serves everything: the CLI
and ``dvc repro`` validate params.yaml with it (galot_core/params_file.py), the flows take a
:class:`Config` as their typed parameter (the Prefect UI renders it as a form, with each key's
choices, range and help), and tasks receive the validated object — nothing re-reads the file.
A mistake is reported as one line naming the key and what is allowed (galot_core/config_errors.py),
e.g. ``params.yaml: al.strategy must be one of [...], got 'Margin'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from galot_core.config_errors import one_line
from galot_core.config_fields import (BATCH_MAX, LR_MAX, SEED_MAX, STEPS_MAX, TUPLE, WORKERS_MAX, Section,
                                      schema_field)
from galot_core.errors import GalotError, show
from galot_core.images import DEFAULT_MAX_PIXELS
from galot_core.names import class_names_problem, name_key, text_problem

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


class ExperimentConfig(Section):
    name: str = schema_field("default", help="run folder name under runs_dir")
    runs_dir: str = schema_field("runs", help="where run folders live")
    seed: int = schema_field(0, min=0, max=SEED_MAX, why="generators take 32-bit seeds")
    mode: Literal[MODES] = schema_field("al+gal", help="al: real labels only; gal: generated only; al+gal: GALOT")
    cycles: int = schema_field(10, min=1, max=10_000, help="N, active-learning cycles",
                         why="one folder and one classifier per cycle")
    oracle: Literal[ORACLES] = schema_field(
        "simulated",
        help="simulated: labels read from the dataset (benchmarks); human: a person labels each "
             "selected batch (`galot label serve|import`), the run stops until they are given")
    judge: str | None = schema_field(None, help="fully-supervised classifier (safetensors) that judges pseudo-labels; "
                                          "written by `galot prepare`, skipped when the file is absent")


class DataConfig(Section):
    dataset: Literal[DATASETS] = schema_field("mnist5k")
    root: str = schema_field("data", help="dataset folder (fashion_mnist: its IDX files, else Debian's copy; cifar/tinyimagenet/imagefolder/folder)")
    classes: Annotated[tuple[str, ...], TUPLE] | None = schema_field(None, help="folder: the class names (words put into prompts)")
    test_root: str | None = schema_field(None, help="folder: optional labelled test set, one sub-folder per class "
                                              "named like data.classes; without it test accuracy is not computed")
    download: bool = schema_field(False, help="allow torchvision to download CIFAR (needs network)")
    image_size: int | None = schema_field(None, min=8, max=4096, help="resize imagefolder images to this size",
                                    why="every image is held in memory at this size")
    class_names_file: str | None = schema_field(None, help="imagefolder: folder name -> class name mapping")
    test_fraction: float = schema_field(0.2, min=0.0, max=0.9, min_exclusive=True)
    on_bad_image: Literal["skip", "fail"] = schema_field(
        "skip",
        help="an image that cannot be decoded (or is larger than data.max_pixels): skip it with a warning, or fail")
    max_pixels: int = schema_field(DEFAULT_MAX_PIXELS, min=64, max=2**28,
                             help="largest image (width × height) decoded; a larger one is a bad image "
                                  "(data.on_bad_image)",
                             why="a 1 MB PNG can declare 2^28 pixels, about 1 GB decoded")


class ALConfig(Section):
    strategy: Literal[AL_STRATEGIES] = schema_field("MarginSampling", help="σ_AL")
    budget_per_cycle: int = schema_field(20, min=1, max=1_000_000, help="B_AL, real images labelled per cycle",
                                  why="more labels per cycle than any pool holds")
    mc_samples: int = schema_field(10, min=2, max=1000, help="MC-dropout passes for BALD / MeanSTD",
                            why="each pass scores the whole pool")


class GALConfig(Section):
    strategy: Literal[GAL_STRATEGIES] = schema_field("MarginSampling", help="σ_GAL, maximised by TextOpt")
    template: str = schema_field("a realistic photo of a {label}", help="prompt template τ with {label}")
    epsilon: float = schema_field(0.5, min=0.0, max=1e6, help="ε (final value of the schedule)",
                            why="far beyond any text embedding's norm")
    epsilon_schedule: Literal["linear", "constant"] = schema_field(
        "linear",
        help="linear: ε·(c-1)/(N-1) in cycle c, as linear(0, ε) in Table 8")
    epsilon_relative: bool = schema_field(False, help="ε as a fraction of ||s*||₂ instead of absolute")
    alpha_ratio: float = schema_field(0.2, min=0.0, min_exclusive=True, max=100.0, help="α = alpha_ratio·ε (Table 8: ε/5)",
                                why="a step of 100ε leaves the ε-ball at once")
    steps: int = schema_field(10, min=0, max=10_000, help="n, PGD steps", why="each step runs k denoising passes")
    samples: int = schema_field(6, min=1, max=4096, help="k, images per gradient estimate",
                         why="k images are denoised at every PGD step")
    step_rule: Literal["sign", "l2"] = schema_field("sign", help="sign: Eq. 5; l2: the authors' code")
    estimator: Literal["last_step", "full", "tweedie", "last_m"] = schema_field(
        "last_step",
        help="gradient through the last step (Prop. 1), all steps, or one x0 prediction")
    momentum: float = schema_field(0.0, min=0.0, max=0.99, help="heavy-ball momentum across PGD steps (0 = paper)")
    common_noise: bool = schema_field(False, help="same k noise samples at every PGD step (common random numbers)")
    budget_factor: float = schema_field(1.0, min=0.0, max=1000.0, help="B_GAL = budget_factor·|L| (gal mode: ·B_AL·c)",
                                  why="every generated image is kept on disk")
    accumulate: bool = schema_field(False, help="keep earlier cycles' synthetic images in training")
    # Beyond the paper (docs/results.md "Generated images that teach"). Defaults = the paper.
    step_scale: Literal["paper", "ball"] = schema_field(
        "paper",
        help="paper: α = alpha_ratio·ε per coordinate (a sign step then has L2 norm α·√D and "
             "leaves the ball); ball: α = alpha_ratio·ε in L2 norm (sign steps of α/√D)")
    diversity: float = schema_field(0.0, min=0.0, max=2.0,
                              help="per-image embedding offset, a random direction of this length relative to "
                                   "‖s*‖ (0 = every image of a class from the same embedding, as the paper)")
    anchor_strength: float = schema_field(0.0, min=0.0, max=1.0,
                                    help="0: text-to-image from noise (paper); >0: image-to-image from the labelled "
                                         "real images of the class (SDEdit strength; 1 = pure noise)")
    candidates: int = schema_field(1, min=1, max=32, help="m: generate m·B_GAL candidates and keep the B_GAL the classifier "
                                                    "is least sure of by σ_GAL (1 = keep all, as the paper)",
                             why="each candidate costs a full generation")
    select_by: Literal["sigma", "intended_loss"] = schema_field(
        "sigma",
        help="which candidates to keep: sigma: the highest σ_GAL (uncertain between any classes); "
             "intended_loss: the highest cross-entropy of their prompted class (hard positives, "
             "as online hard example mining, Shrivastava et al., CVPR 2016)")
    label_check: Literal["none", "diffusion"] = schema_field(
        "none",
        help="diffusion: drop generated images that the T2I model itself, as a zero-shot "
             "classifier (Diffusion Classifier), does not put in their prompted class")
    # Few-shot adaptation of the generator to the labels bought so far (docs/results.md,
    # "A generator that learns from the labels"). none = the paper: the T2I model never changes.
    adapt: Literal["none", "embedding", "lora"] = schema_field(
        "none",
        help="fit the generator to the labelled real images every cycle before TextOpt: embedding: each "
             "class's prompt embedding s*_c by the denoising loss (the new centre of TextOpt's ε-ball); "
             "lora: a LoRA on the denoiser's attention (peft), all classes at once")
    adapt_steps: int = schema_field(300, min=1, max=100_000, help="optimiser steps of each cycle's fit",
                              why="each step is a denoiser forward and backward pass")
    adapt_lr: float = schema_field(1e-3, min=0.0, min_exclusive=True, max=1.0, help="Adam(W) learning rate of the fit",
                             why="larger rates destroy a pretrained denoiser")
    adapt_batch: int = schema_field(32, min=1, max=BATCH_MAX, help="labelled images per optimiser step",
                              why="more than any accelerator holds")
    adapt_rank: int = schema_field(8, min=1, max=256, help="lora: the LoRA's rank r (alpha = r)",
                             why="beyond it a LoRA is as large as the layers it adapts")
    adapt_modules: Annotated[tuple[str, ...], TUPLE] = schema_field(
        ("to_q", "to_k", "to_v", "to_out.0"),
        help="lora: names (suffixes) of the denoiser's linear layers to adapt, as peft's target_modules")
    adapt_scale: float = schema_field(1.0, min=0.0, max=2.0,
                                help="lora: strength of the adapter at generation (1 = as fitted, 0 = the "
                                     "pretrained model)")
    adapt_radius: float = schema_field(0.3, min=0.0, max=2.0,
                                 help="embedding: the fit stays within adapt_radius·‖s*_c‖ of the template's "
                                      "embedding (unconstrained fits trade labels for style)")


class T2IConfig(Section):
    model: str = schema_field("models/galot-mini", help="diffusers folder or hub id")
    steps: int = schema_field(10, min=1, max=10_000, help="denoising steps T", why="schedulers train on 1,000 timesteps")
    guidance_scale: float = schema_field(3.0, min=0.0, max=1000.0, why="far beyond any useful guidance (1–20)")
    timestep_spacing: Literal[None, "leading", "trailing", "linspace"] = schema_field("trailing")
    scheduler: Literal[None, "ddim", "dpm++", "euler", "unipc"] = schema_field(
        None,
        help="null: the model folder's scheduler; else this one on its noise schedule")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = schema_field("auto")
    device: str = schema_field("auto")
    batch_size: int = schema_field(100, min=1, max=BATCH_MAX, help="images per generation batch (halved on out-of-memory)",
                            why="more than any accelerator holds")
    allow_download: bool = schema_field(False, help="fetch t2i.model from the Hugging Face hub if it is not local")
    revision: str = schema_field("", help="hub revision to pin (branch, tag or commit); empty = the default branch")
    variant: str = schema_field("", help="weight variant on the hub/in the folder, e.g. fp16; empty = the default weights")
    text_encoder_dtype: Literal["fp32", "fp16", "bf16"] = schema_field(
        "fp32",
        help="bf16 halves the text encoders' memory (T5-XXL: 9.5 GB in fp32)")
    resolution: int | None = schema_field(None, min=8, max=4096,
                                    help="image height = width in pixels; null = the model's default",
                                    why="no text-to-image model generates larger images")
    gradient_checkpointing: bool = schema_field(False, help="recompute denoiser activations in TextOpt's backward pass "
                                                      "(less memory, more time)")
    offload_text_encoders: bool = schema_field(False, help="keep the text encoders on the CPU between encodings "
                                                     "(once per cycle): frees T5-XXL / Qwen3 memory on the GPU")


class ModelConfig(Section):
    arch: Literal[ARCHITECTURES] = schema_field("small_cnn")
    dropout: float = schema_field(0.2, min=0.0, max=0.9, help="before the last layer; MC dropout for BALD/MeanSTD")


class TrainConfig(Section):
    epochs: int = schema_field(40, min=1, max=100_000, why="epochs over the labelled set, retrained every cycle")
    min_steps: int = schema_field(300, min=0, max=STEPS_MAX,
                            help="at least this many SGD steps, so tiny labelled sets still train",
                            why="days of training")
    batch_size: int = schema_field(32, min=1, max=BATCH_MAX, why="more than any accelerator holds")
    lr: float = schema_field(0.01, min=0.0, min_exclusive=True, max=LR_MAX, why="larger rates diverge")
    momentum: float = schema_field(0.9, min=0.0, max=1.0)
    weight_decay: float = schema_field(5e-4, min=0.0, max=1.0, why="a decay of 1 zeroes the weights every step")
    augment: Literal["auto", "none", "crop", "crop+flip"] = schema_field(
        "auto",
        help="auto: crop+flip for natural images, crop for digits and for your own "
             "imagefolder/folder images (a flip may change their class; set crop+flip "
             "if mirrored images keep their class)")
    device: str = schema_field("auto")
    eval_batch_size: int = schema_field(512, min=1, max=BATCH_MAX, why="more than any accelerator holds")


class PretrainConfig(Section):
    """Pretraining of the embedded galot-mini model (``galot pretrain-t2i``, DVC stage ``pretrain_t2i``)."""

    out: str = schema_field("models/galot-mini", help="where the diffusers folder is written")
    vae_steps: int = schema_field(450, min=1, max=STEPS_MAX, why="days of training")
    vae_batch: int = schema_field(64, min=1, max=BATCH_MAX, why="more than any accelerator holds")
    vae_lr: float = schema_field(2e-3, min=0.0, min_exclusive=True, max=LR_MAX, why="larger rates diverge")
    kl_weight: float = schema_field(1e-6, min=0.0, max=1e6, why="the KL term would drown the reconstruction")
    unet_steps: int = schema_field(1500, min=1, max=STEPS_MAX, why="days of training")
    unet_batch: int = schema_field(128, min=1, max=BATCH_MAX, why="more than any accelerator holds")
    unet_lr: float = schema_field(1e-3, min=0.0, min_exclusive=True, max=LR_MAX, why="larger rates diverge")
    warmup: int = schema_field(100, min=1, max=STEPS_MAX, why="days of training")
    ema: float = schema_field(0.998, min=0.0, max=1.0)
    uncond_prob: float = schema_field(0.1, min=0.0, max=1.0, help="caption dropout for classifier-free guidance")
    seed: int = schema_field(0, min=0, max=SEED_MAX, why="generators take 32-bit seeds")


class TransferConfig(Section):
    """Other architectures trained on a finished experiment's data (paper Table 2), no generation."""

    archs: Annotated[tuple[Literal[ARCHITECTURES], ...], TUPLE] = schema_field(("vgg16", "densenet121", "mobilenet_v2"))
    epochs: int = schema_field(40, min=1, max=100_000, why="epochs over the cached dataset")
    min_steps: int = schema_field(300, min=0, max=STEPS_MAX, why="days of training")
    lr: float = schema_field(0.01, min=0.0, min_exclusive=True, max=LR_MAX, why="larger rates diverge")
    seed: int = schema_field(0, min=0, max=SEED_MAX, why="generators take 32-bit seeds")


class BaselinesConfig(Section):
    """AL-only runs with the same budgets, for comparison (DVC stage ``baselines``, ``galot report``)."""

    strategies: Annotated[tuple[Literal[AL_STRATEGIES], ...], TUPLE] = schema_field(("RandomSampling", "EntropySampling", "MarginSampling"))


class TrackingConfig(Section):
    """MLflow; the tracking URI comes from ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``)."""

    mlflow: bool = schema_field(True, help="log params, per-cycle metrics, models and grids to MLflow")
    experiment: str = schema_field("galot", help="MLflow experiment name")


class RunnerConfig(Section):
    """Where the diffusion-model work runs; never changes what is computed (same images, same manifest)."""

    task_runner: Literal["thread", "dask"] = schema_field(
        "thread",
        help="thread: this process; dask: prefect-dask's DaskTaskRunner")
    dask_address: str | None = schema_field(None, help="an existing Dask scheduler (tcp://host:8786); "
                                                 "unset: a local cluster of dask_workers processes")
    dask_workers: int = schema_field(0, min=0, max=WORKERS_MAX,
                              help="local cluster size; 0 = one per visible GPU (1 without GPU)",
                              why="one process each")
    shard_size: int = schema_field(100, min=1, max=1_000_000, help="generated images per task (a multiple of "
                                                          "t2i.batch_size keeps every batch full)",
                            why="one task's images are held in memory")
    textopt_classes_per_task: int = schema_field(0, min=0, max=1_000_000,
                                          help="classes per TextOpt task; 0 = all classes in one batched task "
                                               "(cheapest on one device)", why="more than any dataset has")


class Config(BaseModel):
    """Every parameter of an experiment; what a flow takes (the Prefect UI renders it as a form)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    al: ALConfig = Field(default_factory=ALConfig)
    gal: GALConfig = Field(default_factory=GALConfig)
    t2i: T2IConfig = Field(default_factory=T2IConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        problem = inconsistency(self)
        if problem:
            raise ValueError(problem)
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain JSON / YAML: tuples become lists."""
        return self.model_dump(mode="json")

    @property
    def run_dir(self) -> Path:
        return Path(self.experiment.runs_dir) / self.experiment.name


# ε relative to ‖s*‖ that galot ships for every model (the embedded one and each family preset,
# galot_core/t2i/presets.py); the schema's own default above is the paper's absolute ε.
RELATIVE_EPSILON = 0.2

EMBEDDED_PRESET: dict[tuple[str, str], Any] = {
    ("experiment", "judge"): "models/judge-mnist5k.safetensors",  # written by `galot prepare`
    ("gal", "epsilon"): RELATIVE_EPSILON,  # relative: galot-mini's MiniLM embedding has ‖s*‖ ≈ 36
    ("gal", "epsilon_relative"): True,
    ("t2i", "steps"): 4,                   # galot-mini keeps its quality at 4 DDIM steps
    ("transfer", "epochs"): 15,            # DenseNet121 within minutes on 2 CPU cores
    ("transfer", "min_steps"): 150,
}


def updated(cfg: Config, section: str, **values: Any) -> Config:
    """``cfg`` with ``section``'s ``values`` replaced, validated like every other Config (a
    typed copy: no round trip through strings or params.yaml)."""
    part = getattr(cfg, section)
    try:
        # The other sections are taken as they are (already validated); only this one is checked again.
        return Config.model_validate({**dict(cfg), section: {**dict(part), **values}})
    except ValidationError as e:
        raise GalotError(one_line(e, Config)) from None


def config_from_dict(raw: Any, source: str = "params.yaml") -> Config:
    """Validate a parsed ``params.yaml`` and return a :class:`Config`; a mistake is one line."""
    if raw is None:
        raw = {}
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise GalotError(f"{source}: {one_line(e, Config)}") from None
    except RecursionError:
        raise GalotError(f"{source}: nested too deeply; parameters are section.key: value") from None


def inconsistency(cfg: Config) -> str | None:
    """Rules that involve more than one key (or a key's format): what is wrong, or None."""
    if "{label}" not in cfg.gal.template:
        return f"gal.template must contain '{{label}}', got {show(cfg.gal.template)}"
    name = cfg.experiment.name
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        return f"experiment.name must be a plain folder name (no '/', '..'), got {show(name)}"
    if problem := text_problem("experiment.name", name):
        return problem
    if cfg.gal.adapt != "none" and cfg.experiment.mode != "al+gal":
        lacks = "labels no real image" if cfg.experiment.mode == "gal" else "generates no image"
        return (f"gal.adapt: {cfg.gal.adapt} fits the generator to the labelled real images, but experiment.mode: "
                f"{cfg.experiment.mode} {lacks}; set gal.adapt: none or experiment.mode: al+gal")
    if any(not m or not m.replace(".", "").replace("_", "").isalnum() for m in cfg.gal.adapt_modules):
        return (f"gal.adapt_modules: {show(list(cfg.gal.adapt_modules))} must be layer names such as to_q or "
                "to_out.0 (letters, digits, '_' and '.')")
    return _data_source_problem(cfg)


def _data_source_problem(cfg: Config) -> str | None:
    """An unlabelled folder needs class names and a person to label it; class names are for the folder only."""
    d = cfg.data
    if d.dataset == "folder":
        if not d.classes:
            return "data.classes must list the class names for data.dataset: folder, e.g. classes: [cat, dog]"
        if cfg.experiment.oracle != "human" and cfg.experiment.mode != "gal":
            return ("experiment.oracle must be human for data.dataset: folder (its images have no labels to "
                    "simulate the oracle with); set experiment.oracle: human")
    elif d.classes is not None or d.test_root is not None:
        key = "data.classes" if d.classes is not None else "data.test_root"
        return f"{key} is only used with data.dataset: folder, got data.dataset: {d.dataset}; remove {key}"
    if problem := class_names_problem("data.classes", d.classes or ()):
        return problem
    if any(name_key(n) == "skip" for n in d.classes or ()):
        return "data.classes must not contain 'skip' (it is the label for 'none of these classes'); rename that class"
    return None
