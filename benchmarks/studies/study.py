"""The paper's experiments in the embedded world: every run, resumable, seeded, raw results kept.

    python -m benchmarks.studies.study                     # everything not yet done (hours on 2 cores)
    python -m benchmarks.studies.study --only table1 fig3  # some experiment groups
    python -m benchmarks.studies.study --jobs 2            # two runs at a time, one torch thread each
    python -m benchmarks.studies.study --list              # what exists and what is missing
    python -m benchmarks.studies.study --world fashion     # the Fashion world's study (protocol below)

Every run is the real tool: ``galot run`` / ``galot transfer`` in a subprocess, with the
project's params.yaml plus the overrides below, in ``benchmarks/runs/study/`` (ignored by
git). A run killed half-way resumes from its run folder the next time. When a run is
complete its per-cycle metrics are copied to ``benchmarks/results/study/<group>/<name>/
seed<k>.json`` — the committed raw results that the report is generated from.

The protocol, fixed before any result was looked at (the embedded default of params.yaml):
mnist5k (2,000-image pool, 1,000 test images), small_cnn trained from scratch every cycle
(40 epochs, at least 300 SGD steps), B_AL = 20 per cycle, N = 10 cycles, B_GAL = |L|,
GALOT with σ_AL = σ_GAL = margin, ε growing linearly to 0.2·‖s*‖, α = ε/5, n = 10, k = 6,
galot-mini at 10 steps, guidance 3. Seeds 0 and 1 for every cell. One protocol for every
method; ablations change exactly the key they name.

The Fashion world's protocol (``--world fashion``), fixed before any of its results was looked
at: worlds/fashion/params.yaml as it stands — fashion_mnist (5,000-image pool, the official
10,000 test images), small_cnn trained from scratch every cycle (40 epochs, at least 300 SGD
steps, crop + flip), B_AL = 20 per cycle, N = 10 cycles, B_GAL = |L|, GALOT with σ_AL = σ_GAL =
margin, ε growing linearly to 0.2·‖s*‖, α = ε/5, n = 10, k = 6, the world's own galot-mini at
4 DDIM steps (params.yaml's default), guidance 3. Cells: GALOT, GALOT basic (ε = 0), GAL only,
fully supervised (the whole pool) and the AL baselines RandomSampling, EntropySampling,
MarginSampling, BADGE and CoreSet; seeds 0, 1 and 2 for every cell. Its raw results go to
benchmarks/results/study_fashion/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT
RUNS = ROOT / "benchmarks" / "runs" / "study"
RESULTS = ROOT / "benchmarks" / "results" / "study"
SEEDS = (0, 1)
AL = ("RandomSampling", "EntropySampling", "MarginSampling", "LeastConfidence", "BALD", "BADGE", "MeanSTD",
      "VarRatio", "KMeans", "CoreSet", "LossPrediction")
TEMPLATES = ("a photo of a {label}", "{label}", "a realistic photo of a {label}", "a simple photo of a {label}",
             "a recent color photograph of a {label}")


def _al(strategy: str) -> list[str]:
    return ["experiment.mode=al", f"al.strategy={strategy}"]


# group -> name -> overrides of params.yaml. "galot" is the default experiment itself.
EXPERIMENTS: dict[str, dict[str, list[str]]] = {
    "table1": {"galot": [], "galot_basic": ["gal.epsilon=0.0"], **{f"al_{s}": _al(s) for s in AL}},
    "fig3": {"gal_only": ["experiment.mode=gal"],
             "fully_supervised": [*_al("RandomSampling"), "al.budget_per_cycle=2000", "experiment.cycles=1"]},
    "table4_epsilon": {f"eps_{e}": [f"gal.epsilon={e}"] for e in (0.1, 0.4)},
    "fig5_sigma_gal": {f"gal_{s}": [f"gal.strategy={s}"] for s in ("RandomSampling", "EntropySampling",
                                                                      "LeastConfidence")},
    "fig6_budget_gal": {f"bgal_{f}": [f"gal.budget_factor={f}"] for f in (0.5, 1.5)},
    "table5_equal_iterations": {"al_MarginSampling_2x_epochs": [*_al("MarginSampling"), "train.epochs=80"]},
    # The paper's Table 7 has one row per strategy used as both σ_AL and σ_GAL; margin × margin
    # is the default GALOT run.
    "table7_sigma_al_x_gal": {f"al_{a}_gal_{a}": [f"al.strategy={a}", f"gal.strategy={a}"]
                              for a in ("RandomSampling", "EntropySampling")},
    "step_rule": {"l2_step": ["gal.step_rule=l2"]},
    # Not in the paper: the UNet-call saving of docs/performance.md (DDIM at 4 instead of 10
    # steps keeps the judged pseudo-label accuracy) checked on GALOT's test accuracy.
    "perf_fewer_steps": {"galot_4_steps": ["t2i.steps=4"]},
    "table3_templates": {f"template_{i}": [f"gal.template='{t}'"] for i, t in enumerate(TEMPLATES)
                         if t != "a realistic photo of a {label}"},
    # Issue 15, added after every cell above, with the re-pretrained mnist5k galot-mini (UNet sha256
    # 6fd6208e697d; the cells above used an earlier one): GAL only (0 real labels) again with this
    # model, and with per-image embedding offsets (gal.diversity 0.4, label-safe on this world).
    "issue15_gal_only": {"gal_only": ["experiment.mode=gal"],
                         "gal_only_diverse": ["experiment.mode=gal", "gal.diversity=0.4"]},
    # Issue 15's full runs on mnist5k, seeds 0-2 (`--seeds 0 1 2`), added after the one-cycle probes
    # (gal_probe.py, validation split), where no arm beat basic: the probes' best arms by mean (dc,
    # paper, ball, diverse), each against GALOT basic re-run with the same galot-mini.
    "issue15_full": {"basic": ["gal.epsilon=0.0"], "paper": [], "ball": ["gal.step_scale=ball"],
                     "dc": ["gal.epsilon=0.0", "gal.label_check=diffusion"],
                     "diverse": ["gal.epsilon=0.0", "gal.diversity=0.4"]},
}
FASHION_AL = ("RandomSampling", "EntropySampling", "MarginSampling", "BADGE", "CoreSet")
FASHION_EXPERIMENTS: dict[str, dict[str, list[str]]] = {
    "table1": {"galot": [], "galot_basic": ["gal.epsilon=0.0"], **{f"al_{s}": _al(s) for s in FASHION_AL}},
    "fig3": {"gal_only": ["experiment.mode=gal"],
             "fully_supervised": [*_al("RandomSampling"), "al.budget_per_cycle=5000", "experiment.cycles=1"]},
    # Issue 15, added after the one-cycle probes (benchmarks/probes/gal_probe.py, validation split): the
    # best arm there, hard positives (4 candidates per image, keep the highest cross-entropy of the
    # prompted class), as a full run with GALOT basic's protocol.
    "issue15": {"hard_select4": ["gal.epsilon=0.0", "gal.candidates=4", "gal.select_by=intended_loss"]},
}


@dataclass(frozen=True)
class World:
    """One embedded world's study: where galot runs (its project folder), its cells and seeds."""

    name: str
    folder: Path              # galot's working directory: params.yaml and models/ are relative to it
    runs: Path
    results: Path
    seeds: tuple[int, ...]
    experiments: dict[str, dict[str, list[str]]]
    pinned: tuple[str, ...]   # overrides every run of the world gets (the protocol's)
    model: str                # the world's galot-mini, relative to folder


