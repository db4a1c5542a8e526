"""Issue 15's ways of making the synthetic set: ball-scaled PGD steps, per-image diversity,
real-anchored image-to-image, over-generation with selection, and the zero-shot label check."""

import hashlib

import pytest
import torch

from galot_core import textopt
from galot_core.experiment import Experiment
from galot_core.synthetic import cycle_folder, read_manifest
from galot_core.t2i import DiffusersT2I
from galot_core.t2i.zero_shot import class_errors, diffusion_classify
from galot_core.verify import verify_run
from tests.test_experiment_gal import gal_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ball_steps_average_noisy_gradients_where_paper_steps_keep_only_the_last():
    """The paper's sign step (α = ε/5 per coordinate) overshoots the ball at every step, so the
    result is ε·sgn(g_last)/√D; ball-scaled steps accumulate, so noise averages out."""
    torch.manual_seed(0)
    d, eps = 4096, 1.0
    truth = torch.randn(d)
    s_star = torch.zeros(d)
    noisy = lambda s: truth + 3.0 * torch.randn(d)  # noqa: E731  cosine(one draw, truth) ≈ 0.3
    cos = {}
    for scale in ("paper", "ball"):
        torch.manual_seed(1)
        alpha = 0.2 * eps / (d ** 0.5 if scale == "ball" else 1.0)
        s = textopt.optimize(s_star, noisy, eps, alpha, 10, step="sign")
        cos[scale] = float(torch.nn.functional.cosine_similarity(s - s_star, torch.sign(truth), dim=0))
        assert float((s - s_star).norm()) <= eps + 1e-5
    assert cos["ball"] > cos["paper"] + 0.2, cos


def test_experiment_alpha_follows_step_scale(tmp_path, tiny_digits, tiny_sd_folder):
    s_star = torch.zeros(3, 4, 25)
    eps = torch.tensor([1.0, 2.0, 4.0])
    paper = Experiment(gal_cfg(tmp_path, tiny_sd_folder), dataset=tiny_digits).alpha(eps, s_star)
    ball = Experiment(gal_cfg(tmp_path, tiny_sd_folder, gal={"step_scale": "ball"}), dataset=tiny_digits).alpha(eps, s_star)
    assert torch.allclose(paper, 0.2 * eps) and torch.allclose(ball, 0.2 * eps / 10)


def test_diversity_gives_each_image_its_own_embedding_at_the_set_radius(tmp_path, tiny_digits, tiny_sd_folder):
    exp = Experiment(gal_cfg(tmp_path, tiny_sd_folder, gal={"diversity": 0.4}), dataset=tiny_digits)
    s = torch.randn(10, 4, 8)
    items = [(3, 0), (3, 1), (5, 0)]
    cond = exp.conditioning(2, items, s)
    offsets = [(cond[k] - s[c]).norm() / s[c].norm() for k, (c, _) in enumerate(items)]
    assert all(abs(float(o) - 0.4) < 1e-4 for o in offsets)
    assert not torch.allclose(cond[0], cond[1]) and torch.equal(cond, exp.conditioning(2, items, s))
    plain = Experiment(gal_cfg(tmp_path, tiny_sd_folder), dataset=tiny_digits)
    assert torch.equal(plain.conditioning(2, items, s), s[[3, 3, 5]])


def test_image_to_image_stays_near_its_anchor_at_low_strength(tiny_sd_folder):
    t2i = DiffusersT2I.from_pretrained(str(tiny_sd_folder), device="cpu", dtype="fp32")
    cond = t2i.encode(["a photo of a seven"] * 2)
    image = torch.rand(2, 3, 32, 32)
    noise = t2i.initial_noise(2, torch.Generator().manual_seed(0))
    recon = t2i._decode(t2i.encode_images(image))
    far = t2i.generate(cond, num_inference_steps=10, guidance_scale=1.0, latents=noise, image=image, strength=1.0)
    near = t2i.generate(cond, num_inference_steps=10, guidance_scale=1.0, latents=noise, image=image, strength=0.1)
    assert near.shape == far.shape == recon.shape
    assert float((near - recon).abs().mean()) < float((far - recon).abs().mean())


def test_zero_shot_errors_pair_the_noise_across_classes(tiny_sd_folder):
    t2i = DiffusersT2I.from_pretrained(str(tiny_sd_folder), device="cpu", dtype="fp32")
    images = torch.rand(3, 3, 32, 32)
    same = t2i.encode(["a photo of a seven"]).repeat(4, 1, 1)
    err = class_errors(t2i, images, same, timesteps=(100, 500), generator=torch.Generator().manual_seed(0))
    assert err.shape == (3, 4) and torch.allclose(err, err[:, :1].expand(-1, 4))  # same prompt, same noise
    two = t2i.encode(["a photo of a seven", "a photo of a one"])
    a = diffusion_classify(t2i, images, two, generator=torch.Generator().manual_seed(1))
    b = diffusion_classify(t2i, images, two, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3,)


