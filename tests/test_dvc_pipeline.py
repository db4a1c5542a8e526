"""`dvc repro` of the project's own dvc.yaml in a temporary git repo, on tiny parameters.

Checks what the pipeline promises: every stage runs from a fresh clone's state; a second
repro does nothing; a transfer-only change reruns only the transfer stages and the report,
generating no image; `dvc plots show` renders; `dvc exp run -S` takes our dotted keys.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "experiment": {"name": "default", "runs_dir": "runs", "seed": 0, "mode": "al+gal", "cycles": 2, "judge": None},
    "data": {"dataset": "mnist5k"},
    "al": {"strategy": "MarginSampling", "budget_per_cycle": 10},
    "gal": {"epsilon": 0.2, "epsilon_relative": True, "steps": 1, "samples": 2},
    "t2i": {"model": "models/galot-mini", "steps": 2, "batch_size": 50, "device": "cpu"},
    "model": {"arch": "small_cnn"},
    "train": {"epochs": 1, "min_steps": 4, "device": "cpu"},
    "pretrain": {"out": "models/galot-mini", "vae_steps": 2, "vae_batch": 4, "unet_steps": 2, "unet_batch": 4,
                 "warmup": 1},
    "transfer": {"archs": ["small_cnn", "mobilenet_v2"], "epochs": 1, "min_steps": 3},
    "baselines": {"strategies": ["RandomSampling", "MarginSampling"]},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api):
    path = tmp_path_factory.mktemp("dvc-repo")
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    # The project's params.yaml with tiny overrides: DVC needs every key a stage lists.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("/runs/\n/models/\nmlflow.db\n/dvc_plots/\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def run(*args: str) -> str:
        r = subprocess.run(list(args), cwd=path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout + r.stderr

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "pipeline")
    return path, run


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def synthetic_state(path: Path) -> dict[str, str]:
    files = sorted((path / "runs/default/synthetic").rglob("*"))
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def test_repro_runs_every_stage_then_nothing(repo):
    path, run = repo
    out = run("dvc", "repro")
    assert stages_run(out) == {"prepare", "pretrain_t2i", "galot", "baselines@RandomSampling",
                               "baselines@MarginSampling", "transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    assert (path / "models/galot-mini/model_index.json").exists()
    assert len(list((path / "runs/default/dataset/synthetic").glob("cycle_*.tar"))) == 2
    assert (path / "runs/default/report/report.md").read_text().count("| 2 | 20 |") == 1
    for s in ("RandomSampling", "MarginSampling"):
        assert (path / f"runs/default-baselines/{s}/summary.json").exists()
    again = run("dvc", "repro")
    assert stages_run(again) == set() and "up to date" in again


def test_transfer_change_reruns_only_transfer_and_report(repo):
    path, run = repo
    before = synthetic_state(path)
    calls = (path / "runs/default/cycles/cycle_002/generate_unet_calls.json").read_text()
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["transfer"]["min_steps"] = 5
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run("dvc", "repro")
    assert stages_run(out) == {"transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    assert synthetic_state(path) == before  # no image generated or touched
    assert (path / "runs/default/cycles/cycle_002/generate_unet_calls.json").read_text() == calls
    m = yaml.safe_load((path / "runs/default/transfer/small_cnn/metrics.json").read_text())
    assert m["steps"] == 5 and m["unet_calls"] == 0


def test_plots_show_renders_accuracy_curves(repo):
    path, run = repo
    run("dvc", "plots", "show")
    html = (path / "dvc_plots/index.html").read_text()
    assert "test_accuracy" in html and "budget" in html and "accuracy.png" in html


def test_exp_run_takes_dotted_overrides(repo):
    path, run = repo
    run("git", "add", "-A")
    run("git", "commit", "-qm", "transfer steps")
    out = run("dvc", "exp", "run", "-S", "transfer.min_steps=6", "--name", "more-steps")
    assert stages_run(out) == {"transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    shown = run("dvc", "exp", "show", "--no-pager", "--csv")
    assert "more-steps" in shown
