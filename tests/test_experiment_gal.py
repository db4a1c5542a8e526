"""GALOT cycles end to end (TextOpt → generation to disk → training) on a tiny SD pipeline."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from galot_core.config import config_from_dict
from galot_core.experiment import Experiment
from galot_core.synthetic import cycle_folder, read_manifest


def gal_cfg(tmp_path, model, **sections):
    raw = {
        "experiment": {"name": "g", "runs_dir": str(tmp_path), "mode": "al+gal", "cycles": 2, "seed": 3},
        "al": {"budget_per_cycle": 10},
        "gal": {"epsilon": 0.5, "steps": 2, "samples": 2},
        "t2i": {"model": str(model), "steps": 2, "guidance_scale": 2.0, "batch_size": 8, "device": "cpu"},
        "train": {"epochs": 1, "min_steps": 4, "device": "cpu"},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_al_gal_two_cycles(tmp_path, tiny_digits, tiny_sd_folder):
    cfg = gal_cfg(tmp_path, tiny_sd_folder)
    rows = Experiment(cfg, dataset=tiny_digits).run()
    assert [(r["labelled"], r["generated"]) for r in rows] == [(10, 10), (20, 20)]
    assert rows[0]["epsilon"] == 0.0 and rows[1]["epsilon"] == 0.5
    emb2 = load_file(str(cfg.run_dir / "cycles/cycle_002/embeddings.safetensors"))
    delta = (emb2["s"] - emb2["s_star"]).flatten(1).norm(dim=1)
    assert (delta <= 0.5 + 1e-5).all() and (delta > 0.1).all()  # TextOpt moved every class, inside the ball
    emb1 = load_file(str(cfg.run_dir / "cycles/cycle_001/embeddings.safetensors"))
    assert torch.equal(emb1["s"], emb1["s_star"])  # ε = 0 in cycle 1: GALOT starts from the template
    folder = cycle_folder(cfg.run_dir, 2)
    entries = read_manifest(folder)
    assert len(entries) == 20 and sorted(e.label for e in entries) == sorted([c for c in range(10)] * 2)
    for e in entries:
        data = (folder / e.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e.sha256 and data[:4] == b"\x89PNG"
        assert e.prompt == f"a realistic photo of a {tiny_digits.class_names[e.label]}" and e.cycle == 2
        assert e.steps == 2 and e.guidance_scale == 2.0 and e.epsilon == pytest.approx(0.5)
    assert len({e.seed for e in entries}) == 20


def test_gal_only_mode_uses_no_labels(tmp_path, tiny_digits, tiny_sd_folder):
    cfg = gal_cfg(tmp_path, tiny_sd_folder, experiment={"mode": "gal", "cycles": 1})
    exp = Experiment(cfg, dataset=tiny_digits)
    rows = exp.run()
    assert rows[0]["labelled"] == 0 and rows[0]["generated"] == 10  # B_GAL = B_AL·c in gal mode
    assert exp.pool_state().labelled == []


def test_generation_is_reproducible_and_resumes(tmp_path, tiny_digits, tiny_sd_folder):
    a = gal_cfg(tmp_path / "a", tiny_sd_folder, experiment={"cycles": 1})
    Experiment(a, dataset=tiny_digits).run()
    b = gal_cfg(tmp_path / "b", tiny_sd_folder, experiment={"cycles": 1})
    exp = Experiment(b, dataset=tiny_digits)
    exp.start()
    exp.select(1)
    exp.optimize_embeddings(1)
    exp.generate(1)
    # Lose half the images' manifest lines (as if killed mid-generation), then resume.
    folder = cycle_folder(b.run_dir, 1)
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    (folder / "manifest.jsonl").write_text("\n".join(lines[:4]) + "\n")
    assert exp.generate(1) == 10
    exp.train(1)
    fa, fb = cycle_folder(a.run_dir, 1), folder
    assert (fa / "manifest.jsonl").read_text() == (fb / "manifest.jsonl").read_text()
    for e in read_manifest(fa):
        assert (fa / e.file).read_bytes() == (fb / e.file).read_bytes()
