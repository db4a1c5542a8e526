"""Fault injection: SIGKILL a real `galot run` at points of a tiny cycle, rerun the same
command, and compare the result byte for byte with an uninterrupted run.

The kill is real (galot_core/faults.py: the process sends itself SIGKILL at a named
failpoint — no cleanup code runs). Compared: the labelled pool, every synthetic image
and manifest, the exported shards, the optimised embeddings, the classifiers and the
metrics (all but wall-clock seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_flows import write_params

BIN = Path(sys.executable).parent
FAILPOINTS = [
    "select.after_save",            # labels bought, nothing else of the cycle done
    "textopt.step:2",               # in the middle of PGD (cycle 2)
    "generate.mid_batch",           # PNGs of a batch on disk, manifest not yet updated
    "generate.after_batch:2",       # between generation batches
    "train.step:6",                 # in the middle of training (cycle 2)
    "evaluate.before_metrics",      # everything but the cycle's completion mark
    "write.before_rename:4",        # a state file's temp copy complete, not yet renamed
    "write.before_rename:30",       # … later: while writing synthetic images
]


def galot(params: Path, env: dict, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = dict(env)
    if failpoint:
        env["GALOT_FAILPOINT"] = failpoint
    return subprocess.run([str(BIN / "galot"), "run", "--params", str(params)], env=env, capture_output=True,
                          text=True, timeout=600)


def fingerprint(run_dir: Path) -> dict[str, str]:
    """Everything a run computed, by relative path (wall-clock seconds left out)."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if not path.is_file() or rel in ("tracking.json", "config.json") or rel.startswith(".") or "/." in rel:
            continue
        if rel.endswith(("metrics.json", "train.json")):
            data = json.loads(path.read_text())
            for row in data if isinstance(data, list) else [data]:
                row.pop("seconds", None)
            out[rel] = json.dumps(data, sort_keys=True)
        elif rel == "summary.json":
            out[rel] = path.read_text()
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sd_folder, prefect_api):
    root = tmp_path_factory.mktemp("faults")
    env = dict(os.environ, PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1")

    def params_in(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return write_params(folder, tiny_sd_folder, name="crash", gal={"steps": 2, "samples": 2},
                            t2i={"batch_size": 8}, tracking={"mlflow": False})

    ref = params_in(root / "reference")
    r = galot(ref, env)
    assert r.returncode == 0, r.stderr[-2000:]
    return root, env, params_in, fingerprint(root / "reference/runs/crash")


@pytest.mark.parametrize("point", FAILPOINTS)
def test_sigkill_then_rerun_matches_uninterrupted_run(setup, point):
    root, env, params_in, reference = setup
    params = params_in(root / point.replace(":", "-").replace(".", "-"))
    killed = galot(params, env, failpoint=point)
    assert killed.returncode == -9, f"{point} was never reached:\n{killed.stderr[-1500:]}"
    resumed = galot(params, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = fingerprint(params.parent / "runs/crash")
    assert got.keys() == reference.keys()
    differ = [k for k in got if got[k] != reference[k]]
    assert differ == [], {k: (reference[k], got[k]) for k in differ if k.endswith(".json")}
    verify = subprocess.run([str(BIN / "galot"), "verify", str(params.parent / "runs/crash")], env=env,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
