"""Performance ratios, each measured in one run on one machine (issue: performance and scale-out).

    python -m benchmarks.perf.run                # all micro-benchmarks (~3 min on 2 CPU cores)
    python -m benchmarks.perf.run --e2e          # also `dvc repro` of the embedded default in a
                                                 # temporary clone (~20 min; galot-mini is copied in,
                                                 # so pretraining is not counted)
    python -m benchmarks.perf.run --report-only  # regenerate docs/performance.md from the JSON
    python -m benchmarks.perf.run --sd21         # also an SD-2.1-base-shaped model (random weights,
                                                 # 512 px, fp16, 50 steps): meant for a GPU
    python -m benchmarks.perf.run --sd21-only    # only that, merged into the existing JSON (a GPU
                                                 # machine need not redo the CPU benchmarks)
    # CPU smoke test of the SD-2.1-shaped path (~2 min), leaving the committed results alone:
    python -m benchmarks.perf.run --sd21-only --sd21-steps 1 --sd21-size 64 --repeats 1 \
        --out /tmp/perf-smoke/perf.json --doc /tmp/perf-smoke/performance.md

Writes benchmarks/results/perf.json (raw timings) and docs/performance.md (generated).

1. Generation: ``DiffusersT2I.generate`` vs diffusers' ``StableDiffusionPipeline.__call__`` on
   the same components, steps, guidance, batch and initial noise (images/s; target ≥ 1.0).
2. One TextOpt step (k samples, gradient through the last step) vs generating the same k
   images without gradients (target ≤ 1.3).
3. Classifier training (``galot_core.train.fit``) vs a bare PyTorch loop on the same uint8
   data, model, batch size and steps (images/s; target ≥ 0.9). Both without augmentation;
   the cost of galot's crop augmentation is reported separately.
4. galot-mini images/s at the default steps, guidance and batch.
5. With ``--sd21``: rows 1 and 2 for a model shaped like the paper's Stable Diffusion 2.1 base
   (benchmarks/perf/sd21_shape.py), whose seconds per image c feed the scale-out estimate of the
   paper's CIFAR-10 setting on 1 vs 8 GPUs in docs/performance.md.
Timings are medians of interleaved repeats, so background load hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition
from galot_core.config import TrainConfig
from galot_core.models import build_model
from galot_core.t2i import DiffusersT2I
from galot_core.train import fit
from galot_core.transforms import Preprocess

RESULTS = ROOT / "benchmarks" / "results" / "perf.json"
DOC = ROOT / "docs" / "performance.md"
SD21 = "SD-2.1-shaped"  # model names of the --sd21 rows start with this
TARGETS = {"generate_vs_diffusers": (">=", 1.0), "textopt_step_vs_generate_k": ("<=", 1.3),
           "train_vs_bare_loop": (">=", 0.9)}


def sync() -> None:
    """Wait for queued GPU work: CUDA calls return before the kernels finish."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, interleaved so load affects both equally (one warm-up each).

    The order alternates (a b, b a, a b, ...): whichever runs second inherits the first one's
    freed memory and warm caches, which otherwise biases a fixed order by a few percent."""
    a(), b()
    ta, tb = [], []
    for i in range(repeats):
        first, second = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        first[1].extend(timed(first[0], 1))
        second[1].extend(timed(second[0], 1))
    return statistics.median(ta), statistics.median(tb)


def bench_generation(name: str, t2i: DiffusersT2I, pipe, batch: int, steps: int, guidance: float,
                     repeats: int, size: int | None = None) -> dict:
    """``size``: image side in pixels (default: the model's); diffusers gets the same noise in its UNet's dtype."""
    emb = t2i.encode(["a realistic photo of a seven"] * batch)
    uncond = t2i.uncond.expand(batch, -1, -1)
    noise = t2i.initial_noise(batch, torch.Generator().manual_seed(0), height=size, width=size)
    height, width = (n * t2i.vae_scale_factor for n in noise.shape[-2:])

    def ours():
        with torch.no_grad():
            t2i.generate(emb, num_inference_steps=steps, guidance_scale=guidance, latents=noise)

    def theirs():
        pipe(prompt_embeds=emb, negative_prompt_embeds=uncond, num_inference_steps=steps, guidance_scale=guidance,
             latents=noise.to(pipe.unet.dtype), height=height, width=width, output_type="pt")

    pipe.set_progress_bar_config(disable=True)
    t_ours, t_theirs = interleaved(ours, theirs, repeats)
    return {"model": name, "batch": batch, "steps": steps, "guidance": guidance,
            "galot_images_per_s": batch / t_ours, "diffusers_images_per_s": batch / t_theirs,
            "ratio": t_theirs / t_ours}


def bench_textopt(name: str, t2i: DiffusersT2I, classes: int, k: int, steps: int, guidance: float,
                  image_size: int, channels: int, repeats: int, arch: str = "small_cnn",
                  size: int | None = None) -> dict:
    """``arch``, ``image_size``, ``channels``: the classifier the margin objective runs (on the T2I's device);
    ``size``: generated image side in pixels (default: the model's)."""
    torch.manual_seed(0)
    model = build_model(arch, channels, 10, 0.2).to(t2i.device).eval().requires_grad_(False)
    pre = Preprocess(image_size, channels, (0.5,) * channels, (0.5,) * channels).to(t2i.device)
    emb = t2i.encode([f"a realistic photo of a {i}" for i in range(classes)])

    def objective(images):
        return acquisition.objective("MarginSampling", model(pre(images)))

    def grad_step():
        t2i.acquisition_grad(emb, objective, k=k, generator=torch.Generator().manual_seed(1),
                             num_inference_steps=steps, guidance_scale=guidance, estimator="last_step",
                             height=size, width=size)

    noise = t2i.initial_noise(classes * k, torch.Generator().manual_seed(1), height=size, width=size)
    rep = emb.repeat_interleave(k, dim=0)

    def generate_k():
        with torch.no_grad():
            objective(t2i.generate(rep, num_inference_steps=steps, guidance_scale=guidance, latents=noise))

    t_step, t_gen = interleaved(grad_step, generate_k, repeats)
    return {"model": name, "classes": classes, "k": k, "steps": steps, "textopt_step_s": t_step,
            "generate_k_s": t_gen, "ratio": t_step / t_gen}


def bench_training(repeats: int, steps: int = 60, batch: int = 32) -> dict:
    from galot_core.data.mnist5k import load_mnist5k

    d = load_mnist5k()
    images, labels = d.pool.images[:400], d.pool.labels[:400]
    pre = Preprocess(d.image_size, d.channels, d.mean, d.std)
    cfg = TrainConfig(epochs=1, min_steps=steps, batch_size=batch, augment="none", device="cpu")

    def galot_fit(augment: str = "none"):
        torch.manual_seed(0)
        model = build_model("small_cnn", 1, 10, 0.2)
        fit(model, images, labels, pre, TrainConfig(**{**cfg.__dict__, "augment": augment}), natural=False, seed=0)

    def bare():
        torch.manual_seed(0)
        model = build_model("small_cnn", 1, 10, 0.2).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        mean = torch.tensor(d.mean).view(1, -1, 1, 1)
        std = torch.tensor(d.std).view(1, -1, 1, 1)
        done = 0
        while done < steps:
            for idx in torch.randperm(len(images), generator=g).split(batch):
                x = (images[idx].float() / 255 - mean) / std
                loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done >= steps:
                    break

    t_fit, t_bare = interleaved(galot_fit, bare, repeats)
    t_aug = statistics.median(timed(lambda: galot_fit("crop"), repeats))
    n = steps * batch
    return {"steps": steps, "batch": batch, "galot_images_per_s": n / t_fit, "bare_images_per_s": n / t_bare,
            "ratio": t_bare / t_fit, "galot_with_crop_images_per_s": n / t_aug}


def bench_galot_mini(repeats: int) -> dict | None:
    folder = ROOT / "models" / "galot-mini"
    if not (folder / "model_index.json").exists():
        return None
    from galot_core.config import T2IConfig

    tc = T2IConfig()
    t2i = DiffusersT2I.from_pretrained(str(folder), device="cpu", dtype="fp32", timestep_spacing=tc.timestep_spacing)
    emb = t2i.encode([f"a realistic photo of a {w}" for w in ["seven"] * tc.batch_size])
    secs = statistics.median(timed(lambda: t2i.generate(emb, num_inference_steps=tc.steps,
                                                        guidance_scale=tc.guidance_scale,
                                                        generator=torch.Generator().manual_seed(0)), repeats))
    return {"steps": tc.steps, "guidance": tc.guidance_scale, "batch": tc.batch_size,
            "images_per_s": tc.batch_size / secs, "threads": torch.get_num_threads()}


def bench_sd21(steps: int, size: int, repeats: int) -> tuple[dict, dict, dict]:
    """Generation and TextOpt rows for the SD-2.1-base-shaped model, and what the estimate needs.

    The paper's T2I setting: batch 8 for generation; one class × k = 6 for a TextOpt step, its
    margin taken by a ResNet18 on 32 px RGB (the paper's CIFAR-10 classifier); SD's default
    guidance 7.5. fp16 UNet and VAE on a GPU (what galot's t2i.dtype "auto" picks there), fp32
    on a CPU, where the run can only be a smoke test: a 512 px, 50-step run of this model takes
    hours there. The per-image cost c is seconds per image of ``DiffusersT2I.generate``.
    """
    from benchmarks.perf.sd21_shape import fp16_baseline_view, sd21_shaped_pipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    t = time.perf_counter()
    pipe = sd21_shaped_pipeline(device, dtype)
    build_s = time.perf_counter() - t
    # The text encoder stays fp32 (galot's rule); the UNet and VAE keep the pipeline's dtype.
    t2i = DiffusersT2I.from_pipeline(pipe)
    smoke = device.type != "cuda" or size < 512
    name = f"{SD21} (random, {size} px, {'fp16' if dtype == torch.float16 else 'fp32'})"
    guidance = 7.5
    gen = bench_generation(name, t2i, fp16_baseline_view(pipe), 8, steps, guidance, repeats, size=size)
    opt = bench_textopt(name, t2i, 1, 6, steps, guidance, 32, 3, repeats, arch="resnet18", size=size)
    gen["smoke"] = opt["smoke"] = smoke
    info = {"device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)",
            "dtype": name.split(", ")[-1].rstrip(")"), "size": size, "steps": steps, "guidance": guidance,
            "batch": gen["batch"], "per_image_s": 1 / gen["galot_images_per_s"], "smoke": smoke,
            "build_s": build_s, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    return gen, opt, info


def add_sd21(res: dict, steps: int, size: int, repeats: int) -> None:
    """Measure the SD-2.1-shaped rows and put them into ``res``, replacing earlier ones."""
    gen, opt, info = bench_sd21(steps, size, repeats)
    for key, row in (("generation", gen), ("textopt", opt)):
        res[key] = [r for r in res.get(key, []) if not r["model"].startswith(SD21)] + [row]
    res["sd21"] = info


def bench_e2e() -> dict:
    """`dvc repro` of the embedded default in a clean clone, galot-mini copied in (not counted)."""
    tmp = Path(tempfile.mkdtemp(prefix="galot-e2e-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp / "repo")], check=True)
        repo = tmp / "repo"
        shutil.copytree(ROOT / "models" / "galot-mini", repo / "models" / "galot-mini")
        if (ROOT / "models" / "judge-mnist5k.safetensors").exists():
            shutil.copy(ROOT / "models" / "judge-mnist5k.safetensors", repo / "models")
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
        out = {}
        for key in ("first", "no_change"):
            t = time.perf_counter()
            stages: list[list] = []  # [stage, seconds since start], from DVC's "Running stage 'x':" lines
            with open(tmp / "stderr.txt", "w") as err:
                proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "dvc", "repro"], cwd=repo, env=env,
                                        stdout=subprocess.PIPE, stderr=err, text=True)
                for line in proc.stdout:
                    if line.startswith("Running stage"):
                        stages.append([line.split("'")[1], time.perf_counter() - t])
                proc.wait()
            stderr = (tmp / "stderr.txt").read_text()
            if proc.returncode:
                raise SystemExit(f"dvc repro failed:\n{stderr[-3000:]}")
            out[f"{key}_seconds"] = time.perf_counter() - t
            out[f"{key}_peak_rss_mb"] = int(stderr.strip().splitlines()[-1]) / 1024
            out[f"{key}_stages"] = len(stages)
            if key == "first":
                ends = [s[1] for s in stages[1:]] + [out["first_seconds"]]
                out["stage_seconds"] = {name: round(end - start, 1) for (name, start), end in zip(stages, ends)}
        report = subprocess.run(["galot", "report"], cwd=repo, env=env, capture_output=True, text=True)
        out["report_table"] = report.stdout.strip()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verdict(key: str, value: float, smoke: bool = False) -> str:
    if smoke:
        return "smoke test, not a measurement"
    op, target = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return f"{'meets' if ok else 'misses'} target {op} {target}"


def write_doc(res: dict, doc: Path = DOC) -> None:
    g, t, tr = res["generation"], res["textopt"], res["training"]
    lines = ["# Performance", "",
             f"Generated by `python -m benchmarks.perf.run` on {res['machine']} ({res['threads']} torch threads), "
             f"{res['date']}. Raw timings: [benchmarks/results/perf.json](../benchmarks/results/perf.json). "
             "Each ratio compares two things measured in the same run, interleaved (median of repeats).", "",
             "## Generation: galot vs diffusers", "",
             "`DiffusersT2I.generate` runs its own denoising loop (so TextOpt can take gradients through it); "
             "it must not be slower than `StableDiffusionPipeline.__call__` on the same components, noise, steps, "
             "guidance and batch.", "",
             "| model | batch | steps | galot img/s | diffusers img/s | ratio | |", "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['steps']} | {r['galot_images_per_s']:.1f} | "
              f"{r['diffusers_images_per_s']:.1f} | {r['ratio']:.2f} | "
              f"{verdict('generate_vs_diffusers', r['ratio'], r.get('smoke', False))} |"
              for r in g]
    lines += ["", "## One TextOpt step vs generating the same k images", "",
              "A PGD step generates k images per class and back-propagates through the last denoising step "
              "(Prop. 1); the ratio is its price over plain generation of the same images.", "",
              "| model | classes × k | steps | TextOpt step s | generate s | ratio | |", "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['classes']} × {r['k']} | {r['steps']} | {r['textopt_step_s']:.3f} | "
              f"{r['generate_k_s']:.3f} | {r['ratio']:.2f} | "
              f"{verdict('textopt_step_vs_generate_k', r['ratio'], r.get('smoke', False))} |"
              for r in t]
    lines += sd21_section(res)
    lines += ["", "## Classifier training vs a bare PyTorch loop", "",
              f"small_cnn, {tr['steps']} steps of batch {tr['batch']} on uint8 digits decoded once in memory "
              "(synthetic PNGs are decoded and resized once when a cycle's training set is built, never per epoch).",
              "", "| | images/s |", "|---|---:|",
              f"| galot `fit` (no augmentation) | {tr['galot_images_per_s']:.0f} |",
              f"| bare loop | {tr['bare_images_per_s']:.0f} |",
              f"| galot `fit` with crop augmentation (the digits default) | {tr['galot_with_crop_images_per_s']:.0f} |",
              "", f"Ratio {tr['ratio']:.2f}: {verdict('train_vs_bare_loop', tr['ratio'])}."]
    if res.get("galot_mini"):
        m = res["galot_mini"]
        lines += ["", "## galot-mini throughput", "",
                  f"{m['images_per_s']:.1f} images/s at {m['steps']} steps, guidance {m['guidance']}, batch "
                  f"{m['batch']}, {m['threads']} threads."]
    if res.get("e2e"):
        e = res["e2e"]
        lines += ["", "## End to end: `dvc repro` of the embedded default", "",
                  "In a clean clone with galot-mini copied in (its one-time pretraining, ~11 min, not counted):", "",
                  f"- first `dvc repro`: {e['first_seconds'] / 60:.1f} min, {e['first_stages']} stages, peak RSS "
                  f"{e['first_peak_rss_mb']:.0f} MB (largest process)",
                  f"- no-change `dvc repro`: {e['no_change_seconds']:.1f} s, {e['no_change_stages']} stages run"]
        if e.get("stage_seconds"):
            without = (e["first_seconds"] - e["stage_seconds"].get("pretrain_t2i", 0)) / 60
            lines += ["", f"Without the pretraining stage: {without:.1f} min — "
                          f"{'meets' if without <= 15 else 'misses'} the target of ≤ 15 min; the no-change run "
                          f"{'meets' if e['no_change_seconds'] < 30 else 'misses'} the target of < 30 s. "
                          "Training dominates: the AL baselines and the transfer architectures retrain a classifier "
                          "from scratch every cycle, and each stage pays ~10 s of interpreter, library and "
                          "Prefect start-up."]
            lines += ["", "| stage | seconds |", "|---|---:|"]
            lines += [f"| {name} | {sec:.0f} |" for name, sec in e["stage_seconds"].items()]
        if e.get("report_table"):
            lines += ["", "`galot report` after it (GALOT against the best AL baseline at each budget):", "", "```",
                      e["report_table"], "```"]
    lines += scaleout_section(res)
    lines += savings_section()
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")


def sd21_section(res: dict) -> list[str]:
    """Where and how the SD-2.1-shaped rows were taken (they may come from another machine: --sd21-only)."""
    sd = res.get("sd21")
    if not sd:
        return []
    steps = f"{sd['steps']} DDIM step{'s' * (sd['steps'] != 1)}"
    lines = ["", f"### The {SD21} rows", "",
             "A model with Stable Diffusion 2.1 base's layer shapes (UNet 866 M, VAE 84 M and CLIP text encoder "
             "340 M parameters) and random weights, built offline by benchmarks/perf/sd21_shape.py: timings depend "
             "on shapes, not on weight values. Generation at batch "
             f"{sd['batch']}; TextOpt for 1 class × k = 6 with a ResNet18 margin on 32 px RGB; {sd['size']} px, "
             f"{steps}, guidance {sd['guidance']}, UNet and VAE in {sd['dtype']} (text encoder fp32), "
             f"on {sd['device_name']}, {sd['date']}, torch {sd['torch']}."]
    if sd["smoke"]:
        lines += ["", f"**Smoke test, not a measurement**: {sd['size']} px, {steps}, on {sd['device']} only check "
                      "that the path runs; their timings say nothing about the real model's cost. Measure with "
                      "`python -m benchmarks.perf.run --sd21` on a GPU."]
    else:
        lines += ["", f"Per-image cost c = **{sd['per_image_s']:.3f} s** per image of `DiffusersT2I.generate`."]
    return lines


# The paper's CIFAR-10 setting (Sec. 4, App. A, Table 8), as counted by the scale-out estimate,
# and its T = 50 denoising steps (the SD-2.1-shaped measurement must be taken at those).
PAPER_CIFAR10 = {"classes": 10, "cycles": 10, "budget_al": 1000, "budget_factor": 1.0, "pgd_steps": 10, "k": 6}
PAPER_STEPS = 50


def scaleout_estimate(textopt_ratio: float, *, gpus: int = 8, shard_size: int = 100,
                      textopt_classes_per_task: int = 2, classes: int = 10, cycles: int = 10, budget_al: int = 1000,
                      budget_factor: float = 1.0, pgd_steps: int = 10, k: int = 6) -> dict:
    """The diffusion-model work of a GALOT run, exactly counted, in image-times (one image-time = c).

    Cycle i labels B_AL more images, so |L| = i·B_AL and GALOT generates B_GAL = budget_factor·|L|
    images. TextOpt runs in cycles 2..N (cycle 1 has ε = 0 and no classifier yet): n PGD steps of
    k samples per class; one sample costs ``textopt_ratio`` image-times (a TextOpt step over
    generating the same k images, measured).

    1 GPU: all in sequence (TextOpt batched over all classes, the default runner).
    ``gpus`` GPUs, one Dask worker each, tasks spread evenly: a cycle's generation takes
    ceil(shards / gpus) shard-times (runner.shard_size images each); its TextOpt takes
    ceil(groups / gpus) rounds of one group of ``textopt_classes_per_task`` classes. Cycles stay
    in sequence (each needs the last classifier), and so does a cycle's TextOpt before its
    generation. Per-image cost is taken as independent of the batch (≥ 8 images fill a GPU).
    """
    images = [round(budget_factor * budget_al * i) for i in range(1, cycles + 1)]
    textopt_cycles = cycles - 1
    samples_per_cycle = classes * k * pgd_steps
    groups = math.ceil(classes / textopt_classes_per_task)
    group_samples = min(textopt_classes_per_task, classes) * k * pgd_steps
    rounds = math.ceil(groups / gpus)
    generation_wall = sum(math.ceil(math.ceil(n / shard_size) / gpus) * shard_size for n in images)
    textopt_wall = textopt_cycles * rounds * group_samples * textopt_ratio
    one_gpu = sum(images) + textopt_cycles * samples_per_cycle * textopt_ratio
    return {"images_per_cycle": images, "images": sum(images), "textopt_cycles": textopt_cycles,
            "textopt_samples": textopt_cycles * samples_per_cycle, "textopt_ratio": textopt_ratio,
            "one_gpu_image_times": one_gpu, "gpus": gpus, "shard_size": shard_size,
            "textopt_classes_per_task": textopt_classes_per_task, "textopt_groups": groups,
            "generation_wall_image_times": generation_wall, "textopt_wall_image_times": textopt_wall,
            "wall_image_times": generation_wall + textopt_wall,
            "speedup": one_gpu / (generation_wall + textopt_wall)}


def scaleout_section(res: dict, gpus: int = 8) -> list[str]:
    """The paper's CIFAR-10 setting on 1 vs ``gpus`` GPUs, from this run's measurements (none invented)."""
    p = PAPER_CIFAR10
    textopt_rows = [r for r in res["textopt"] if not r.get("smoke")]
    row = (next((r for r in textopt_rows if r["model"].startswith(SD21)), None)
           or next((r for r in textopt_rows if r["model"] == "galot-mini"), None) or textopt_rows[0])
    e = scaleout_estimate(row["ratio"], gpus=gpus, **p)
    sd = res.get("sd21")
    measured = bool(sd) and sd["device"] == "cuda" and not sd["smoke"] and sd["steps"] == PAPER_STEPS
    c = sd["per_image_s"] if measured else None
    per_cycle = ", ".join(f"{n:,}" for n in e["images_per_cycle"])
    lines = ["", f"## Scale-out estimate: the paper's CIFAR-10 setting on 1 vs {gpus} GPUs", "",
             f"On paper, from the counts of the paper's setting (Table 8, App. A: C = {p['classes']} classes, "
             f"N = {p['cycles']} cycles, B_AL = {p['budget_al']:,}, B_GAL = |L|, TextOpt n = {p['pgd_steps']} PGD "
             f"steps × k = {p['k']} samples per class in cycles 2–{p['cycles']}, ε = 0 in cycle 1, "
             f"T = {PAPER_STEPS} steps) and two measurements: the per-image cost c of the {SD21} generation row and "
             f"the TextOpt/generate ratio r = {row['ratio']:.2f} of the \"{row['model']}\" row "
             f"({row['classes']} × {row['k']}, {row['steps']} steps), which turns a TextOpt sample into r "
             "image-times.", "",
             f"- generated images: {e['images']:,} ({per_cycle} in cycles 1–{p['cycles']})",
             f"- TextOpt samples: {e['textopt_samples']:,} ({e['textopt_cycles']} cycles × {p['classes']} classes × "
             f"{p['pgd_steps']} steps × {p['k']}) = {e['textopt_samples'] * e['textopt_ratio']:,.0f} "
             "generation-equivalents",
             f"- 1 GPU, everything in sequence: {e['one_gpu_image_times']:,.0f} image-times",
             f"- {gpus} GPUs (one Dask worker each): generation in shards of runner.shard_size = "
             f"{e['shard_size']} images, ceil(shards / {gpus}) shard-times per cycle = "
             f"{e['generation_wall_image_times']:,} image-times; TextOpt with runner.textopt_classes_per_task = "
             f"{e['textopt_classes_per_task']} (the default 0 keeps it in one task on one GPU), "
             f"{e['textopt_groups']} tasks per cycle on {gpus} GPUs = {e['textopt_wall_image_times']:,.0f} "
             "image-times (a task batches "
             f"{e['textopt_classes_per_task']} × {p['k']} samples, against {p['classes']} × {p['k']} on 1 GPU; the "
             "estimate takes the cost per sample as the same); in all "
             f"{e['wall_image_times']:,.0f} image-times of wall time",
             f"- speed-up: **{e['speedup']:.2f}×** on {gpus} GPUs (less than {gpus}: cycles are sequential, "
             "generation rounds up to whole shard rounds, TextOpt to one group per GPU)", ""]
    if measured:
        lines += [f"| | 1 GPU | {gpus} GPUs |", "|---|---:|---:|",
                  f"| diffusion-model work, hours | {e['one_gpu_image_times'] * c / 3600:.1f} GPU-hours | "
                  f"{e['wall_image_times'] * c / 3600:.1f} wall hours |", "",
                  f"With c = {c:.3f} s per image (batch {sd['batch']}, {sd['size']} px, {sd['steps']} steps, "
                  f"{sd['dtype']}) measured on {sd['device_name']}, {sd['date']}."]
    else:
        lines += ["**Per-image cost not measured: run `python -m benchmarks.perf.run --sd21` on a GPU.** "
                  "No hours are given until then" + (" (the SD-2.1-shaped rows above are a smoke test)."
                                                      if sd else ".")]
    lines += ["", "The estimate covers the diffusion-model work only (TextOpt and generation). **Excluded**: the "
                  "classifier's training each cycle (ResNet18, 300 epochs on up to 20,000 real + synthetic images "
                  "in the paper), which the Dask fan-out does not speed up; the AL selection over the unlabelled "
                  "pool; loading the model on each worker; PNG encoding and writing; and Dask's scheduling overhead."]
    return lines


def savings_section() -> list[str]:
    """docs/performance.md's part from benchmarks/perf/unet_savings.py, when it has been run."""
    path = RESULTS.parent / "unet_savings.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    b = res["textopt_batching"]
    lines = ["", "## Fewer UNet calls for the same result", "",
             f"Generated from [benchmarks/results/unet_savings.json](../benchmarks/results/unet_savings.json) "
             f"(`python -m benchmarks.perf.unet_savings`, {res['threads']} torch threads, "
             f"{res['wall_seconds'] / 60:.1f} min). UNet calls are batched forward passes (a guidance pair counts once).",
             "", "### All classes' TextOpt samples in one batch", "",
             f"One PGD gradient estimate for {b['classes']} classes × k = {b['k']} on galot-mini "
             "(`runner.textopt_classes_per_task: 0`, the default, against `1`):", "",
             "| | UNet calls | seconds |", "|---|---:|---:|",
             f"| one task per class | {b['per_class']['unet_calls']} | {b['per_class']['seconds']:.2f} |",
             f"| all classes batched | {b['batched']['unet_calls']} | {b['batched']['seconds']:.2f} |", "",
             f"Saving per PGD step: {b['calls_saved']} calls and {b['seconds_saved']:.2f} s "
             f"({b['seconds_saved'] / b['per_class']['seconds']:.0%}); per GALOT cycle (n = 10 steps) ten times that. "
             f"The gradients agree to {b['max_abs_grad_difference']:.1e} (same sign in "
             f"{b['same_sign_fraction']:.2%} of coordinates), because each class draws the same noise either way; "
             "the end-to-end run in tests/test_dask_runner.py checks that the optimised embeddings are byte-identical "
             "across groupings of 3 classes and 10 — so the judged pseudo-label accuracy cannot change.",
             "", "### Fewer denoising steps with a multistep solver", "",
             "Judged pseudo-label accuracy (the fully-supervised judge, `galot prepare`) of galot-mini images for "
             f"every class, from the template embedding (ε = 0) and from the TextOpt-optimised embeddings of the last "
             f"cycle of the GALOT run `{res['textopt_run']}` (‖s − s*‖ up to {res['textopt_relative_radius']:.2f}·‖s*‖, "
             "pushed towards the classifier's decision boundaries: the hardest case); ± one standard error. "
             "A setting saves UNet calls only if its accuracy stays within the sampling error of DDIM at 10 steps "
             "(the study's protocol and the embedded default when this was measured).", "",
             "| scheduler | steps | UNet calls / 100 images | images/s | judged, ε = 0 | judged, TextOpt |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["steps_sweep"]:
        lines.append(f"| {r['scheduler']} | {r['steps']} | {r['unet_calls_per_100_images']:.0f} | "
                     f"{r['images_per_s']:.1f} | {r['judged_eps0']:.3f} ± {r['judged_eps0_se']:.3f} | "
                     f"{r['judged_textopt']:.3f} ± {r['judged_textopt_se']:.3f} |")
    base = next(r for r in res["steps_sweep"] if (r["scheduler"], r["steps"]) == ("ddim", 10))
    ok = [r for r in res["steps_sweep"] if r["steps"] < base["steps"]
          and all(r[f"judged_{e}"] >= base[f"judged_{e}"] - 2 * math.hypot(r[f"judged_{e}_se"], base[f"judged_{e}_se"])
                  for e in ("eps0", "textopt"))]
    if ok:
        best = min(ok, key=lambda r: (r["steps"], -r["judged_textopt"]))
        lines += ["", f"Fewest steps within two standard errors of 10 steps for both embeddings: **{best['scheduler']}, "
                      f"{best['steps']} steps** ({best['steps'] / base['steps']:.0%} of the UNet calls of 10 steps). With the "
                      "end-to-end check below, params.yaml now uses DDIM at 4 steps for galot-mini."]
    else:
        lines += ["", "No setting with fewer steps stays within two standard errors of 10 steps for both embeddings."]
    lines += ["", "Timings in this table were taken while other jobs shared the machine; the UNet calls are exact. "
                  "The TextOpt embeddings were optimised against 10-step images, so a fewer-step generator sees them "
                  "from a little further off; the end-to-end check below runs all of GALOT (TextOpt included) "
                  "at 4 steps.", *steps_check()]
    return lines


def steps_check() -> list[str]:
    """GALOT at t2i.steps = 4 against the default, from the study's raw results (benchmarks/studies/study.py)."""
    study = RESULTS.parent / "study"
    runs = {name: [json.loads(p.read_text()) for p in sorted((study / group / name).glob("seed*.json"))]
            for group, name in (("table1", "galot"), ("perf_fewer_steps", "galot_4_steps"))}
    seeds = sorted({r["seed"] for r in runs["galot"]} & {r["seed"] for r in runs["galot_4_steps"]})
    if not seeds:
        return ["", "(GALOT at 4 steps: no study result yet — `python -m benchmarks.studies.study --only perf_fewer_steps`.)"]

    def stat(name: str, key) -> float:
        rows = [r for r in runs[name] if r["seed"] in seeds]
        return statistics.mean(key(r) for r in rows)

    mean_acc = lambda r: statistics.mean(c["test_accuracy"] for c in r["cycles"])  # noqa: E731
    final_acc = lambda r: r["cycles"][-1]["test_accuracy"]  # noqa: E731
    judged = lambda r: statistics.mean(c["judged_accuracy"] for c in r["cycles"] if c.get("judged_accuracy") is not None)  # noqa: E731
    calls = lambda r: sum(sum((c.get("unet_calls") or {}).values()) for c in r["cycles"])  # noqa: E731
    diffusion_s = lambda r: sum(c["seconds"].get("textopt", 0) + c["seconds"].get("generate", 0) for c in r["cycles"])  # noqa: E731
    lines = ["", f"### GALOT end to end at 4 steps (seeds {', '.join(map(str, seeds))})", "",
             "| | mean test acc. over budgets | final test acc. | judged pseudo-labels | UNet calls | TextOpt + generation s |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, name in (("DDIM, 10 steps (study protocol)", "galot"), ("DDIM, 4 steps", "galot_4_steps")):
        lines.append(f"| {label} | {stat(name, mean_acc):.4f} | {stat(name, final_acc):.4f} | {stat(name, judged):.3f} | "
                     f"{stat(name, calls):.0f} | {stat(name, diffusion_s):.0f} |")
    by_seed = {name: {r["seed"]: mean_acc(r) for r in runs[name]} for name in runs}
    diffs = [by_seed["galot_4_steps"][k] - by_seed["galot"][k] for k in seeds]
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    lines += ["", f"Mean test accuracy, 4 steps minus 10 steps, paired by seed: {100 * statistics.mean(diffs):+.2f} ± "
                  f"{100 * sem:.2f} pp (SEM) — {'within' if abs(statistics.mean(diffs)) <= 2 * sem else 'outside'} two "
                  "standard errors of no change. UNet calls are exact; the seconds come from study runs that shared "
                  "the machine with other jobs, so only the calls are a fair cost comparison."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--e2e", action="store_true", help="also time dvc repro in a clean clone (~20 min)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--sd21", action="store_true", help="also the SD-2.1-base-shaped model (meant for a GPU)")
    ap.add_argument("--sd21-only", action="store_true",
                    help="only the SD-2.1-shaped model, merged into the existing results "
                         "(--out, else the committed ones)")
    ap.add_argument("--sd21-steps", type=int, default=50, help="denoising steps (SD's default: 50)")
    ap.add_argument("--sd21-size", type=int, default=512, help="image side in pixels (512; 64 for a CPU smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="the JSON of raw timings")
    ap.add_argument("--doc", type=Path, default=DOC, help="the generated Markdown")
    args = ap.parse_args()
    if args.report_only:
        write_doc(json.loads(args.out.read_text()), args.doc)
        return
    if args.sd21_only:
        res = json.loads((args.out if args.out.exists() else RESULTS).read_text())
        add_sd21(res, args.sd21_steps, args.sd21_size, args.repeats)
        save(res, args.out, args.doc)
        return
    from galot_core.t2i.tiny import tiny_sd_pipeline

    res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    pipe = tiny_sd_pipeline(scheduler="ddim")
    tiny = DiffusersT2I.from_pipeline(pipe)
    # Interleaved medians; a tiny model's timings are short and noisy, so more repeats.
    res["generation"] = [bench_generation("tiny SD (random, 16 px)", tiny, pipe, 16, 10, 3.0, 4 * args.repeats)]
    res["textopt"] = [bench_textopt("tiny SD (random, 16 px)", tiny, 1, 6, 10, 3.0, 28, 1, args.repeats)]
    mini = ROOT / "models" / "galot-mini"
    if (mini / "model_index.json").exists():
        from diffusers import StableDiffusionPipeline

        mpipe = StableDiffusionPipeline.from_pretrained(str(mini), safety_checker=None, requires_safety_checker=False)
        m = DiffusersT2I.from_pipeline(mpipe)
        res["generation"].append(bench_generation("galot-mini", m, mpipe, 100, 10, 3.0, args.repeats))
        res["textopt"].append(bench_textopt("galot-mini", m, 1, 6, 10, 3.0, 28, 1, args.repeats))
        res["textopt"].append(bench_textopt("galot-mini, all classes batched", m, 10, 6, 10, 3.0, 28, 1,
                                            max(2, args.repeats // 2)))
    res["training"] = bench_training(args.repeats)
    res["galot_mini"] = bench_galot_mini(max(2, args.repeats // 2))
    if args.e2e:
        res["e2e"] = {**bench_e2e(), "date": res["date"]}
    elif RESULTS.exists() and json.loads(RESULTS.read_text()).get("e2e"):
        # Keep the last end-to-end measurement (it takes ~20 min), marked with its own date.
        old = json.loads(RESULTS.read_text())
        res["e2e"] = {**old["e2e"], "date": old["e2e"].get("date", old.get("date"))}
    if args.sd21:
        add_sd21(res, args.sd21_steps, args.sd21_size, args.repeats)
    save(res, args.out, args.doc)


def save(res: dict, out: Path, doc: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    write_doc(res, doc)
    print(doc.read_text())


if __name__ == "__main__":
    main()
