"""What every step of a cycle needs: the parameters, the run folder, and what is loaded once.

A :class:`Context` is the data of one experiment in one process: its :class:`Config`, its
:class:`RunFolder`, and, loaded on first use and then shared by every step and every cycle
the process runs, the dataset, the text-to-image model and the judge. It holds no step
logic; the steps are plain functions in :mod:`galot_core.steps` that take a context and a
cycle. It also remembers the batch sizes that fit the accelerator (:meth:`halve_batch`)
and the generated images decoded in this cycle (:meth:`generated_images`), so each PNG is
decoded once per cycle however many steps look at it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from galot_core import labels as labelling
from galot_core import synthetic, textopt
from galot_core.config import Config, config_from_dict
from galot_core.data import Dataset, PoolState, load_dataset
from galot_core.errors import GalotError
from galot_core.models import Classifier, LossPredictionHead
from galot_core.runfolder import RunFolder
from galot_core.devices import resolve_device
from galot_core.transforms import Preprocess

DEFAULT_T2I = "models/galot-mini"
log = logging.getLogger("galot")

# Keys that may change between invocations of the same experiment without invalidating
# what was already computed (where it runs, how fast, how long it goes on).
MUTABLE_KEYS = {
    ("experiment", "cycles"), ("experiment", "runs_dir"), ("data", "root"), ("data", "download"),
    ("train", "device"), ("train", "eval_batch_size"), ("t2i", "device"), ("t2i", "batch_size"),
    ("experiment", "judge"), ("t2i", "allow_download"),
}
# Sections that describe other stages (pretraining, transfer, baselines) or where results
# are mirrored (tracking); they never change what an experiment computes.
UNRELATED_SECTIONS = {"pretrain", "transfer", "baselines", "tracking", "runner"}


def cycle_seed(seed: int, cycle: int, *parts: int) -> int:
    """A distinct, reproducible 63-bit seed per (experiment seed, cycle, purpose, ...)."""
    text = ":".join(str(p) for p in (seed, cycle, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def load_t2i(cfg: Config):
    """The text-to-image backend ``t2i.*`` names, with one-line errors for the usual mistakes."""
    from galot_core.t2i import DiffusersT2I

    t = cfg.t2i
    if t.allow_download and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise GalotError("t2i.allow_download: true, but HF_HUB_OFFLINE is set in the environment (the Makefile "
                         "sets it for the offline default); unset HF_HUB_OFFLINE and run galot directly")
    if t.model == DEFAULT_T2I and not Path(t.model).exists():
        raise GalotError(f"t2i.model: {t.model} does not exist yet; run `galot pretrain-t2i` once (about 15 min "
                         "on 2 CPU cores) or point t2i.model at a diffusers folder or hub id")
    return DiffusersT2I.from_pretrained(t.model, device=t.device, dtype=t.dtype, timestep_spacing=t.timestep_spacing,
                                       scheduler=t.scheduler, local_files_only=not t.allow_download,
                                       revision=t.revision or None, variant=t.variant or None,
                                       text_encoder_dtype=t.text_encoder_dtype, resolution=t.resolution,
                                       gradient_checkpointing=t.gradient_checkpointing,
                                       offload_text_encoders=t.offload_text_encoders)


class Context:
    """One experiment's parameters, run folder and shared resources (see the module docstring)."""

    def __init__(self, cfg: Config, dataset: Dataset | None = None) -> None:
        self.cfg = cfg
        self.folder = RunFolder(cfg.run_dir)
        self._dataset = dataset
        self.t2i_lock = threading.Lock()  # one model per process: concurrent tasks take turns on it
        # Batch sizes that fit the accelerator, learnt from out-of-memory errors (None: t2i.batch_size).
        self.batch_limit: dict[str, int | None] = {"generation": None, "TextOpt": None}
        self._decoded: dict[tuple[Path, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dir(self) -> Path:
        return self.folder.path

    @cached_property
    def dataset(self) -> Dataset:
        return self._dataset if self._dataset is not None else load_dataset(self.cfg.data)

    @cached_property
    def preprocess(self) -> Preprocess:
        d = self.dataset
        return Preprocess(d.image_size, d.channels, d.mean, d.std)

    @cached_property
    def t2i(self):
        """The text-to-image backend, loaded on first use (AL-only runs never load it)."""
        return load_t2i(self.cfg)

    @cached_property
    def judge(self) -> Classifier | None:
        from galot_core.checkpoint import load_classifier

        path = self.cfg.experiment.judge
        return load_classifier(path)[0] if path and Path(path).exists() else None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.train.device)

    @property
    def human_oracle(self) -> bool:
        """A person labels the selected images (there is nothing to label in gal mode)."""
        return self.cfg.experiment.oracle == "human" and self.cfg.experiment.mode != "gal"

    @property
    def uses_generation(self) -> bool:
        return self.cfg.experiment.mode in ("gal", "al+gal")

    def seed(self, cycle: int, *parts: int) -> int:
        return cycle_seed(self.cfg.experiment.seed, cycle, *parts)

    def prompts(self) -> list[str]:
        return [self.cfg.gal.template.format(label=name) for name in self.dataset.class_names]

    def pool_state(self) -> PoolState:
        return self.folder.read_pool(len(self.dataset.pool), len(self.dataset.class_names))

    def load_model(self, cycle: int) -> tuple[Classifier, LossPredictionHead | None] | None:
        return self.folder.read_classifier(cycle)

    def schedule_cycles(self) -> int:
        """N of the ε schedule: ``experiment.cycles`` as the run was started (config.json).

        Raising ``experiment.cycles`` on a started run extends it without changing the
        schedule it was started with: the linear schedule reached its final ε in cycle N and
        stays there, instead of ε·(c−1)/(N'−1) for the new N' dropping ε mid-run.
        """
        return self._started_cycles

    @cached_property
    def _started_cycles(self) -> int:
        # Read once per context (not per ε lookup): config.json is written once, when the run starts.
        started = self.folder.read_config()
        return int(started["experiment"]["cycles"]) if started else self.cfg.experiment.cycles

    def epsilon(self, cycle: int) -> float:
        g, n = self.cfg.gal, self.schedule_cycles()
        return textopt.epsilon_for_cycle(min(cycle, n), n, g.epsilon, g.epsilon_schedule)

    def gal_budget(self, cycle: int) -> int:
        """B_GAL: budget_factor·|L| (al+gal); in gal mode the |L| an AL run would have by this cycle."""
        labelled = (self.cfg.al.budget_per_cycle * cycle if self.cfg.experiment.mode == "gal"
                    else len(self.pool_state().labelled))
        return int(round(self.cfg.gal.budget_factor * labelled))

    def per_class_budget(self, cycle: int) -> list[int]:
        """B_GAL split evenly over the classes (the first classes get the remainder)."""
        n_total, n_classes = self.gal_budget(cycle), len(self.dataset.class_names)
        return [n_total // n_classes + (1 if c < n_total % n_classes else 0) for c in range(n_classes)]

    def batch_size(self, what: str) -> int:
        """t2i.batch_size, or less after an out-of-memory error during ``what``."""
        return min(self.cfg.t2i.batch_size, self.batch_limit[what] or self.cfg.t2i.batch_size)

    def halve_batch(self, what: str, current: int) -> int:
        """Out of accelerator memory: continue with half the batch (and remember it), down to one image."""
        if current <= 1:
            raise GalotError(f"t2i.batch_size: out of GPU memory during {what} even with one image; use "
                             "t2i.dtype: fp16, fewer gal.samples, or a larger GPU")
        half = current // 2
        log.warning("out of GPU memory during %s with a batch of %d; continuing with %d", what, current, half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.batch_limit[what] = half
        return half

    def synthetic_cycles(self, cycle: int) -> list[int]:
        """The cycles whose generated images the cycle's classifier trains on (gal.accumulate)."""
        if not self.uses_generation:
            return []
        return list(range(1, cycle + 1)) if self.cfg.gal.accumulate else [cycle]

    def generated_images(self, cycle: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cycle's generated images (manifest order) at the dataset's size, uint8, and their pseudo-labels.

        Decoded once per manifest content: training, the judge and the sample grid share it."""
        folder = self.folder.synthetic_dir(cycle)
        path = folder / "manifest.jsonl"
        key = (folder, hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "")
        if key not in self._decoded:
            # Keep only the sets the cycle still trains on (all of them with gal.accumulate).
            keep = {self.folder.synthetic_dir(c) for c in self.synthetic_cycles(cycle)} - {folder}
            self._decoded = {k: v for k, v in self._decoded.items() if k[0] in keep}
            d = self.dataset
            self._decoded[key] = synthetic.load_synthetic([folder], d.image_size, d.channels)
        return self._decoded[key]

    # ----- starting a run -----------------------------------------------------------------
    def start(self) -> None:
        """Create the run folder, or check that it was started with compatible parameters."""
        self.check()
        if self.cfg.gal.adapt == "lora" and self.uses_generation:  # before anything is written or bought
            from galot_core.t2i.finetune import check_lora_target

            check_lora_target(self.t2i, self.cfg.gal.adapt_modules)
        if self.folder.read_config() is None:
            self.folder.write_config(self.cfg.to_dict())

    def check(self) -> None:
        """Refuse parameters that cannot work with this dataset or this run folder; writes nothing."""
        e, pool = self.cfg.experiment, len(self.dataset.pool)
        runs = Path(e.runs_dir)
        if runs.exists() and not runs.is_dir():
            raise GalotError(f"experiment.runs_dir: {runs} is a file, not a folder; move it away or set "
                             "experiment.runs_dir to a folder")
        if self.dir.exists() and not self.dir.is_dir():
            raise GalotError(f"experiment.name: {self.dir} is a file, not a run folder; move it away or use another "
                             "experiment.name")
        if e.mode != "gal" and self.cfg.al.budget_per_cycle * e.cycles > pool:
            raise GalotError(f"al.budget_per_cycle: {e.cycles} cycles × {self.cfg.al.budget_per_cycle} = "
                             f"{self.cfg.al.budget_per_cycle * e.cycles} labels, but the pool has only {pool} "
                             "images; lower al.budget_per_cycle or experiment.cycles")
        if self.human_oracle and labelling.SKIP in [labelling.normalise(n) for n in self.dataset.class_names]:
            raise GalotError(f"data: a class is named '{labelling.SKIP}', the answer for 'none of these classes' "
                             "with experiment.oracle: human; rename that class (data.class_names_file)")
        started = self.folder.read_config()
        if started is not None:
            check_same_experiment(config_from_dict(started, source=str(self.folder.config_path)), self.cfg, self.dir)


def check_same_experiment(old: Config, new: Config, run_dir: Path) -> None:
    """One line naming the first parameter that differs from those the run was started with."""
    a, b = old.to_dict(), new.to_dict()
    # Generation parameters cannot have influenced an experiment that never generates.
    ignored = set(UNRELATED_SECTIONS) | ({"gal", "t2i"} if old.experiment.mode == new.experiment.mode == "al" else set())
    for section in a.keys() - ignored:
        for key in a[section]:
            if (section, key) not in MUTABLE_KEYS and a[section][key] != b[section][key]:
                raise GalotError(
                    f"{section}.{key}: experiment '{new.experiment.name}' in {run_dir} was started with "
                    f"{a[section][key]!r}, now {b[section][key]!r}; use a new experiment.name or delete the run folder"
                )


def describe(value: Any) -> str:
    """An accuracy for people: the number, or why there is none."""
    return "n/a (no labelled test set)" if value is None else f"{value:.4f}"
