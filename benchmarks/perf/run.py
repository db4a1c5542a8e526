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

from benchmarks.common import RESULTS, ROOT, repeat_timed
from benchmarks.perf.report import DOC, SD21, write_doc
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from galot_core import acquisition
from galot_core.config import TrainConfig
from galot_core.models import build_model
from galot_core.t2i import DiffusersT2I
from galot_core.train import fit
from galot_core.transforms import Preprocess

PERF_JSON = RESULTS / "perf.json"


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, interleaved so load affects both equally (one warm-up each).

    The order alternates (a b, b a, a b, ...): whichever runs second inherits the first one's
    freed memory and warm caches, which otherwise biases a fixed order by a few percent."""
    a(), b()
    ta, tb = [], []
    for i in range(repeats):
        first, second = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        first[1].extend(repeat_timed(first[0], 1))
        second[1].extend(repeat_timed(second[0], 1))
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
    t_aug = statistics.median(repeat_timed(lambda: galot_fit("crop"), repeats))
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
    secs = statistics.median(repeat_timed(lambda: t2i.generate(emb, num_inference_steps=tc.steps,
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
    ap.add_argument("--out", type=Path, default=PERF_JSON, help="the JSON of raw timings")
    ap.add_argument("--doc", type=Path, default=DOC, help="the generated Markdown")
    args = ap.parse_args()
    if args.report_only:
        write_doc(json.loads(args.out.read_text()), args.doc)
        return
    if args.sd21_only:
        res = json.loads((args.out if args.out.exists() else PERF_JSON).read_text())
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
    elif PERF_JSON.exists() and json.loads(PERF_JSON.read_text()).get("e2e"):
        # Keep the last end-to-end measurement (it takes ~20 min), marked with its own date.
        old = json.loads(PERF_JSON.read_text())
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
