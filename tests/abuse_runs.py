"""Run folders written by hand for the hostile-input tests (tests/test_abuse_*.py), and `galot verify`'s
problem lines on one; the subprocess machinery is tests/hostile_util.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.hostile_util import cli, galot, human_run


def verify_problems(run: Path, capsys=None, budget_mb: int = 300) -> list[str]:
    """`galot verify RUN` (in this process with ``capsys``, else in a process with a memory limit):
    exit 1, no traceback; its problem lines."""
    r = cli(capsys, "verify", str(run)) if capsys is not None else galot("verify", str(run), budget_mb=budget_mb)
    assert "Traceback" not in r.err + r.out, (r.err + r.out)[-2000:]
    assert r.code == 1, (r.code, r.out, r.err)
    return [line for line in r.out.splitlines() if not line.startswith("galot verify:")]


def write_cycle(run: Path, metrics, manifest: list | None = None) -> None:
    cdir = run / "cycles" / "cycle_001"
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if manifest is not None:
        folder = run / "synthetic" / "cycle_001"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in manifest))


GOOD_METRICS = {"cycle": 1, "labelled": 0, "generated": 0, "epsilon": 0.0, "test_accuracy": None, "files": {}}


FINISHED_ROW = {**GOOD_METRICS, "test_accuracy": 0.5, "seconds": {"train": 1.0}, "unet_calls": {}}


def finished_run(tmp: Path, classes: int = 2) -> Path:
    """``human_run`` with cycle 1 complete and its run-level copies written, as write_summary leaves them,
    and a folder of two images for the dataset (predict loads it for the model card)."""
    from PIL import Image

    run = human_run(tmp)
    (tmp / "imgs").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(tmp / "imgs" / f"img{i}.png")
    write_cycle(run, FINISHED_ROW)
    from galot_core.checkpoint import save_classifier
    from galot_core.models import build_model

    torch.manual_seed(0)
    save_classifier(build_model("small_cnn", 3, classes, 0.2), run / "cycles" / "cycle_001" / "model.safetensors",
                    arch="small_cnn", in_channels=3)
    (run / "classifier.safetensors").write_bytes((run / "cycles" / "cycle_001" / "model.safetensors").read_bytes())
    (run / "metrics.json").write_text(json.dumps([FINISHED_ROW]))
    (run / "summary.json").write_text(json.dumps({"cycles": 1, "labelled": 0, "generated": 0,
                                                  "final_test_accuracy": 0.5, "mean_test_accuracy": 0.5}))
    (run / "code.json").write_text(json.dumps({"sha256": "0" * 64}))
    params = tmp / "params.yaml"
    import yaml

    params.write_text(yaml.safe_dump(json.loads((run / "config.json").read_text())))
    return run
