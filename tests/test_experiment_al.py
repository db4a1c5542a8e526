"""An AL-only experiment end to end on a tiny digit task, and the CLI around it."""

import json
import subprocess
import sys

import pytest

from galot_core.config import config_from_dict
from galot_core.errors import GalotError
from galot_core.experiment import Experiment
from galot_core.io import read_json


def tiny_cfg(tmp_path, **sections):
    raw = {
        "experiment": {"name": "t", "runs_dir": str(tmp_path), "mode": "al", "cycles": 3, "seed": 1},
        "al": {"strategy": "MarginSampling", "budget_per_cycle": 20},
        "train": {"epochs": 1, "min_steps": 4, "device": "cpu"},  # as few steps as the GAL tests
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


@pytest.mark.parametrize("strategy", ["MarginSampling", "BADGE", "LossPrediction"])
def test_al_run_grows_the_labelled_pool(tmp_path, tiny_digits, strategy):
    cfg = tiny_cfg(tmp_path, al={"strategy": strategy})
    rows = Experiment(cfg, dataset=tiny_digits).run()
    assert [r["labelled"] for r in rows] == [20, 40, 60]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    pool = read_json(cfg.run_dir / "pool.json")
    assert len(set(pool["labelled"])) == 60 and pool["cycles"] == [1] * 20 + [2] * 20 + [3] * 20
    # The oracle revealed the true labels.
    assert pool["labels"] == tiny_digits.pool.labels[pool["labelled"]].tolist()


def test_rerun_resumes_and_is_deterministic(tmp_path, tiny_digits):
    cfg = tiny_cfg(tmp_path, experiment={"cycles": 2})
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.run_cycle()
    first = (cfg.run_dir / "cycles" / "cycle_001" / "model.safetensors").read_bytes()
    # Raising the cycle count continues the same experiment; finished cycles are not redone.
    cfg3 = tiny_cfg(tmp_path, experiment={"cycles": 3})
    rows = Experiment(cfg3, dataset=tiny_digits).run()
    assert [r["cycle"] for r in rows] == [1, 2, 3]
    assert (cfg.run_dir / "cycles" / "cycle_001" / "model.safetensors").read_bytes() == first
    # A second experiment with the same seed reproduces the same picks and accuracies.
    other = tiny_cfg(tmp_path / "again", experiment={"cycles": 3})
    rows2 = Experiment(other, dataset=tiny_digits).run()
    assert rows2 == [dict(r, seconds=r2["seconds"]) for r, r2 in zip(rows, rows2)]
    assert read_json(other.run_dir / "pool.json") == read_json(cfg.run_dir / "pool.json")


def test_changed_parameters_are_refused(tmp_path, tiny_digits):
    Experiment(tiny_cfg(tmp_path, experiment={"cycles": 1}), dataset=tiny_digits).run()
    with pytest.raises(GalotError, match="al.strategy: experiment 't' .* was started with 'MarginSampling'"):
        Experiment(tiny_cfg(tmp_path, al={"strategy": "BALD"}), dataset=tiny_digits).run()


def test_budget_larger_than_pool(tmp_path, tiny_digits):
    cfg = tiny_cfg(tmp_path, al={"budget_per_cycle": 101})  # 3 cycles × 101 > 300 pool images
    with pytest.raises(GalotError, match="al.budget_per_cycle: 3 cycles × 101 = 303 labels, but the pool has only 300"):
        Experiment(cfg, dataset=tiny_digits).run()
    assert not cfg.run_dir.exists()  # refused before anything was written


def test_cli_bad_param_is_one_line_exit_2(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("al:\n  strategy: Margin\n")
    r = subprocess.run([sys.executable, "-m", "galot.flows.cli", "run", "--params", str(params)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "al.strategy must be one of" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "galot.flows.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "cycle" in r.stdout
