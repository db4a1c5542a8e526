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
import threading
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
_UNRELATED_SECTIONS = {"pretrain", "transfer", "baselines", "tracking", "runner"}


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
        self.t2i_lock = threading.Lock()

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
                                            scheduler=self.cfg.t2i.scheduler,
                                            local_files_only=not self.cfg.t2i.allow_download,
                                            revision=self.cfg.t2i.revision or None,
                                            variant=self.cfg.t2i.variant or None,
                                            text_encoder_dtype=self.cfg.t2i.text_encoder_dtype,
                                            resolution=self.cfg.t2i.resolution,
                                            gradient_checkpointing=self.cfg.t2i.gradient_checkpointing)

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

    def alpha(self, eps: torch.Tensor, s_star: torch.Tensor) -> torch.Tensor:
        """PGD step size per class: α = alpha_ratio·ε (the paper's Table 8), per coordinate or per ball.

        With ``gal.step_scale: paper`` a sign step moves every one of the D coordinates by α, an
        L2 step of α·√D ≫ ε, so each step leaves the ball and the projection throws it back
        onto the sphere (issue 15). ``ball`` divides a sign step by √D so that its L2 length is
        alpha_ratio·ε, as the ``l2`` step's already is.
        """
        g = self.cfg.gal
        scale = 1.0 / s_star[0].numel() ** 0.5 if g.step_scale == "ball" and g.step_rule == "sign" else 1.0
        return g.alpha_ratio * eps * scale

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

    # TextOpt is split into groups of classes (runner.textopt_classes_per_task), so it can fan
    # out like generation. Eq. 2 is a separate problem per class, and every group draws the
    # noise of the whole batch and keeps its own rows, so the grouping changes nothing but
    # where the work runs. One group (the default) is one batched call per PGD step.
    def textopt_groups(self) -> list[list[int]]:
        n = len(self.dataset.class_names)
        per = self.cfg.runner.textopt_classes_per_task or n
        return [list(range(a, min(a + per, n))) for a in range(0, n, per)]

    def _group_path(self, cycle: int, group: int) -> Path:
        return self.cycle_dir(cycle) / f".textopt-{group:03d}.safetensors"

    def optimize_group(self, cycle: int, group: int) -> None:
        """Lines 6–8 for one group of classes: s* = h_τ(y), then TextOpt (PGD on Eq. 2) against the last classifier."""
        path = self._group_path(cycle, group)
        if path.exists() or (self.cycle_dir(cycle) / "embeddings.safetensors").exists():
            return
        rows = self.textopt_groups()[group]
        g = self.cfg.gal
        with self.t2i_lock:  # also the first load: tasks in threads must not load the model twice
            t2i = self.t2i
            s_star = t2i.encode(self.prompts()).float()
        eps = textopt.resolve_epsilon(self.epsilon(cycle), s_star, g.epsilon_relative)
        eps_t = torch.as_tensor(eps, dtype=torch.float32).expand(len(s_star)).clone()
        previous = self.load_model(cycle - 1)
        calls = 0
        if previous is None or float(eps_t.max()) == 0.0 or g.steps == 0:
            s = s_star[rows].clone()  # nothing to optimise against yet, or ε = 0 (GALOT basic)
            eps_t = torch.zeros_like(eps_t)
        elif g.strategy == "RandomSampling":
            walk = textopt.random_direction_grad(torch.Generator().manual_seed(
                cycle_seed(self.cfg.experiment.seed, cycle, 4)))
            full = torch.empty(s_star.shape)
            s = textopt.optimize(s_star[rows], lambda _: walk(full)[rows], eps_t[rows], self.alpha(eps_t[rows], s_star),
                                 g.steps, step=g.step_rule, momentum=g.momentum)
        else:
            model = previous[0].to(t2i.device).eval().requires_grad_(False)
            preprocess = self.preprocess.to(t2i.device)
            step_seeds = iter(range(g.steps))

            def objective(images: torch.Tensor) -> torch.Tensor:
                return acquisition.objective(g.strategy, model(preprocess(images)))

            def grad_fn(s: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                # Fresh noise per PGD step estimates Eq. 5's expectation; common noise optimises
                # a fixed sample average, which has less variance between steps.
                step = 0 if g.common_noise else next(step_seeds)
                while True:
                    gen = torch.Generator(t2i.device).manual_seed(cycle_seed(self.cfg.experiment.seed, cycle, 3, step))
                    batch = min(self.cfg.t2i.batch_size, self._textopt_batch or self.cfg.t2i.batch_size)
                    with self.t2i_lock:
                        calls_before = t2i.num_unet_calls
                        noise = t2i.initial_noise(len(s_star) * g.samples, gen)  # every class's, as one draw
                        noise = noise.view(len(s_star), g.samples, *noise.shape[1:])[rows].flatten(0, 1)
                        try:
                            simulated_oom(min(batch, g.samples * len(s)))
                            grad = t2i.acquisition_grad(s, objective, k=g.samples, generator=gen, noise=noise,
                                                        num_inference_steps=self.cfg.t2i.steps,
                                                        guidance_scale=self.cfg.t2i.guidance_scale,
                                                        estimator=g.estimator, batch_size=batch)[0]
                        except torch.cuda.OutOfMemoryError:
                            self._halve_batch("TextOpt", min(batch, g.samples * len(s)))
                            continue
                        finally:
                            calls += t2i.num_unet_calls - calls_before
                    return grad

            s = textopt.optimize(s_star[rows], grad_fn, eps_t[rows], self.alpha(eps_t[rows], s_star), g.steps,
                                 step=g.step_rule, momentum=g.momentum)
        tensors = {"s": s.float().cpu().contiguous(), "epsilon": eps_t[rows].cpu().contiguous()}
        atomic_write_bytes(path, safetensors_bytes(tensors, {"unet_calls": str(calls)}))

    def merge_embeddings(self, cycle: int) -> dict[str, float]:
        """Stack the groups' optimised embeddings into embeddings.safetensors (s*, s, ε per class)."""
        path = self.cycle_dir(cycle) / "embeddings.safetensors"
        if not path.exists():
            groups = [self._group_path(cycle, k) for k in range(len(self.textopt_groups()))]
            missing = [p.name for p in groups if not p.exists()]
            if missing:
                raise GalotError(f"cycle {cycle}: TextOpt groups {', '.join(missing)} are not done; run the cycle again")
            parts = [load_file(str(p)) for p in groups]
            with self.t2i_lock:
                s_star = self.t2i.encode(self.prompts()).float()
            tensors = {"s_star": s_star.cpu().contiguous(), "s": torch.cat([p["s"] for p in parts]).contiguous(),
                       "epsilon": torch.cat([p["epsilon"] for p in parts]).contiguous()}
            calls = sum(int(safetensors_metadata(p).get("unet_calls", 0)) for p in groups)
            atomic_write_bytes(path, safetensors_bytes(tensors, {"prompts": "\n".join(self.prompts()),
                                                                 "unet_calls": str(calls)}))
            for p in groups:
                p.unlink()
        emb = load_file(str(path))
        return {"epsilon": float(emb["epsilon"].max()), "unet_calls": int(safetensors_metadata(path)["unet_calls"])}

    def optimize_embeddings(self, cycle: int) -> dict[str, float]:
        """Lines 6–8: s* = h_τ(y) per class, then TextOpt (PGD on Eq. 2) against the last classifier."""
        if not (self.cycle_dir(cycle) / "embeddings.safetensors").exists():
            for group in range(len(self.textopt_groups())):
                self.optimize_group(cycle, group)
        return self.merge_embeddings(cycle)

    # Generation is split into shards, fixed lists of (class, index) images, so it can fan out
    # over processes or machines (tasks/, flows/). Every image has its own seed, so a shard's
    # images do not depend on which worker makes them or what else it makes; each shard keeps
    # its progress in a part file and :meth:`merge_generated` folds the parts into the manifest.
    def per_class_budget(self, cycle: int) -> list[int]:
        """B_GAL split evenly over the classes (the first classes get the remainder)."""
        n_total, n_classes = self.gal_budget(cycle), len(self.dataset.class_names)
        return [n_total // n_classes + (1 if c < n_total % n_classes else 0) for c in range(n_classes)]

    def generation_items(self, cycle: int) -> list[tuple[int, int]]:
        """Every image the cycle generates as (class, index): B_GAL, or m·B_GAL candidates (gal.candidates)."""
        m = self.cfg.gal.candidates
        return [(c, i) for c, n in enumerate(self.per_class_budget(cycle)) for i in range(m * n)]

    def generation_shards(self, cycle: int) -> list[int]:
        """Shard ids of the cycle; shard k holds items ``[k·S, (k+1)·S)`` with S = runner.shard_size."""
        size = self.cfg.runner.shard_size
        return list(range((len(self.generation_items(cycle)) + size - 1) // size))

    def _part_path(self, cycle: int, shard: int) -> Path:
        return synthetic.cycle_folder(self.dir, cycle) / f".part-{shard:05d}.json"

    def generate_shard(self, cycle: int, shard: int) -> int:
        """Line 9 for one shard: its images from the optimised embeddings, pseudo-labelled by class, to disk."""
        folder = synthetic.cycle_folder(self.dir, cycle)
        size = self.cfg.runner.shard_size
        items = self.generation_items(cycle)[shard * size:(shard + 1) * size]
        classes = self.dataset.class_names
        name = {(c, i): f"{synthetic.safe_dirname(c, classes[c])}/{i:06d}.png" for c, i in items}
        for c, i in items:  # a write that a crash cut short; never listed, so never used
            for tmp in (folder / name[c, i]).parent.glob(f".{i:06d}.png.*.tmp"):
                tmp.unlink()
        if self._selection_path(cycle).exists():
            return 0  # candidates were generated and selected: the rejected ones are not to be made again
        part_path = self._part_path(cycle, shard)
        part = read_json(part_path) if part_path.exists() else {"entries": [], "unet_calls": 0}
        done = {e.file for e in synthetic.read_manifest(folder)} | {e["file"] for e in part["entries"]}
        todo = [item for item in items if name[item] not in done]
        if not todo:
            return 0
        tc = self.cfg.t2i
        with self.t2i_lock:
            t2i = self.t2i
        emb = load_file(str(self.cycle_dir(cycle) / "embeddings.safetensors"))
        s, eps = emb["s"], emb["epsilon"]
        sched = f"{type(t2i.scheduler).__name__}({t2i.scheduler.config.get('timestep_spacing', '')})"
        prompts = self.prompts()
        size = min(tc.batch_size, self._generate_batch or tc.batch_size)
        queue = [todo[i:i + size] for i in range(0, len(todo), size)]
        bar = tqdm(total=len(todo), desc=f"generate cycle {cycle}", unit="img", leave=False)
        anchors = self.anchors(cycle)
        while queue:
            batch = queue.pop(0)
            seeds = [cycle_seed(self.cfg.experiment.seed, cycle, 5, c, i) for c, i in batch]
            cond = self.conditioning(cycle, batch, s)
            with self.t2i_lock:  # one model per process: concurrent tasks take turns on it
                calls_before = t2i.num_unet_calls
                noise = torch.cat([t2i.initial_noise(1, torch.Generator(t2i.device).manual_seed(sd)) for sd in seeds])
                try:
                    simulated_oom(len(batch))
                    images = self._generate_images(t2i, cond, noise, [anchors.get(item) for item in batch])
                except torch.cuda.OutOfMemoryError:
                    # Per-image seeds make the images independent of the batch they are made in.
                    size = self._halve_batch("generation", len(batch))
                    rest = batch + [item for b in queue for item in b]
                    queue = [rest[i:i + size] for i in range(0, len(rest), size)]
                    continue
                calls = t2i.num_unet_calls - calls_before
            pngs = [synthetic.png_bytes(img) for img in to_uint8(images.cpu())]
            for k, ((c, i), data) in enumerate(zip(batch, pngs)):
                atomic_write_bytes(folder / name[c, i], data)
                if k == len(batch) // 2:
                    failpoint("generate.mid_batch")  # some PNGs on disk, the part file not yet updated
            part["entries"] += [synthetic.entry_dict(synthetic.ManifestEntry(
                file=name[c, i], sha256=hashlib.sha256(data).hexdigest(), label=c, class_name=classes[c],
                prompt=prompts[c], cycle=cycle, epsilon=float(eps[c]), embedding_sha256=synthetic.tensor_sha256(e),
                seed=sd, model_id=t2i.model_id, revision=t2i.revision, variant=t2i.variant, scheduler=sched,
                steps=tc.steps, guidance_scale=tc.guidance_scale, source=self._source(anchors.get((c, i)))))
                for (c, i), sd, data, e in zip(batch, seeds, pngs, cond)]
            part["unet_calls"] += calls
            atomic_write_json(part_path, part)
            bar.update(len(batch))
            failpoint("generate.after_batch")
        bar.close()
        return len(todo)

    def conditioning(self, cycle: int, items: list[tuple[int, int]], s: torch.Tensor) -> torch.Tensor:
        """Each image's text embedding: its class's (optimised) row of ``s``, plus, with
        ``gal.diversity > 0``, its own random offset of length diversity·‖s_c‖ (seeded per image).

        One embedding per class makes a class's images alike; random offsets keep the judged
        class up to 1.6·‖s*‖ on the embedded worlds (docs/results.md), so they buy variety for free.
        """
        cond = s[[c for c, _ in items]].clone()
        r = self.cfg.gal.diversity
        if r > 0:
            for k, (c, i) in enumerate(items):
                u = torch.randn(s[c].shape, generator=torch.Generator().manual_seed(
                    cycle_seed(self.cfg.experiment.seed, cycle, 6, c, i)))
                cond[k] += r * s[c].norm() * u / u.norm()
        return cond

    def anchors(self, cycle: int) -> dict[tuple[int, int], int]:
        """Image-to-image anchors (``gal.anchor_strength > 0``): item (c, i) → a labelled pool index of class c.

        The real images σ_AL picked and the oracle labelled, cycled through in pool order: the
        generated images then vary the informative real ones instead of drawing the prompt's
        most typical picture (ActGen, ECCV 2024; DA-Fusion, ICLR 2024). A class without a
        labelled image yet is generated from noise.
        """
        if self.cfg.gal.anchor_strength <= 0 or self.cfg.experiment.mode == "gal":
            return {}
        state = self.pool_state()
        by_class: dict[int, list[int]] = {}
        for idx, label in sorted(zip(state.labelled, state.labels)):
            by_class.setdefault(label, []).append(idx)
        return {(c, i): by_class[c][i % len(by_class[c])] for c, i in self.generation_items(cycle) if c in by_class}

    def _source(self, anchor: int | None) -> str | None:
        return None if anchor is None else f"pool[{anchor}] strength {self.cfg.gal.anchor_strength}"

    def _generate_images(self, t2i, cond: torch.Tensor, noise: torch.Tensor, anchors: list[int | None]) -> torch.Tensor:
        """Text-to-image for items without an anchor, image-to-image from their anchor for the others."""
        tc, out = self.cfg.t2i, None
        groups = [[k for k, a in enumerate(anchors) if a is None], [k for k, a in enumerate(anchors) if a is not None]]
        with torch.no_grad():
            for rows, anchored in zip(groups, (False, True)):
                if not rows:
                    continue
                image = (self.dataset.pool.images[[anchors[k] for k in rows]].float() / 255) if anchored else None
                images = t2i.generate(cond[rows], num_inference_steps=tc.steps, guidance_scale=tc.guidance_scale,
                                      latents=noise[rows], image=image, strength=self.cfg.gal.anchor_strength)
                if out is None:
                    out = images.new_empty((len(anchors), *images.shape[1:]))
                out[rows] = images
        return out

    def merge_generated(self, cycle: int) -> int:
        """Fold the shards' part files into manifest.jsonl (sorted by file) and the UNet-call count."""
        folder = synthetic.cycle_folder(self.dir, cycle)
        for tmp in folder.rglob(".*.tmp") if folder.exists() else []:
            tmp.unlink()  # every shard is done: these are writes a crash cut short
        parts = sorted(folder.glob(".part-*.json")) if folder.exists() else []
        entries = synthetic.read_manifest(folder)
        if not parts:
            return self.select_generated(cycle) if entries else 0
        calls_path = self.cycle_dir(cycle) / "generate_unet_calls.json"
        calls = read_json(calls_path)["unet_calls"] if calls_path.exists() else 0
        known = {e.file for e in entries}
        # A part whose images are all in the manifest was merged by a run that died before
        # deleting it: its calls are already counted.
        loaded = [part for part in map(read_json, parts) if any(e["file"] not in known for e in part["entries"])]
        entries += [synthetic.ManifestEntry(**e) for part in loaded for e in part["entries"] if e["file"] not in known]
        entries.sort(key=lambda e: e.file)
        synthetic.write_manifest(folder, entries)
        atomic_write_json(calls_path, {"unet_calls": calls + sum(part["unet_calls"] for part in loaded)})
        for p in parts:  # only now: a crash before this line merges the same parts again
            p.unlink()
        return self.select_generated(cycle)

    def _selection_path(self, cycle: int) -> Path:
        return self.cycle_dir(cycle) / "selection.json"

    def select_generated(self, cycle: int) -> int:
        """Keep B_GAL of the cycle's candidates: those the label check confirms (``gal.label_check``),
        the ones the last classifier is least sure of first (``gal.candidates`` > 1).

        Over-generating and selecting by the exact σ_GAL of the final images needs no gradient
        estimate at all; the label check keeps the selection from buying uncertainty with
        wrong pseudo-labels. The decision is written first (selection.json), then the manifest
        lists only the kept images and the rejected ones move to ``cycles/cycle_NNN/rejected/``,
        so a crash anywhere resumes to the same result. Returns the number kept.
        """
        g, folder, path = self.cfg.gal, synthetic.cycle_folder(self.dir, cycle), self._selection_path(cycle)
        entries = synthetic.read_manifest(folder)
        if not path.exists():
            if g.candidates == 1 and g.label_check == "none":
                return len(entries)
            atomic_write_json(path, self._choose_generated(cycle, entries))
        decision = read_json(path)
        kept = set(decision["kept"])
        if any(e.file not in kept for e in entries):
            synthetic.write_manifest(folder, [e for e in entries if e.file in kept])
        for file in decision["rejected"]:
            if (folder / file).exists():
                (self.cycle_dir(cycle) / "rejected" / file).parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder / file, self.cycle_dir(cycle) / "rejected" / file)
        return len(kept)

    def _choose_generated(self, cycle: int, entries: list[synthetic.ManifestEntry]) -> dict[str, Any]:
        from galot_core.t2i.zero_shot import diffusion_classify
        from galot_core.train import predict

        g, d = self.cfg.gal, self.dataset
        folder = synthetic.cycle_folder(self.dir, cycle)
        labels_ = torch.tensor([e.label for e in entries], dtype=torch.int64)
        confirmed = torch.ones(len(entries), dtype=torch.bool)
        zero_shot: list[int] | None = None
        calls = 0
        raw = torch.stack([synthetic.decode_png(folder / e.file) for e in entries])  # decoded once, two uses
        if g.label_check == "diffusion":
            with self.t2i_lock:
                t2i = self.t2i
                calls_before = t2i.num_unet_calls
                gen = torch.Generator(t2i.device).manual_seed(cycle_seed(self.cfg.experiment.seed, cycle, 7))
                zero_shot = diffusion_classify(t2i, raw.float() / 255, t2i.encode(self.prompts()),
                                               generator=gen).cpu().tolist()
                calls = t2i.num_unet_calls - calls_before
            confirmed = torch.tensor(zero_shot) == labels_
        score = torch.zeros(len(entries))
        previous = self.load_model(cycle - 1)
        if previous is not None and g.candidates > 1:
            images = torch.cat([synthetic.resize_uint8(x.unsqueeze(0), d.image_size, d.channels) for x in raw])
            logits = predict(previous[0], images, self.preprocess, device=self.device,
                             batch_size=self.cfg.train.eval_batch_size)["logits"]
            score = (torch.rand(len(entries), generator=torch.Generator().manual_seed(
                cycle_seed(self.cfg.experiment.seed, cycle, 8))) if g.strategy == "RandomSampling"
                else acquisition.objective(g.strategy, logits))
        kept: list[str] = []
        for c, n in enumerate(self.per_class_budget(cycle)):
            rows = [k for k in range(len(entries)) if labels_[k] == c and confirmed[k]]
            rows.sort(key=lambda k: (-float(score[k]), entries[k].file))
            kept += [entries[k].file for k in rows[:n]]
        kept_set = set(kept)
        return {"kept": sorted(kept), "rejected": [e.file for e in entries if e.file not in kept_set],
                "candidates": len(entries), "label_check": g.label_check, "confirmed": int(confirmed.sum()),
                "unet_calls": calls,
                "zero_shot_class": zero_shot, "score": [round(float(v), 6) for v in score],
                "files": [e.file for e in entries]}

    def generate(self, cycle: int) -> int:
        """Line 9: B_GAL images from the optimised embeddings, pseudo-labelled by their class, to disk."""
        if self._selection_path(cycle).exists():
            return self.select_generated(cycle)
        if len(synthetic.read_manifest(synthetic.cycle_folder(self.dir, cycle))) < len(self.generation_items(cycle)):
            for shard in self.generation_shards(cycle):
                self.generate_shard(cycle, shard)
        return self.merge_generated(cycle)

    def unet_calls(self, cycle: int) -> dict[str, int]:
        """UNet forward passes the cycle spent, by step (a CFG pair counts once), across resumes."""
        out = {}
        emb = self.cycle_dir(cycle) / "embeddings.safetensors"
        if emb.exists():
            out["textopt"] = int(safetensors_metadata(emb).get("unet_calls", 0))
        gen = self.cycle_dir(cycle) / "generate_unet_calls.json"
        if gen.exists():
            out["generate"] = int(read_json(gen)["unet_calls"])
        if self._selection_path(cycle).exists() and self.cfg.gal.label_check != "none":
            out["label_check"] = int(read_json(self._selection_path(cycle)).get("unet_calls", 0))
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