# t2i.steps=10 in mnist5k: the protocol's, fixed before the results; params.yaml has since moved
# to 4 steps (docs/performance.md), which the group perf_fewer_steps checks against it.
MNIST = World("mnist5k", ROOT, RUNS, RESULTS, SEEDS, EXPERIMENTS, ("t2i.steps=10",), "models/galot-mini")
FASHION = World("fashion", ROOT / "worlds" / "fashion", ROOT / "benchmarks" / "runs" / "study_fashion",
                ROOT / "benchmarks" / "results" / "study_fashion", (0, 1, 2), FASHION_EXPERIMENTS, (),
                "models/galot-mini")
WORLDS = {w.name: w for w in (MNIST, FASHION)}
TRANSFER_ARCHS = ("small_cnn", "vgg16", "densenet121", "mobilenet_v2")
# table2: the GALOT dataset and the AL-margin selections, each trained on other architectures.
TRANSFERS = {"galot": "galot", "al_MarginSampling": "al_MarginSampling"}


def run_name(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def result_path(group: str, name: str, seed: int, world: World = MNIST) -> Path:
    return world.results / group / name / f"seed{seed}.json"


def galot(args: list[str], slot: int, log: Path, world: World = MNIST) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               PREFECT_HOME=str(world.runs / f".prefect-home-{slot}"))  # one ephemeral server database per job slot
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        r = subprocess.run([str(Path(sys.executable).parent / "galot"), *args], cwd=world.folder, env=env, stdout=f,
                           stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"galot {' '.join(args)} failed (exit {r.returncode}); see {log}")


def common(name: str, seed: int, world: World = MNIST) -> list[str]:
    runs_dir = os.path.relpath(world.runs, world.folder)
    out = ["--set", f"experiment.runs_dir={runs_dir}", "--set", f"experiment.name={run_name(name, seed)}",
           "--set", f"experiment.seed={seed}", "--set", "tracking.mlflow=false"]
    for o in world.pinned:
        out += ["--set", o]
    return out


