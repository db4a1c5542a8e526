"""`galot init`, `galot --version`, and commands in a folder without params.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from galot.flows.cli import main
from galot.flows.project_commands import starter_dvc_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("galot 0.")


def test_init_writes_a_project_dvc_accepts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "proj"]) == 0
    proj = tmp_path / "proj"
    assert (proj / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    dvc = yaml.safe_load((proj / "dvc.yaml").read_text())
    assert dvc["stages"].keys() == yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].keys()
    deps = [d for st in dvc["stages"].values() for d in st.get("do", st).get("deps") or []]
    assert deps and not any(d.startswith(("galot_core", "tasks", "flows")) for d in deps)  # code is installed there
    assert "/runs/" in (proj / ".gitignore").read_text()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=proj, check=True, env=env)
    r = subprocess.run(["dvc", "stage", "list"], cwd=proj, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "transfer@vgg16" in r.stdout, r.stderr
    # A second init does not overwrite a project: one line, exit 2.
    capsys.readouterr()
    assert main(["init", "proj"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists; pass --force" in err[0]


def test_starter_drops_a_deps_key_left_empty():
    text = "stages:\n  a:\n    cmd: x\n    deps:\n      - galot_core/io.py\n      - tasks\n    params:\n      - data\n"
    assert yaml.safe_load(starter_dvc_yaml(text)) == {"stages": {"a": {"cmd": "x", "params": ["data"]}}}


def test_commands_without_params_yaml_use_the_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert "params.yaml" not in err and "experiment.name: 'default' has no completed cycle" in err
    assert main(["report", "--params", "missing.yaml"]) == 2
    assert "missing.yaml: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux", "sd3", "flux2", "zimage"])
def test_init_with_a_preset_writes_its_settings(family, tmp_path, monkeypatch, capsys):
    """`galot init --preset F`: the family's settings and example model in a params.yaml that loads,
    the rest of the starter file (comments included) unchanged."""
    from galot_core.params_file import load_config
    from galot_core.t2i.presets import PRESETS, preset_settings

    monkeypatch.chdir(tmp_path)
    assert main(["init", "proj", "--preset", family]) == 0
    text = (tmp_path / "proj" / "params.yaml").read_text()
    cfg = load_config(tmp_path / "proj" / "params.yaml")
    for dotted, value in preset_settings(family).items():
        section, key = dotted.split(".")
        assert getattr(getattr(cfg, section), key) == value, dotted
    assert cfg.t2i.model == PRESETS[family].example and cfg.t2i.allow_download
    starter = (ROOT / "params.yaml").read_text()
    assert cfg.data == load_config(ROOT / "params.yaml").data and "# σ_GAL" in text
    assert len(text.splitlines()) - len(starter.splitlines()) <= 3  # keys the starter lacks are added, not more
    if preset_settings(family)["t2i.steps"] != load_config(ROOT / "params.yaml").t2i.steps:  # galot-mini's reasons go
        assert "# galot-mini: 4 DDIM steps" not in text and f"# galot init --preset {family}" in text
    assert "| full | tweedie | last_m" in text  # a rewritten key keeps its trailing comment


def test_set_in_text_keeps_what_still_holds():
    from galot_core.params_file import set_in_text

    text = ("t2i:\n  # why 4 steps\n  steps: 4    # 1-50\n  # why auto\n  dtype: auto\n"
            "gal:\n  template: \"a # b {label}\"\n")
    out = set_in_text(text, {"t2i.steps": 30, "t2i.dtype": "auto", "gal.template": "{label}", "t2i.device": "cpu"},
                      note="preset")
    assert out == ("t2i:\n  # preset\n  steps: 30   # 1-50\n  # why auto\n  dtype: auto\n  device: \"cpu\"\n"
                   "gal:\n  template: \"{label}\"\n")
    assert set_in_text(text, {"t2i.steps": 30}) == text.replace("steps: 4    #", "steps: 30   #")


def test_init_preset_with_a_local_model_and_bad_inputs(tmp_path, monkeypatch, capsys):
    from galot_core.params_file import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-sdxl").mkdir()
    assert main(["init", "a", "--preset", "sdxl", "--model", "my-sdxl"]) == 0
    cfg = load_config(tmp_path / "a" / "params.yaml")
    assert cfg.t2i.model == "my-sdxl" and not cfg.t2i.allow_download  # a local folder is never downloaded
    capsys.readouterr()
    for argv, expected in ((["init", "b", "--preset", "sd4"], "--preset: 'sd4' is not a model family; use one of sd,"),
                           (["init", "c", "--model", "x"], "--model: only with --preset FAMILY")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / argv[1]).exists()  # nothing written
