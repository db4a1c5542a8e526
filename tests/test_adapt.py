"""gal.adapt: the generator fitted to the labelled images (galot_core/t2i/finetune.py, steps/adapt.py).

On tiny random pipelines of every family (galot_core/t2i/tiny.py): the denoising loss falls on a
fixed batch; its gradient with respect to the conditioning matches an independent reference
written from diffusers' own scheduler and denoiser; a LoRA galot saved loads into plain diffusers
(``load_lora_weights``) and changes the denoiser's output exactly as it does in galot. Then whole
runs: both modes, resumable, verified, and the bad inputs of issue 28.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from galot_core.config import config_from_dict  # noqa: E402
from galot_core.errors import GalotError  # noqa: E402
from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.t2i import finetune as ft  # noqa: E402
from galot_core.t2i.flux import FluxT2I  # noqa: E402
from galot_core.t2i.flux2 import Flux2KleinT2I  # noqa: E402
from galot_core.t2i.sd3 import SD3T2I  # noqa: E402
from galot_core.t2i.sdxl import SDXLT2I  # noqa: E402
from galot_core.t2i.zimage import ZImageT2I  # noqa: E402
from galot_core.t2i.tiny import (tiny_flux2_klein_pipeline, tiny_flux_pipeline, tiny_sd3_pipeline,  # noqa: E402
                                 tiny_sdxl_pipeline, tiny_z_image_pipeline)
from galot_core.t2i.tiny import tiny_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {
    "sd": (tiny_sd_pipeline, lambda p: DiffusersT2I.from_pipeline(p)),
    "sdxl": (tiny_sdxl_pipeline, lambda p: SDXLT2I.from_pipeline(p)),
    "flux": (lambda: tiny_flux_pipeline(guidance_embeds=True),
             lambda p: FluxT2I.from_pipeline(p, max_sequence_length=16, resolution=16)),
    "sd3": (tiny_sd3_pipeline, lambda p: SD3T2I.from_pipeline(p, max_sequence_length=16)),
    "flux2": (tiny_flux2_klein_pipeline, lambda p: Flux2KleinT2I.from_pipeline(
        p, max_sequence_length=32, text_encoder_out_layers=(1, 2, 3), resolution=16)),
    "zimage": (tiny_z_image_pipeline, lambda p: ZImageT2I.from_pipeline(p, max_sequence_length=64, resolution=16)),
}
PROMPTS = ["a photo of a cat", "a photo of a dog"]
MODULES = ("to_q", "to_k", "to_v", "to_out.0")


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def fixed_loss(t2i, x0, cond) -> float:
    return float(ft.denoising_loss(t2i, x0, cond, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_and_embedding_fits_lower_the_loss_on_a_fixed_batch(family):
    make, wrap = FAMILIES[family]
    t2i = wrap(make())
    x0 = ft.training_latents(t2i, images())
    assert x0.shape == t2i.initial_noise(4, torch.Generator().manual_seed(0)).shape  # the layout the loop denoises
    cond = t2i.encode(PROMPTS)
    y = torch.tensor([0, 1, 0, 1])
    # the embedding fit, on one fixed draw of noise and times (a new generator per step)
    s = cond.clone().requires_grad_(True)
    opt, start = torch.optim.Adam([s], lr=2e-2), fixed_loss(t2i, x0, cond[y])
    for _ in range(15):
        loss = ft.denoising_loss(t2i, x0, s[y], torch.Generator().manual_seed(7))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss(t2i, x0, s.detach()[y]) < start
    # the LoRA fit: fresh adapter leaves the model unchanged, then the loss falls
    ft.attach_lora(t2i, 4, MODULES, seed=0)
    assert fixed_loss(t2i, x0, cond[y]) == pytest.approx(start, rel=1e-5)
    params = [p for n, p in t2i.denoiser.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(15):
        loss = ft.denoising_loss(t2i, x0, cond[y], torch.Generator().manual_seed(7))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss(t2i, x0, cond[y]) < 0.95 * start


def test_fit_embeddings_stays_in_the_ball_and_leaves_unlabelled_classes():
    t2i = DiffusersT2I.from_pipeline(tiny_sd_pipeline())
    x0 = ft.training_latents(t2i, images())
    template = t2i.encode(PROMPTS + ["a photo of a bird"])
    s, losses = ft.fit_embeddings(t2i, x0, torch.tensor([0, 1, 0, 1]), template, steps=20, lr=0.5, radius=0.1,
                                  batch=4, generator=torch.Generator().manual_seed(0), progress=False)
    drift = (s - template).flatten(1).norm(dim=1) / template.flatten(1).norm(dim=1)
    assert len(losses) == 20 and (drift[:2] <= 0.1 + 1e-5).all() and (drift[:2] > 0.05).all()
    assert torch.equal(s[2], template[2])  # no image of class 2: it keeps the template


def test_embedding_gradient_matches_diffusers_reference():
    """d loss / d s through galot's training loss == through scheduler.add_noise + the UNet called directly."""
    pipe = tiny_sd_pipeline()
    t2i = DiffusersT2I.from_pipeline(pipe)
    pictures = images(2)[..., :t2i._image_size(None, None)[0], :t2i._image_size(None, None)[1]]  # no resize
    x0 = ft.training_latents(t2i, pictures)
    ref_x0 = pipe.vae.encode(pictures * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-5)
    s = t2i.encode(PROMPTS).requires_grad_(True)
    ft.denoising_loss(t2i, x0, s, torch.Generator().manual_seed(3)).backward()
    ours = s.grad.clone()
    # the reference: the same draws, diffusers' own noising and denoiser
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=g)
    torch.rand(2, generator=g)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (2,), generator=g)
    s2 = s.detach().clone().requires_grad_(True)
    out = pipe.unet(pipe.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=s2).sample
    torch.nn.functional.mse_loss(out, noise).backward()
    torch.testing.assert_close(ours, s2.grad, rtol=1e-4, atol=1e-7)