def unet_sha(model: Path) -> str | None:
    """A galot-mini folder's identity: the first 12 hex digits of its UNet weights' sha256 (None when
    absent). A re-pretrained galot-mini is not bit-identical, so results name the model that made them."""
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.exists() else None


def do_run(group: str, name: str, overrides: list[str], seed: int, slot: int, world: World = MNIST) -> str:
    out = result_path(group, name, seed, world)
    if out.exists():
        return f"{group}/{name} seed {seed}: done"
    t = time.perf_counter()
    args = ["run", *common(name, seed, world)]
    for o in overrides:
        args += ["--set", o]
    galot(args, slot, world.runs / "logs" / f"{run_name(name, seed)}.log", world)
    rows = json.loads((world.runs / run_name(name, seed) / "metrics.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"group": group, "name": name, "seed": seed, "overrides": overrides, "cycles": rows,
               "wall_seconds": round(time.perf_counter() - t, 1), "model": unet_sha(world.folder / world.model)}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    return f"{group}/{name} seed {seed}: {rows[-1]['test_accuracy']:.4f} after {len(rows)} cycles"


def do_transfer(name: str, arch: str, seed: int, slot: int) -> str:
    out = result_path("table2_transfer", f"{name}_{arch}", seed)
    if out.exists():
        return f"transfer {name}/{arch} seed {seed}: done"
    if not result_path("table1", name, seed).exists():
        return f"transfer {name}/{arch} seed {seed}: waiting for {name}"
    overrides = EXPERIMENTS["table1"][name]
    args = ["transfer", *common(name, seed), "--arch", arch]
    for o in overrides:
        args += ["--set", o]
    galot(args, slot, RUNS / "logs" / f"{run_name(name, seed)}-transfer-{arch}.log")
    metrics = json.loads((RUNS / run_name(name, seed) / "transfer" / arch / "metrics.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"group": "table2_transfer", "source": name, "arch": arch, "seed": seed,
                               **metrics}, indent=2) + "\n")
    return f"transfer {name}/{arch} seed {seed}: {metrics['test_accuracy']:.4f}"


def plan(groups: list[str], seeds: tuple[int, ...], world: World = MNIST) -> list[tuple]:
    """Seed-major, so a partial study already has every method at seed 0."""
    jobs = []
    for seed in seeds:
        for group in groups:
            if group == "table2_transfer":
                jobs += [("transfer", name, arch, seed) for name in TRANSFERS for arch in TRANSFER_ARCHS]
            elif group in world.experiments:
                jobs += [("run", group, name, ov, seed) for name, ov in world.experiments[group].items()]
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = [*EXPERIMENTS, "table2_transfer"]
    ap.add_argument("--world", choices=list(WORLDS), default="mnist5k")
    ap.add_argument("--only", nargs="+", choices=groups, default=None)
    ap.add_argument("--names", nargs="+", default=None, help="only these cells (e.g. al_BADGE galot)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each with one torch thread)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    world = WORLDS[args.world]
    only = args.only or [*world.experiments, *(["table2_transfer"] if world is MNIST else [])]
    jobs = plan(only, tuple(args.seeds or world.seeds), world)
    jobs = [j for j in jobs if args.names is None or j[2] in args.names]
    if args.list:
        for j in jobs:
            path = (result_path(j[1], j[2], j[4], world) if j[0] == "run"
                    else result_path("table2_transfer", f"{j[1]}_{j[2]}", j[3]))
            print(("done    " if path.exists() else "missing ") + " ".join(str(x) for x in j[1:] if not isinstance(x, list)))
        return
    generates = any(j[0] == "run" and "experiment.mode=al" not in j[3] for j in jobs)
    if generates and not (world.folder / world.model / "model_index.json").exists():
        raise SystemExit(f"{world.folder / world.model} is missing: run `galot pretrain-t2i` in {world.folder} "
                         "(or `dvc repro pretrain_t2i`) first")
    # Transfers need their source run: run them after everything else of the same seed.
    runs = [j for j in jobs if j[0] == "run"]
    transfers = [j for j in jobs if j[0] == "transfer"]
    start = time.perf_counter()
    slots: queue.Queue[int] = queue.Queue()
    for k in range(max(1, args.jobs)):
        slots.put(k)

    def work(job):
        slot = slots.get()  # each concurrent run gets its own Prefect home
        try:
            msg = do_run(*job[1:], slot, world) if job[0] == "run" else do_transfer(*job[1:], slot)
        except RuntimeError as e:
            msg = f"FAILED: {e}"
        finally:
            slots.put(slot)
        print(f"[{(time.perf_counter() - start) / 60:6.1f} min] {msg}", flush=True)

    for batch in (runs, transfers):
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(work, batch))


if __name__ == "__main__":
    main()
