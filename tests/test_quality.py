"""The T2I quality measures (galot_core/quality.py) and `galot t2i-quality`, the DVC stage's command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml

from galot_core.quality import diversity, frechet_distance, model_sha, stale_model


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """FID's own formula (pytorch-fid): ‖μa − μb‖² + tr(Σa + Σb − 2 sqrtm(Σa Σb))."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_is_fids_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g,
                                                                                   dtype=torch.float64) + 1.0
    assert frechet_distance(a, b) == pytest.approx(_fid_reference(a.numpy(), b.numpy()), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 2.0) == pytest.approx(4.0 * 8, rel=1e-6)  # a shift only moves the mean


def test_diversity_is_the_mean_pairwise_distance_per_class():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [7.0, 7.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert diversity(feats, labels, 4) == [5.0, 0.0, 0.0, 0.0]  # class 1 collapsed; 2 and 3 have < 2 images


def test_stale_model_names_both_models_in_one_line(tiny_sd_folder, tmp_path):
    sha = model_sha(tiny_sd_folder)
    assert sha is not None and len(sha) == 12
    assert stale_model(sha, tiny_sd_folder, "docs/t2i.md") is None
    line = stale_model("0123456789ab", tiny_sd_folder, "docs/t2i.md")
    assert "\n" not in line and "0123456789ab" in line and sha in line and "rerun" in line
    assert "pretrain-t2i" in stale_model(sha, tmp_path, "docs/t2i.md")  # a folder without weights
    assert model_sha(tmp_path) is None


def _params(tmp_path, model, judge) -> str:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"data": {"dataset": "mnist5k"},
                                 "experiment": {"judge": str(judge) if judge else None, "runs_dir": str(tmp_path)},
                                 "t2i": {"model": str(model), "steps": 2, "device": "cpu", "dtype": "fp32"}}))
    return str(p)


def test_t2i_quality_command_measures_the_named_model(tmp_path, tiny_sd_folder, mnist5k, one_thread):
    from galot.flows.cli import main
    from galot_core.checkpoint import save_classifier
    from galot_core.models import build_model

    torch.manual_seed(0)
    judge = tmp_path / "judge.safetensors"  # an untrained judge: the command measures with whatever it is given
    save_classifier(build_model("small_cnn", 1, 10), judge, arch="small_cnn", in_channels=1)
    out = tmp_path / "q.json"
    assert main(["t2i-quality", "--params", _params(tmp_path, tiny_sd_folder, judge), "--out", str(out),
                 "--per-class", "3"]) == 0
    r = json.loads(out.read_text())
    assert r["model_sha256"] == model_sha(tiny_sd_folder) and r["images"] == 30 and r["reference"] == "test"
    assert len(r["judged_per_class"]) == len(r["diversity_per_class"]) == len(r["diversity_real_per_class"]) == 10
    assert r["fd"] >= 0 and r["fd_real_floor"] >= 0 and np.isfinite([r["fd"], r["fd_real_floor"]]).all()
    assert r["reference_images"] == len(mnist5k.test)
    # a random tiny SD draws noise, not digits: further from real than real digits are
    assert r["fd"] > r["fd_real_floor"]


def test_t2i_quality_without_a_judge_records_a_skip_and_bad_counts_fail_in_one_line(tmp_path, tiny_sd_folder, capsys):
    from galot.flows.cli import main

    out = tmp_path / "q.json"
    assert main(["t2i-quality", "--params", _params(tmp_path, tiny_sd_folder, None), "--out", str(out)]) == 0
    assert "skipped" in json.loads(out.read_text())
    assert main(["t2i-quality", "--params", _params(tmp_path, tiny_sd_folder, None), "--per-class", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--per-class" in err[0]
