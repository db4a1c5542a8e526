"""galot outside its repository: the built wheel in a fresh virtualenv, used from an empty folder.

The wheel is built from a copy of the sources and installed, without dependencies, into a
new virtualenv that sees this environment's packages through a .pth line (torch, Prefect,
MLflow, ... are not installed twice). In an empty temporary folder it then runs what a new
user would: `galot --version`, `galot init`, an `al` run on a tiny image folder,
`galot predict`, and `mlflow.pytorch.load_model` on the logged model, whose predictions
must equal galot's. The venv must import galot from the wheel and must not see bare
`flows`/`tasks` packages.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "params.yaml", "dvc.yaml", "galot", "galot_core", "flows", "tasks")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # symlinks (galot/templates) are copied as the files they point to
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp / "dist").glob("galot-*.whl"))
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # This environment's packages, after the venv's own (a plain path: its .pth files, such as an
    # editable install of galot, are not processed).
    (purelib / "zz-project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return env_dir


def _env(venv: Path, prefect_api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    return env


def test_wheel_installs_one_namespace(venv, prefect_api, tmp_path):
    code = ("import galot, galot.flows.cli, galot.tasks.tracking, galot_core, importlib.util as u;"
            "print(galot.__file__); print(galot_core.__file__);"
            "print(u.find_spec('flows') is None and u.find_spec('tasks') is None)")
    r = subprocess.run([str(venv / "bin/python"), "-c", code], cwd=tmp_path, env=_env(venv, prefect_api),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    galot_file, core_file, no_bare = r.stdout.split()
    assert galot_file.startswith(str(venv)) and core_file.startswith(str(venv)), r.stdout
    assert no_bare == "True"  # a user's own flows/ and tasks/ packages stay theirs


def test_new_user_session_from_an_empty_folder(venv, prefect_api, tmp_path, mnist5k):
    env = _env(venv, prefect_api)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    work = tmp_path / "empty"
    work.mkdir()

    def galot(*args: str) -> str:
        r = subprocess.run([str(venv / "bin/galot"), *args], cwd=work, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, f"galot {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    assert galot("--version").strip() == "galot 0.1.0"
    galot("init", "project")
    project = work / "project"
    assert {"params.yaml", "dvc.yaml", ".gitignore"} <= {p.name for p in project.iterdir()}
    work = project
    # A tiny labelled image folder: 12 digits per class, as PNGs.
    names = list(mnist5k.class_names)
    for c, name in enumerate(names):
        (work / "digits" / name).mkdir(parents=True)
        for k, i in enumerate((mnist5k.pool.labels == c).nonzero().flatten()[:12].tolist()):
            Image.fromarray(mnist5k.pool.images[i, 0].numpy()).save(work / "digits" / name / f"{k}.png")
    galot("run", "--set", "experiment.name=mine", "--set", "experiment.mode=al", "--set", "experiment.cycles=1",
          "--set", "experiment.judge=null", "--set", "data.dataset=imagefolder", "--set", "data.root=digits",
          "--set", "al.budget_per_cycle=30", "--set", "train.epochs=1", "--set", "train.min_steps=4",
          "--set", "train.device=cpu")
    run = work / "runs" / "mine"
    galot("predict", "runs/mine", "digits/seven", "digits/one/0.png", "--csv", "pred.csv")
    rows = list(csv.DictReader((work / "pred.csv").open()))
    assert len(rows) == 13 and set(rows[0]) >= {"image", "label", "probability"}
    tracking = json.loads((run / "tracking.json").read_text())
    run_id = next(iter(tracking.values()))["run_id"]
    check = f"""
import csv, sys
from pathlib import Path
import mlflow, mlflow.pytorch, torch
from mlflow import MlflowClient
from galot_core.data.imagefolder import decode_images
assert MlflowClient().get_run({run_id!r}).info.status == "FINISHED"
model = mlflow.pytorch.load_model("runs:/{run_id}/model")
meta = mlflow.models.Model.load("runs:/{run_id}/model").metadata["galot"]
rows = list(csv.DictReader(open("pred.csv")))
size = meta["image_size"]
images, kept = decode_images([Path(r["image"]) for r in rows], (size, size), "L" if meta["channels"] == 1 else "RGB", "fail")
probs = model(images)
for r, p in zip(rows, probs):
    assert meta["class_names"][int(p.argmax())] == r["label"], (r, p)
    assert abs(float(p.max()) - float(r["probability"])) < 1e-5, (r, p)
print("same", len(rows))
"""
    r = subprocess.run([str(venv / "bin/python"), "-c", check], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "same 13" in r.stdout, r.stderr[-3000:]