def test_embedding_gradient_matches_flow_matching_reference():
    """SD3: x_t = (1 − σ)x0 + σε, target ε − x0, the transformer at t = σ·1000 (diffusers' SD3 training)."""
    pipe = tiny_sd3_pipeline()
    t2i = SD3T2I.from_pipeline(pipe, max_sequence_length=16)
    x0 = ft.training_latents(t2i, images(2))
    s = t2i.encode(PROMPTS).requires_grad_(True)
    ft.denoising_loss(t2i, x0, s, torch.Generator().manual_seed(3)).backward()
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=g)
    u = torch.rand(2, generator=g)
    shift = pipe.scheduler.config.shift
    sigma = (shift * u / (1 + (shift - 1) * u)).view(-1, 1, 1, 1)
    s2 = s.detach().clone().requires_grad_(True)
    c = t2i.unpack(s2)
    out = pipe.transformer(hidden_states=(1 - sigma) * x0 + sigma * noise, timestep=sigma.flatten() * 1000,
                           encoder_hidden_states=c.tokens, pooled_projections=c.pooled, return_dict=False)[0]
    torch.nn.functional.mse_loss(out, noise - x0).backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux2"])
def test_saved_lora_loads_into_diffusers_and_acts_the_same(family, tmp_path):
    make, wrap = FAMILIES[family]
    t2i = wrap(make())
    x0 = ft.training_latents(t2i, images(2))
    cond = t2i.encode(PROMPTS)
    ft.attach_lora(t2i, 4, MODULES, seed=0)
    ft.fit_lora(t2i, x0, cond, t2i.uncond, steps=5, lr=5e-2, batch=2, generator=torch.Generator().manual_seed(0),
                progress=False)
    noise, t = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([500.0, 500.0])
    with torch.no_grad():
        adapted = ft.denoiser_output(t2i, noise, t, cond)
    from galot_core.io import safetensors_bytes

    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(safetensors_bytes(ft.lora_state(t2i), {"x": 1}))
    fresh = make()
    plain = wrap(fresh)
    with torch.no_grad():
        before = ft.denoiser_output(plain, noise, t, cond)
    fresh.load_lora_weights(str(tmp_path))  # plain diffusers, galot's file
    with torch.no_grad():
        after = ft.denoiser_output(plain, noise, t, cond)
    assert (before - adapted).abs().max() > 1e-4  # the fit changed the output...
    torch.testing.assert_close(after, adapted, rtol=1e-4, atol=1e-5)  # ...and diffusers' load changes it the same way


