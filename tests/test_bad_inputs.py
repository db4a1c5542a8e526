"""Every bad input of the reliability issue, through the CLI's own entry point: one line
naming the field and the fix, exit code 2, no traceback, and the run folder unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galot.flows.cli import main
from tests.test_flows import write_params


def png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", 40 * c + i)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def case_imagefolder_missing(tmp):
    return ["data.dataset=imagefolder", f"data.root={tmp / 'nowhere'}"], "data.root: folder"


def case_imagefolder_empty_class(tmp):
    root = image_folder(tmp / "imgs")
    (root / "bird").mkdir()
    return ["data.dataset=imagefolder", f"data.root={root}"], "is empty"


def case_imagefolder_corrupt_fail(tmp):
    root = image_folder(tmp / "imgs")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    return ["data.dataset=imagefolder", f"data.root={root}", "data.on_bad_image=fail"], "cannot read image"


def case_class_names_mismatch(tmp):
    root = image_folder(tmp / "imgs")
    names = tmp / "names.json"
    names.write_text(json.dumps({"cat": "cat", "wolf": "wolf"}))
    return ["data.dataset=imagefolder", f"data.root={root}", f"data.class_names_file={names}"], \
        "data.class_names_file:"


def case_model_folder_incomplete(tmp):
    folder = tmp / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    return ["experiment.mode=al+gal", f"t2i.model={folder}"], "t2i.model: local folder"


CASES = {
    "unknown key": (["gal.epsilo=0.1"], "unknown key 'gal.epsilo'"),
    "mistyped value": (["al.budget_per_cycle=ten"], "al.budget_per_cycle must be an integer"),
    "negative epsilon": (["gal.epsilon=-0.1"], "gal.epsilon must be >= 0"),
    "B_AL larger than the pool": (["al.budget_per_cycle=5000"], "al.budget_per_cycle: 2 cycles × 5000"),
    "zero cycles": (["experiment.cycles=0"], "experiment.cycles must be >= 1"),
    "unknown strategy": (["al.strategy=Margin"], "al.strategy must be one of"),
    "unknown architecture": (["model.arch=resnet50"], "model.arch must be one of"),
    "unknown dataset": (["data.dataset=imagenet"], "data.dataset must be one of"),
    "escaping experiment name": (["experiment.name=../x"], "experiment.name must be a plain folder name"),
    "override without value": (["gal.epsilon"], "expected section.key=value"),
    "unknown model id, downloads off": (["experiment.mode=al+gal", "t2i.model=nobody/no-such-model"],
                                        "t2i.model: 'nobody/no-such-model' is not a local folder"),
    "unknown model id, hub unreachable": (["experiment.mode=al+gal", "t2i.model=nobody/no-such-model",
                                           "t2i.allow_download=true"], "HF_HUB_OFFLINE is set"),
    "missing dataset folder": case_imagefolder_missing,
    "empty class folder": case_imagefolder_empty_class,
    "corrupt image, on_bad_image=fail": case_imagefolder_corrupt_fail,
    "class-name file not matching the folders": case_class_names_mismatch,
    "model folder missing components": case_model_folder_incomplete,
}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory, tiny_sd_folder, prefect_api):
    """A fresh experiment name per case, next to a run folder with one completed cycle."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    params = write_params(tmp, tiny_sd_folder, name="kept", mode="al", tracking={"mlflow": False})
    assert main(["run", "--params", str(params), "--set", "experiment.cycles=1"]) == 0
    return tmp, params


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(name, existing_run, tmp_path, capsys):
    tmp, params = existing_run
    case = CASES[name]
    overrides, expected = case(tmp_path) if callable(case) else case
    runs = tmp / "runs"
    before = snapshot(runs)
    capsys.readouterr()
    sets = [x for o in overrides for x in ("--set", o)]
    code = main(["run", "--params", str(params), "--set", "experiment.name=fresh", *sets])
    err = capsys.readouterr().err.strip()
    print(f"{name}: exit {code}: {err.splitlines()[-1] if err else ''}")
    assert code == 2
    last = err.splitlines()[-1]
    assert last.startswith("galot: error: ") and expected in last
    assert "Traceback" not in err
    assert snapshot(runs) == before  # nothing written, nothing lost


def test_incompatible_change_to_an_existing_run_is_refused(existing_run, capsys):
    tmp, params = existing_run
    before = snapshot(tmp / "runs")
    code = main(["run", "--params", str(params), "--set", "al.strategy=BALD", "--set", "experiment.cycles=2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "al.strategy: experiment 'kept'" in err and "use a new experiment.name" in err
    assert snapshot(tmp / "runs") == before


def test_corrupt_image_is_skipped_with_a_warning_naming_it(tmp_path, capsys):
    from galot_core.data.imagefolder import load_imagefolder

    root = image_folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        d = load_imagefolder(str(root), test_fraction=0.25, on_bad_image="skip")
    assert len(d.pool) + len(d.test) == 12
