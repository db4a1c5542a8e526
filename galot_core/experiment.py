"""One experiment = one run folder; one cycle = Algorithm 1, lines 5–10, as resumable steps.

Each step reads what earlier steps left in the run folder and writes its own outputs
atomically; a step whose outputs exist is skipped. So a run killed at any point
continues where it stopped, and the orchestration layer (Prefect tasks, DVC stages) can
call the steps one by one without passing tensors around. Layout::

    runs/<name>/
      config.json                 parameters the experiment was started with
      pool.json                   labelled pool indices, labels, cycle bought
      labels/                     human oracle only: each cycle's batch, thumbnails, answers
      cycles/cycle_003/
        embeddings.safetensors    s* and the TextOpt-optimised s, one row per class
        model.safetensors         classifier trained in cycle 3
        metrics.json              test accuracy, |L|, |G|, ε, seconds per step
      synthetic/cycle_003/        generated images + manifest.jsonl (galot_core.synthetic)
      metrics.json                all cycles' metrics, in order

Modes (``experiment.mode``): ``al`` — real labels only (the AL baselines); ``gal`` —
generated images only, zero labels (the paper's "Baseline GAL", text → model);
``al+gal`` — GALOT, real labels ∪ generated images.

Synthetic images do not accumulate by default (``gal.accumulate: false``): each cycle
generates a fresh set of B_GAL = budget_factor·|L| images from the current optimised
embeddings and trains on those, as the authors' code does; B_GAL = |L| growing with the
labelled pool is the paper's Appendix A. With ``accumulate: true`` every earlier cycle's
set is also used.

The oracle (``experiment.oracle``): ``simulated`` reads the selected images' labels from
the dataset, as benchmarks do; ``human`` writes the selected batch to ``labels/`` and the
step :meth:`Experiment.receive_labels` stops the cycle (:class:`galot_core.labels.WaitingForLabels`)
until a person has answered every image, then commits the answers to ``pool.json``.
Nothing computed before the stop is recomputed after it. Without a labelled test set
(``data.dataset: folder`` without ``data.test_root``) test accuracy is None: unknown.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from safetensors.torch import load_file
from tqdm.auto import tqdm

from galot_core import acquisition, export, labels, synthetic, textopt
from galot_core.checkpoint import load_classifier, save_classifier
from galot_core.config import Config, config_from_dict
from galot_core.data import Dataset, PoolState, load_dataset
from galot_core.errors import GalotError
from galot_core.faults import failpoint, simulated_oom
from galot_core.io import (atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, safetensors_bytes,
                           safetensors_metadata)
from galot_core.judge import judged_accuracy
from galot_core.models import Classifier, LossPredictionHead, build_model
from galot_core.train import accuracy, fit, resolve_device
from galot_core.transforms import Preprocess, to_uint8

DEFAULT_T2I = "models/galot-mini"
log = logging.getLogger("galot")

# Keys that may change between invocations of the same experiment without invalidating
# what was already computed (where it runs, how fast, how long it goes on).
_MUTABLE_KEYS = {
    ("experiment", "cycles"), ("experiment", "runs_dir"), ("data", "root"), ("data", "download"),
    ("train", "device"), ("train", "eval_batch_size"), ("t2i", "device"), ("t2i", "batch_size"),
    ("experiment", "judge"), ("t2i", "allow_download"),
}
# Sections that describe other stages (pretraining, transfer, baselines) or where results
# are mirrored (tracking); they never change what an experiment computes.
_UNRELATED_SECTIONS = {"pretrain", "transfer", "baselines", "tracking"}


def cycle_seed(seed: int, cycle: int, *parts: int) -> int:
    """A distinct, reproducible 63-bit seed per (experiment seed, cycle, purpose, ...)."""
    text = ":".join(str(p) for p in (seed, cycle, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass
class CycleMetrics:
    cycle: int
    labelled: int
    generated: int
    epsilon: float
    test_accuracy: float | None            # None: no labelled test set (an unlabelled folder)
    seconds: dict[str, float]
    judged_accuracy: float | None = None   # pseudo-labels the judge agrees with (None: no judge/images)
    unet_calls: dict[str, int] | None = None
    files: dict[str, str] | None = None   # SHA-256 of the cycle's weights, checked by `galot verify`

    def to_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "labelled": self.labelled, "generated": self.generated,
                "epsilon": self.epsilon, "test_accuracy": self.test_accuracy, "seconds": self.seconds,
                "judged_accuracy": self.judged_accuracy, "unet_calls": self.unet_calls or {},
                "files": self.files or {}}


# accuracy.csv: "budget" is the real-label budget the cycle stands for (cycle × B_AL), the x
# axis of the paper's curves — equal to "labelled" except in GAL-only runs, which have none.
CSV_COLUMNS = ("cycle", "budget", "labelled", "generated", "epsilon", "test_accuracy", "judged_accuracy")


class Experiment:
    """A run folder and the steps that advance it."""

    def __init__(self, cfg: Config, dataset: Dataset | None = None) -> None:
        self.cfg = cfg
        self.dir = cfg.run_dir
        self._dataset = dataset
        # Batch sizes that fit the accelerator, learnt from out-of-memory errors (None: t2i.batch_size).
        self._generate_batch: int | None = None
        self._textopt_batch: int | None = None

    # ----- persistent state -------------------------------------------------------------
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
        from galot_core.t2i import DiffusersT2I

        model = self.cfg.t2i.model
        if self.cfg.t2i.allow_download and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise GalotError("t2i.allow_download: true, but HF_HUB_OFFLINE is set in the environment (the Makefile "
                             "sets it for the offline default); unset HF_HUB_OFFLINE and run galot directly")
        if model == DEFAULT_T2I and not Path(model).exists():
            raise GalotError(f"t2i.model: {model} does not exist yet; run `galot pretrain-t2i` once (about 15 min "
                             "on 2 CPU cores) or point t2i.model at a diffusers folder or hub id")
        return DiffusersT2I.from_pretrained(model, device=self.cfg.t2i.device, dtype=self.cfg.t2i.dtype,
                                            timestep_spacing=self.cfg.t2i.timestep_spacing,
                                            local_files_only=not self.cfg.t2i.allow_download)

    @property
    def human_oracle(self) -> bool:
        """A person labels the selected images (there is nothing to label in gal mode)."""
        return self.cfg.experiment.oracle == "human" and self.cfg.experiment.mode != "gal"

    @property
    def uses_generation(self) -> bool:
        return self.cfg.experiment.mode in ("gal", "al+gal")

    def epsilon(self, cycle: int) -> float:
        g = self.cfg.gal
        return textopt.epsilon_for_cycle(cycle, self.cfg.experiment.cycles, g.epsilon, g.epsilon_schedule)

    def gal_budget(self, cycle: int) -> int:
        """B_GAL: budget_factor·|L| (al+gal); in gal mode the |L| an AL run would have by this cycle."""
        labelled = (self.cfg.al.budget_per_cycle * cycle if self.cfg.experiment.mode == "gal"
                    else len(self.pool_state().labelled))
        return int(round(self.cfg.gal.budget_factor * labelled))

    def prompts(self) -> list[str]:
        return [self.cfg.gal.template.format(label=name) for name in self.dataset.class_names]

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.train.device)

    def cycle_dir(self, cycle: int) -> Path:
        return self.dir / "cycles" / f"cycle_{cycle:03d}"

    def start(self) -> None:
        """Create the run folder, or check that it was started with compatible parameters."""
        self.check()
        path = self.dir / "config.json"
        if not path.exists():
            atomic_write_json(path, self.cfg.to_dict())

    def check(self) -> None:
        """Refuse parameters that cannot work with this dataset or this run folder; writes nothing."""
        if self.cfg.experiment.mode != "gal":
            need = self.cfg.al.budget_per_cycle * self.cfg.experiment.cycles
            if need > len(self.dataset.pool):
                raise GalotError(f"al.budget_per_cycle: {self.cfg.experiment.cycles} cycles × "
                                 f"{self.cfg.al.budget_per_cycle} = {need} labels, but the pool has only "
                                 f"{len(self.dataset.pool)} images; lower al.budget_per_cycle or experiment.cycles")
        if self.human_oracle:
            names = [labels.normalise(n) for n in self.dataset.class_names]
            if labels.SKIP in names:
                raise GalotError(f"data: a class is named '{labels.SKIP}', the answer for 'none of these classes' "
                                 "with experiment.oracle: human; rename that class (data.class_names_file)")
        path = self.dir / "config.json"
        if path.exists():
            _check_same_experiment(config_from_dict(read_json(path), source=str(path)), self.cfg, self.dir)

    def pool_state(self) -> PoolState:
        return PoolState.load_or_new(self.dir / "pool.json", len(self.dataset.pool))

    def completed_cycles(self) -> int:
        c = 0
        while (self.cycle_dir(c + 1) / "metrics.json").exists():
            c += 1
        return c

    def load_model(self, cycle: int) -> tuple[Classifier, LossPredictionHead | None] | None:
        path = self.cycle_dir(cycle) / "model.safetensors"
        if cycle < 1 or not path.exists():
            return None
        model, head, _ = load_classifier(path)
        return model, head

    # ----- the steps of one cycle -------------------------------------------------------
    def select(self, cycle: int) -> list[int]:
        """Line 5: rank the unlabelled pool by σ_AL with the last cycle's classifier, label the top B_AL."""
        state = self.pool_state()
        already = [i for i, c in zip(state.labelled, state.cycles) if c == cycle]
        if already or self.cfg.experiment.mode == "gal":
            return already
        if self.human_oracle and (batch := labels.read_batch(self.dir, cycle)) is not None:
            return batch.indices  # selected before a stop for labels: never selected again
        n = self.cfg.al.budget_per_cycle
        unlabelled = state.unlabelled_tensor()
        if n > len(unlabelled):
            raise GalotError(f"al.budget_per_cycle: {n} images asked in cycle {cycle} but only "
                             f"{len(unlabelled)} remain unlabelled; lower al.budget_per_cycle or experiment.cycles")
        previous = self.load_model(cycle - 1)
        model, head = previous if previous else (None, None)
        picked = acquisition.select(
            self.cfg.al.strategy, n, model=model, images=self.dataset.pool.images,
            unlabelled=unlabelled, labelled=state.labelled_tensor(), preprocess=self.preprocess,
            device=self.device, batch_size=self.cfg.train.eval_batch_size, mc_samples=self.cfg.al.mc_samples,
            generator=torch.Generator().manual_seed(cycle_seed(self.cfg.experiment.seed, cycle, 1)),
            loss_head=head,
        )
        if self.human_oracle:
            # The oracle is a person: the batch goes to labels/, receive_labels() waits for the answers.
            labels.write_batch(self.dir, cycle, [int(i) for i in picked], self.dataset)
            failpoint("select.after_save")
            return [int(i) for i in picked]
        # The oracle: labels are read from the dataset (simulated annotation).
        state.add(picked, self.dataset.pool.labels[picked], cycle)
        state.save(self.dir / "pool.json")
        failpoint("select.after_save")
        return [int(i) for i in picked]

    def receive_labels(self, cycle: int) -> dict[str, int]:
        """The human oracle's answers for the cycle's batch, committed to ``pool.json`` in one write.

        Raises :class:`galot_core.labels.WaitingForLabels` while any image of the batch has no
        answer. "skip" answers leave the pool (never offered again) and are not labels.
        """
        if not self.human_oracle:
            return {}
        batch = labels.read_batch(self.dir, cycle)
        if batch is None:
            raise GalotError(f"{labels.batch_path(self.dir, cycle)}: cycle {cycle} has no selected batch; run its "
                             "select step first")
        state = self.pool_state()
        answers = labels.read_answers(self.dir, cycle)
        if not labels.committed(batch, {"labelled": state.labelled, "removed": state.removed}):
            left = labels.missing(batch, answers)
            if left:
                raise labels.WaitingForLabels(self.dir, cycle, len(left), len(batch.items))
            picked, classes, skipped = labels.commit(batch, answers)
            state.add(picked, classes, cycle)
            state.remove(skipped)
            state.save(self.dir / "pool.json")
        skipped = sum(1 for a in answers if a["answer"] == labels.SKIP)
        return {"labelled": len(batch.items) - skipped, "skipped": skipped}

    def optimize_embeddings(self, cycle: int) -> dict[str, float]:
        """Lines 6–8: s* = h_τ(y) per class, then TextOpt (PGD on Eq. 2) against the last classifier."""
        path = self.cycle_dir(cycle) / "embeddings.safetensors"
        if path.exists():
            return {"epsilon": self.effective_epsilon(cycle)}
        g, t2i = self.cfg.gal, self.t2i
        s_star = t2i.encode(self.prompts())
        eps = textopt.resolve_epsilon(self.epsilon(cycle), s_star, g.epsilon_relative)
        eps_t = torch.as_tensor(eps, dtype=torch.float32).expand(len(s_star)).clone()
        previous = self.load_model(cycle - 1)
        calls_before = t2i.num_unet_calls
        if previous is None or float(eps_t.max()) == 0.0 or g.steps == 0:
            s = s_star.float().clone()  # nothing to optimise against yet, or ε = 0 (GALOT basic)
            eps_t = torch.zeros_like(eps_t)
        else:
            model = previous[0].to(t2i.device).eval().requires_grad_(False)
            preprocess = self.preprocess.to(t2i.device)
            step_seeds = iter(range(g.steps))

            def objective(images: torch.Tensor) -> torch.Tensor:
                return acquisition.objective(g.strategy, model(preprocess(images)))

            def grad_fn(s: torch.Tensor) -> torch.Tensor:
                # Fresh noise per PGD step estimates Eq. 5's expectation; common noise optimises
                # a fixed sample average, which has less variance between steps.
                step = 0 if g.common_noise else next(step_seeds)
                gen = torch.Generator(t2i.device).manual_seed(cycle_seed(self.cfg.experiment.seed, cycle, 3, step))
                while True:
                    batch = min(self.cfg.t2i.batch_size, self._textopt_batch or self.cfg.t2i.batch_size)
                    try:
                        simulated_oom(min(batch, g.samples * len(s)))
                        return t2i.acquisition_grad(s, objective, k=g.samples, generator=gen,
                                                    num_inference_steps=self.cfg.t2i.steps,
                                                    guidance_scale=self.cfg.t2i.guidance_scale,
                                                    estimator=g.estimator, batch_size=batch)[0]
                    except torch.cuda.OutOfMemoryError:
                        self._halve_batch("TextOpt", min(batch, g.samples * len(s)))
                        gen = torch.Generator(t2i.device).manual_seed(
                            cycle_seed(self.cfg.experiment.seed, cycle, 3, step))

            if g.strategy == "RandomSampling":
                grad_fn = textopt.random_direction_grad(torch.Generator().manual_seed(
                    cycle_seed(self.cfg.experiment.seed, cycle, 4)))
            s = textopt.optimize(s_star, grad_fn, eps_t, g.alpha_ratio * eps_t, g.steps, step=g.step_rule,
                                 momentum=g.momentum)
        tensors = {"s_star": s_star.float().cpu().contiguous(), "s": s.float().cpu().contiguous(),
                   "epsilon": eps_t.cpu().contiguous()}
        calls = t2i.num_unet_calls - calls_before
        atomic_write_bytes(path, safetensors_bytes(tensors, {"prompts": "\n".join(self.prompts()),
                                                             "unet_calls": str(calls)}))
        return {"epsilon": float(eps_t.max()), "unet_calls": calls}

    def generate(self, cycle: int) -> int:
        """Line 9: B_GAL images from the optimised embeddings, pseudo-labelled by their class, to disk."""
        folder = synthetic.cycle_folder(self.dir, cycle)
        for tmp in folder.rglob(".*.tmp") if folder.exists() else []:
            tmp.unlink()  # a write that a crash cut short; never listed, so never used
        entries = synthetic.read_manifest(folder)
        n_total = self.gal_budget(cycle)
        if len(entries) >= n_total:
            return len(entries)
        t2i, tc = self.t2i, self.cfg.t2i
        emb = load_file(str(self.cycle_dir(cycle) / "embeddings.safetensors"))
        s, eps = emb["s"], emb["epsilon"]
        classes = self.dataset.class_names
        per_class = [n_total // len(classes) + (1 if c < n_total % len(classes) else 0) for c in range(len(classes))]
        done = {e.file for e in entries}
        todo = [(c, i) for c in range(len(classes)) for i in range(per_class[c])
                if f"{synthetic.safe_dirname(c, classes[c])}/{i:06d}.png" not in done]
        sched = f"{type(t2i.scheduler).__name__}({t2i.scheduler.config.get('timestep_spacing', '')})"
        emb_hash = [synthetic.tensor_sha256(s[c]) for c in range(len(classes))]
        prompts = self.prompts()
        calls_path = self.cycle_dir(cycle) / "generate_unet_calls.json"
        calls = read_json(calls_path)["unet_calls"] if calls_path.exists() else 0
        size = min(tc.batch_size, self._generate_batch or tc.batch_size)
        queue = [todo[i:i + size] for i in range(0, len(todo), size)]
        bar = tqdm(total=len(todo), desc=f"generate cycle {cycle}", unit="img", leave=False)
        while queue:
            batch = queue.pop(0)
            calls_before = t2i.num_unet_calls
            seeds = [cycle_seed(self.cfg.experiment.seed, cycle, 5, c, i) for c, i in batch]
            noise = torch.cat([t2i.initial_noise(1, torch.Generator(t2i.device).manual_seed(sd)) for sd in seeds])
            try:
                simulated_oom(len(batch))
                with torch.no_grad():
                    images = t2i.generate(s[[c for c, _ in batch]], num_inference_steps=tc.steps,
                                          guidance_scale=tc.guidance_scale, latents=noise)
            except torch.cuda.OutOfMemoryError:
                # Per-image seeds make the images independent of the batch they are made in.
                size = self._halve_batch("generation", len(batch))
                rest = batch + [item for b in queue for item in b]
                queue = [rest[i:i + size] for i in range(0, len(rest), size)]
                continue
            new = [synthetic.ManifestEntry(
                file=f"{synthetic.safe_dirname(c, classes[c])}/{i:06d}.png", sha256="", label=c,
                class_name=classes[c], prompt=prompts[c], cycle=cycle, epsilon=float(eps[c]),
                embedding_sha256=emb_hash[c], seed=sd, model_id=t2i.model_id, revision=t2i.revision,
                scheduler=sched, steps=tc.steps, guidance_scale=tc.guidance_scale) for (c, i), sd in zip(batch, seeds)]
            pngs = [synthetic.png_bytes(img) for img in to_uint8(images.cpu())]
            for k, (entry, data) in enumerate(zip(new, pngs)):
                atomic_write_bytes(folder / entry.file, data)
                if k == len(new) // 2:
                    failpoint("generate.mid_batch")  # some PNGs on disk, the manifest not yet updated
            entries += [synthetic.ManifestEntry(**{**e.__dict__, "sha256": hashlib.sha256(d).hexdigest()})
                        for e, d in zip(new, pngs)]
            entries.sort(key=lambda e: e.file)
            synthetic.write_manifest(folder, entries)
            calls += t2i.num_unet_calls - calls_before
            atomic_write_json(calls_path, {"unet_calls": calls})
            bar.update(len(batch))
            failpoint("generate.after_batch")
        bar.close()
        return len(entries)

    def unet_calls(self, cycle: int) -> dict[str, int]:
        """UNet forward passes the cycle spent, by step (a CFG pair counts once), across resumes."""
        out = {}
        emb = self.cycle_dir(cycle) / "embeddings.safetensors"
        if emb.exists():
            out["textopt"] = int(safetensors_metadata(emb).get("unet_calls", 0))
        gen = self.cycle_dir(cycle) / "generate_unet_calls.json"
        if gen.exists():
            out["generate"] = int(read_json(gen)["unet_calls"])
        return out

    @cached_property
    def judge(self) -> Classifier | None:
        path = self.cfg.experiment.judge
        return load_classifier(path)[0] if path and Path(path).exists() else None

    def judged_accuracy(self, cycle: int) -> float | None:
        """Share of the cycle's generated images the judge puts in their prompted class (paper §4.4)."""
        folder = synthetic.cycle_folder(self.dir, cycle)
        if self.judge is None or not self.uses_generation or not synthetic.read_manifest(folder):
            return None
        d = self.dataset
        images, labels = synthetic.load_synthetic([folder], d.image_size, d.channels)
        return judged_accuracy(self.judge, images, labels, d)

    def sample_grid(self, cycle: int, per_class: int = 8) -> Path | None:
        """A PNG of what the cycle added: generated images (a row per class), else the real batch bought."""
        path = self.cycle_dir(cycle) / "grid.png"
        if path.exists():
            return path
        d = self.dataset
        entries = synthetic.read_manifest(synthetic.cycle_folder(self.dir, cycle)) if self.uses_generation else []
        if entries:
            rows = [[e for e in entries if e.label == c][:per_class] for c in range(d.num_classes)]
            picked = [e for row in rows for e in row]
            folder = synthetic.cycle_folder(self.dir, cycle)
            images, _ = synthetic.load_synthetic_entries(folder, picked, d.image_size, d.channels)
            nrow = max(len(r) for r in rows)
            if any(len(r) != nrow for r in rows):
                nrow = min(len(picked), 16)
        else:
            state = self.pool_state()
            idx = [i for i, c in zip(state.labelled, state.cycles) if c == cycle]
            if not idx:
                return None
            images, nrow = d.pool.images[torch.tensor(idx)], min(len(idx), 16)
        synthetic.save_grid(images, nrow, path)
        return path

    def export(self, cycle: int) -> Path:
        """Pack the data the cycle's classifier trained on for DVC and other architectures (galot_core.export)."""
        return export.export_dataset(self.dir, self.dataset, list(range(1, cycle + 1)), self.cfg.gal.accumulate,
                                     self.cfg.to_dict()["data"])

    def _halve_batch(self, what: str, current: int) -> int:
        """Out of accelerator memory: continue with half the batch (and remember it), down to one image."""
        if current <= 1:
            raise GalotError(f"t2i.batch_size: out of GPU memory during {what} even with one image; use "
                             "t2i.dtype: fp16, fewer gal.samples, or a larger GPU")
        half = current // 2
        log.warning("out of GPU memory during %s with a batch of %d; continuing with %d", what, current, half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if what == "generation":
            self._generate_batch = half
        else:
            self._textopt_batch = half
        return half

    def effective_epsilon(self, cycle: int) -> float:
        """The ε TextOpt actually used (0 when there was no classifier yet to optimise against)."""
        path = self.cycle_dir(cycle) / "embeddings.safetensors"
        return float(load_file(str(path))["epsilon"].max()) if path.exists() else 0.0

    def synthetic_folders(self, cycle: int) -> list[Path]:
        if not self.uses_generation:
            return []
        cycles = range(1, cycle + 1) if self.cfg.gal.accumulate else [cycle]
        return [synthetic.cycle_folder(self.dir, c) for c in cycles]

    def training_set(self, cycle: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real labelled images ∪ the cycle's generated images (Algorithm 1, line 10)."""
        state = self.pool_state()
        idx = state.labelled_tensor()
        d = self.dataset
        gen_x, gen_y = synthetic.load_synthetic(self.synthetic_folders(cycle), d.image_size, d.channels)
        return torch.cat([d.pool.images[idx], gen_x]), torch.cat([state.labels_tensor(), gen_y])

    def train(self, cycle: int) -> dict[str, float]:
        """Line 10: train a fresh classifier on everything labelled (and generated) so far."""
        path = self.cycle_dir(cycle) / "model.safetensors"
        info_path = self.cycle_dir(cycle) / "train.json"
        if path.exists() and info_path.exists():
            return read_json(info_path)
        images, labels = self.training_set(cycle)
        if len(labels) == 0:
            raise GalotError(f"cycle {cycle}: nothing to train on — no labelled or generated images (every image "
                             "so far was answered skip?); raise al.budget_per_cycle or label more images")
        cfg, d = self.cfg, self.dataset
        seed = cycle_seed(cfg.experiment.seed, cycle, 2)
        torch.manual_seed(seed)
        model = build_model(cfg.model.arch, d.channels, d.num_classes, cfg.model.dropout)
        head = LossPredictionHead(model.feature_dim) if cfg.al.strategy == "LossPrediction" else None
        result = fit(model, images, labels, self.preprocess, cfg.train, natural=d.natural, seed=seed,
                     loss_head=head, progress=True)
        save_classifier(model, path, arch=cfg.model.arch, in_channels=d.channels, loss_head=head)
        info = {"train_images": len(images), "steps": result.steps, "epochs": result.epochs,
                "final_loss": result.final_loss, "seconds": result.seconds}
        atomic_write_json(info_path, info)
        return info

    def evaluate(self, cycle: int, seconds: dict[str, float]) -> CycleMetrics:
        """Test accuracy of the cycle's classifier; writing the metrics marks the cycle complete."""
        model, _ = self.load_model(cycle)  # type: ignore[misc]
        test = self.dataset.test
        acc = accuracy(model, test.images, test.labels, self.preprocess, device=self.device,
                       batch_size=self.cfg.train.eval_batch_size) if len(test) else None
        generated = sum(len(synthetic.read_manifest(f)) for f in self.synthetic_folders(cycle))
        failpoint("evaluate.before_metrics")
        files = {name: hashlib.sha256((self.cycle_dir(cycle) / name).read_bytes()).hexdigest()
                 for name in ("model.safetensors", "embeddings.safetensors") if (self.cycle_dir(cycle) / name).exists()}
        metrics = CycleMetrics(cycle=cycle, labelled=len(self.pool_state().labelled), generated=generated,
                               epsilon=self.effective_epsilon(cycle), test_accuracy=acc, seconds=seconds,
                               judged_accuracy=self.judged_accuracy(cycle), unet_calls=self.unet_calls(cycle),
                               files=files)
        atomic_write_json(self.cycle_dir(cycle) / "metrics.json", metrics.to_dict())
        self.write_summary()
        return metrics

    def write_summary(self) -> None:
        """Run-level files: all metrics (JSON), accuracy by cycle (CSV, a DVC plot), a summary
        (DVC metrics) and a copy of the newest classifier — the experiment's deliverables."""
        rows = self.all_metrics()
        atomic_write_json(self.dir / "metrics.json", rows)
        b = self.cfg.al.budget_per_cycle
        lines = [",".join(CSV_COLUMNS)] + [",".join("" if v is None else str(v) for v in
                                                    ({**r, "budget": r["cycle"] * b}.get(k) for k in CSV_COLUMNS))
                                           for r in rows]
        atomic_write_text(self.dir / "accuracy.csv", "\n".join(lines) + "\n")
        if not rows:
            return
        accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
        atomic_write_json(self.dir / "summary.json", {
            "cycles": len(rows), "labelled": rows[-1]["labelled"], "generated": rows[-1]["generated"],
            "final_test_accuracy": rows[-1]["test_accuracy"],
            "mean_test_accuracy": sum(accs) / len(accs) if accs else None})
        atomic_write_bytes(self.dir / "classifier.safetensors",
                           (self.cycle_dir(len(rows)) / "model.safetensors").read_bytes())

    def all_metrics(self) -> list[dict[str, Any]]:
        return [read_json(self.cycle_dir(c) / "metrics.json") for c in range(1, self.completed_cycles() + 1)]

    # ----- driving ----------------------------------------------------------------------
    def run_cycle(self, cycle: int | None = None) -> CycleMetrics:
        """Advance the experiment by one cycle (the next incomplete one by default)."""
        self.start()
        cycle = cycle or self.completed_cycles() + 1
        if cycle > self.cfg.experiment.cycles:
            raise GalotError(f"experiment.cycles: all {self.cfg.experiment.cycles} cycles of "
                             f"'{self.cfg.experiment.name}' are complete; raise experiment.cycles to go on")
        seconds: dict[str, float] = {}
        steps = [("select", self.select)]
        if self.human_oracle:
            steps += [("labels", self.receive_labels)]
        if self.uses_generation:
            steps += [("textopt", self.optimize_embeddings), ("generate", self.generate)]
        steps += [("train", self.train), ("export", self.export)]
        for name, step in steps:
            t = time.perf_counter()
            step(cycle)
            seconds[name] = round(time.perf_counter() - t, 3)
        return self.evaluate(cycle, seconds)

    def run(self) -> list[dict[str, Any]]:
        self.start()
        while self.completed_cycles() < self.cfg.experiment.cycles:
            self.run_cycle()
        return self.all_metrics()


def replace_if_changed(cfg: Config) -> Path | None:
    """Move aside a run folder started with incompatible parameters, so ``cfg`` starts afresh.

    For pipelines (``dvc repro``, ``dvc exp run -S``) where a changed parameter means a new
    result, not a mistake. Nothing is deleted: the old folder goes to
    ``<runs_dir>/.replaced/<name>-<UTC time>``; its labels may have cost money.
    """
    path = cfg.run_dir / "config.json"
    if not path.exists():
        return None
    try:
        _check_same_experiment(config_from_dict(read_json(path), source=str(path)), cfg, cfg.run_dir)
        return None
    except GalotError:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = Path(cfg.experiment.runs_dir) / ".replaced" / f"{cfg.experiment.name}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        cfg.run_dir.rename(dest)
        return dest


def baselines_dir(cfg: Config) -> Path:
    """Where an experiment's AL baselines live: ``<runs_dir>/<name>-baselines/<strategy>/``."""
    return Path(cfg.experiment.runs_dir) / f"{cfg.experiment.name}-baselines"


def baseline_config(cfg: Config, strategy: str) -> Config:
    """The AL-only run that GALOT is compared with: same data, budgets, model and training."""
    d = cfg.to_dict()
    d["experiment"].update(runs_dir=str(baselines_dir(cfg)), name=strategy, mode="al")
    d["al"]["strategy"] = strategy
    return config_from_dict(d)


def _check_same_experiment(old: Config, new: Config, run_dir: Path) -> None:
    a, b = old.to_dict(), new.to_dict()
    # Generation parameters cannot have influenced an experiment that never generates.
    ignored = set(_UNRELATED_SECTIONS)
    if old.experiment.mode == new.experiment.mode == "al":
        ignored |= {"gal", "t2i"}
    for section in a.keys() - ignored:
        for key in a[section]:
            if (section, key) not in _MUTABLE_KEYS and a[section][key] != b[section][key]:
                raise GalotError(
                    f"{section}.{key}: experiment '{new.experiment.name}' in {run_dir} was started with "
                    f"{a[section][key]!r}, now {b[section][key]!r}; use a new experiment.name or delete the run folder"
                )