def test_a_lora_state_of_another_shape_is_one_line():
    t2i = DiffusersT2I.from_pipeline(tiny_sd_pipeline())
    ft.attach_lora(t2i, 4, MODULES, seed=0)
    other = DiffusersT2I.from_pipeline(tiny_sd_pipeline())
    ft.attach_lora(other, 2, MODULES, seed=0)
    with pytest.raises(GalotError, match="do not fit this model's adapter"):
        ft.load_lora_state(t2i, ft.lora_state(other), "x.safetensors")
    with pytest.raises(GalotError, match="gal.adapt_modules: .* match no linear layer"):
        ft.attach_lora(t2i, 4, ("no_such_layer",), seed=0)


# ---------------------------------------------------------------------- runs


def adapt_cfg(tmp_path, model, adapt, **gal):
    from tests.test_experiment_gal import gal_cfg

    return gal_cfg(tmp_path, model, gal={"adapt": adapt, "adapt_steps": 6, "adapt_batch": 8, "adapt_rank": 2,
                                         "adapt_lr": 1e-2, **gal})


@pytest.mark.parametrize("adapt", ["lora", "embedding"])
def test_adapted_run_verifies_and_names_its_fit(adapt, tmp_path, tiny_digits, tiny_sd_folder):
    from galot_core.experiment import Experiment
    from galot_core.runfolder import RunFolder
    from galot_core.synthetic import read_manifest
    from galot_core.verify import verify_run

    cfg = adapt_cfg(tmp_path, tiny_sd_folder, adapt)
    rows = Experiment(cfg, dataset=tiny_digits).run()
    run = RunFolder(cfg.run_dir)
    for row in rows:
        c = row["cycle"]
        tensors, record = run.read_adapter(c, adapt)
        assert record["labelled"] == 10 * c and len(record["losses"]) == 6 and row["unet_calls"]["adapt"] == 6
        assert "adapt" in row["seconds"] and run.adapter_path(c, adapt).name in row["files"]
        names = {e.adapter for e in read_manifest(run.synthetic_dir(c))}
        assert names == {row["files"][run.adapter_path(c, adapt).name]}  # every image names the fit it came from
    emb = load_file(str(run.embeddings_path(2)))
    if adapt == "embedding":
        torch.testing.assert_close(emb["s_star"], tensors["centres"])  # TextOpt's ball sits on the fitted centre
        assert not torch.equal(tensors["centres"], tensors["template"])
    else:
        assert any(k.startswith("unet.") and "lora_A" in k for k in tensors)
    assert verify_run(cfg.run_dir)[0] == []


def test_adapter_file_fitted_on_other_inputs_or_corrupt_is_refused(tmp_path, tiny_digits, tiny_sd_folder):
    from galot_core.experiment import Experiment
    from galot_core.runfolder import RunFolder
    from galot_core.verify import verify_run

    cfg = adapt_cfg(tmp_path, tiny_sd_folder, "lora")
    cfg = config_from_dict({**cfg.to_dict(), "experiment": {**cfg.to_dict()["experiment"], "cycles": 1}})
    Experiment(cfg, dataset=tiny_digits).run()
    run = RunFolder(cfg.run_dir)
    path = run.adapter_path(1, "lora")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    problems, _ = verify_run(cfg.run_dir)
    assert {p.kind for p in problems} >= {"altered"} and any("unreadable" in p.detail for p in problems)
    with pytest.raises(GalotError, match="pytorch_lora_weights.safetensors: the adapted generator is unreadable"):
        run.read_adapter(1, "lora")
    # a fit recorded for other inputs
    from galot_core.io import safetensors_bytes

    path.write_bytes(good)
    fit_tensors, record = run.read_adapter(1, "lora")
    path.write_bytes(safetensors_bytes(fit_tensors, {**record, "inputs_sha256": "0" * 64}))
    (run.metrics_path(1)).unlink()  # the cycle is redone: its fit must be checked, not trusted
    with pytest.raises(GalotError, match="fitted on other inputs"):
        Experiment(cfg, dataset=tiny_digits).run()