def test_candidates_are_selected_by_the_label_check_then_sigma_gal(tmp_path, tiny_digits, tiny_sd_folder):
    cfg = gal_cfg(tmp_path, tiny_sd_folder, gal={"candidates": 3, "label_check": "diffusion", "epsilon": 0.0})
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.run()
    folder = cycle_folder(cfg.run_dir, 2)
    from galot_core.io import read_json

    decision = read_json(exp.cycle_dir(2) / "selection.json")
    entries = read_manifest(folder)
    assert decision["candidates"] == 60 and len(entries) == len(decision["kept"]) <= 20
    by_file = dict(zip(decision["files"], range(60)))
    labels = {f: int(f.split("_")[0]) for f in decision["files"]}
    for e in entries:  # kept: confirmed by the zero-shot check, and the most uncertain of their class
        k = by_file[e.file]
        assert decision["zero_shot_class"][k] == e.label
        rivals = [j for f, j in by_file.items() if labels[f] == e.label and decision["zero_shot_class"][j] == e.label
                  and f not in decision["kept"]]
        assert all(decision["score"][j] <= decision["score"][k] for j in rivals)
    for f in decision["rejected"]:
        assert not (folder / f).exists() and (exp.cycle_dir(2) / "rejected" / f).exists()
    manifest = (folder / "manifest.jsonl").read_bytes()
    assert exp.generate(2) == len(entries) and (folder / "manifest.jsonl").read_bytes() == manifest  # resumes
    problems, _ = verify_run(cfg.run_dir)
    assert not problems
    assert read_json(exp.cycle_dir(2) / "metrics.json")["unet_calls"]["label_check"] > 0


def test_hard_positives_are_the_candidates_the_last_classifier_gets_most_wrong(tmp_path, tiny_digits, tiny_sd_folder):
    """gal.select_by: intended_loss keeps, per class, the candidates with the highest cross-entropy of
    their prompted class under the cycle c-1 classifier, recomputed here from the saved model."""
    from galot_core.checkpoint import load_classifier
    from galot_core.io import read_json
    from galot_core.synthetic import decode_png, resize_uint8
    from galot_core.train import predict

    cfg = gal_cfg(tmp_path, tiny_sd_folder, gal={"candidates": 2, "epsilon": 0.0, "select_by": "intended_loss"})
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.run()
    decision = read_json(exp.cycle_dir(2) / "selection.json")
    folder, rejected = cycle_folder(cfg.run_dir, 2), exp.cycle_dir(2) / "rejected"
    files = decision["files"]
    raw = torch.stack([decode_png((folder if f in decision["kept"] else rejected) / f) for f in files])
    images = torch.cat([resize_uint8(x.unsqueeze(0), tiny_digits.image_size, tiny_digits.channels) for x in raw])
    model, _, _ = load_classifier(exp.cycle_dir(1) / "model.safetensors")
    logits = predict(model, images, exp.preprocess, device="cpu", batch_size=64)["logits"]
    targets = torch.tensor([int(f.split("_")[0]) for f in files])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    assert torch.allclose(torch.tensor(decision["score"]), loss, atol=1e-5)
    assert len(decision["kept"]) == 20 and len(files) == 40
    for c in range(10):
        mine = [k for k, f in enumerate(files) if targets[k] == c]
        kept = [k for k in mine if files[k] in decision["kept"]]
        assert min(loss[k] for k in kept) >= max(loss[k] for k in mine if k not in kept) - 1e-6


def test_anchored_images_come_from_labelled_images_of_their_class(tmp_path, tiny_digits, tiny_sd_folder):
    cfg = gal_cfg(tmp_path, tiny_sd_folder, gal={"anchor_strength": 0.5, "diversity": 0.2})
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.run()
    state = exp.pool_state()
    label_of = dict(zip(state.labelled, state.labels))
    entries = read_manifest(cycle_folder(cfg.run_dir, 2))
    anchored = [e for e in entries if e.source]
    assert anchored and all(e.source.endswith("strength 0.5") for e in anchored)
    for e in anchored:
        assert label_of[int(e.source.split("[")[1].split("]")[0])] == e.label
    assert len({e.embedding_sha256 for e in entries}) == len(entries)  # diversity: one embedding per image
    folder = cycle_folder(cfg.run_dir, 2)
    assert all(hashlib.sha256((folder / e.file).read_bytes()).hexdigest() == e.sha256 for e in entries)