@pytest.mark.parametrize("override, message", [
    ({"gal": {"adapt": "dreambooth"}}, "gal.adapt must be one of"),
    ({"gal": {"adapt": "lora", "adapt_rank": 0}}, "gal.adapt_rank"),
    ({"gal": {"adapt": "lora", "adapt_rank": 1000}}, "gal.adapt_rank"),
    ({"gal": {"adapt": "lora", "adapt_steps": 0}}, "gal.adapt_steps"),
    ({"gal": {"adapt": "lora", "adapt_modules": ["to_q;rm"]}}, "gal.adapt_modules"),
    ({"gal": {"adapt": "embedding"}, "experiment": {"mode": "gal"}}, "gal.adapt: embedding .* labels no real image"),
    ({"gal": {"adapt": "lora"}, "experiment": {"mode": "al"}}, "gal.adapt: lora .* generates no image"),
])
def test_bad_adapt_parameters_are_one_line(override, message):
    raw = {"experiment": {"name": "x"}}
    for k, v in override.items():
        raw.setdefault(k, {}).update(v)
    with pytest.raises(GalotError, match=message) as e:
        config_from_dict(raw)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_model_without_the_named_layers_before_writing(tmp_path, tiny_sd_folder):
    """exit 2, one line, and nothing in the run folder (no label bought, no config written)."""
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "experiment": {"name": "lora", "runs_dir": str(tmp_path / "runs"), "cycles": 1},
        "data": {"dataset": "mnist5k"}, "al": {"budget_per_cycle": 10},
        "gal": {"adapt": "lora", "adapt_modules": ["to_nowhere"]},
        "t2i": {"model": str(tiny_sd_folder), "device": "cpu", "steps": 2}, "train": {"device": "cpu"}}))
    r = subprocess.run([sys.executable, "-m", "galot.flows.cli", "run", "--params", str(params)], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "gal.adapt_modules: ['to_nowhere'] match no linear layer" in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip() and "Loading weights" not in x]  # progress bars
    assert "Traceback" not in r.stderr and len(lines) == 1
    run = tmp_path / "runs" / "lora"  # at most the empty folder the run lock lives beside
    assert not run.exists() or not any(run.iterdir())


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory, tiny_sd_folder, prefect_api):
    from tests.test_faults import fingerprint, galot
    from tests.test_flows import write_params

    root = tmp_path_factory.mktemp("adapt-faults")
    env = dict(os.environ, PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1")

    def params_in(folder):
        folder.mkdir(parents=True, exist_ok=True)
        return write_params(folder, tiny_sd_folder, name="crash", gal={"steps": 2, "samples": 2, "adapt": "lora",
                                                                       "adapt_steps": 5, "adapt_rank": 2},
                            t2i={"batch_size": 8}, tracking={"mlflow": False})

    r = galot(params_in(root / "reference"), env)
    assert r.returncode == 0, r.stderr[-2000:]
    return root, env, params_in, fingerprint(root / "reference/runs/crash")


@pytest.mark.parametrize("point", ["adapt.before_write:2", "generate.mid_batch:2"])
def test_sigkill_during_an_adapted_cycle_then_rerun_matches(lora_reference, point):
    """Killed after cycle 2's fit (not yet written) or mid-generation on the adapted model (a fresh
    process then loads the LoRA from the file): the rerun is byte-identical and verifies."""
    from tests.test_faults import BIN, fingerprint, galot

    root, env, params_in, reference = lora_reference
    params = params_in(root / point.replace(":", "-").replace(".", "-"))
    killed = galot(params, env, failpoint=point)
    assert killed.returncode == -9, f"{point} was never reached:\n{killed.stderr[-1500:]}"
    resumed = galot(params, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = fingerprint(params.parent / "runs/crash")
    assert "cycles/cycle_002/pytorch_lora_weights.safetensors" in got and got == reference
    verify = subprocess.run([str(BIN / "galot"), "verify", str(params.parent / "runs/crash")], env=env,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
