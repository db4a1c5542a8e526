"""Hostile models (issue 30): the component libraries model_index.json names are checked against an
allow-list before anything is imported (a module named there never runs), and
DiffusersT2I.from_pipeline picks the family of the pipeline it is given or refuses in one line."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from galot_core.errors import GalotError  # noqa: E402
from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.t2i.flux import FluxT2I  # noqa: E402
from galot_core.t2i.sd3 import SD3T2I  # noqa: E402
from galot_core.t2i.sdxl import SDXLT2I  # noqa: E402
from galot_core.t2i.zimage import ZImageT2I  # noqa: E402
from galot_core.t2i.tiny import (tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline,  # noqa: E402
                                 tiny_z_image_pipeline)
from galot_core.t2i.tiny import tiny_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_sd(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def _copy_with_entry(saved: Path, dest: Path, name: str, entry) -> Path:
    import shutil

    shutil.copytree(saved, dest)
    index = json.loads((dest / "model_index.json").read_text())
    index[name] = entry
    (dest / "model_index.json").write_text(json.dumps(index))
    return dest


def _refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(GalotError) as info:
        DiffusersT2I.from_pretrained(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_a_module_named_in_model_index_is_never_imported(saved_sd, tmp_path, monkeypatch):
    marker = tmp_path / "imported.marker"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "galot_side_effect_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nclass UNet2DConditionModel: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    folder = _copy_with_entry(saved_sd, tmp_path / "model", "unet", ["galot_side_effect_mod", "UNet2DConditionModel"])
    _refused(folder, "model_index.json' field 'unet'", "'galot_side_effect_mod'", "allowed: diffusers, transformers")
    assert not marker.exists() and "galot_side_effect_mod" not in sys.modules
    importlib.import_module("galot_side_effect_mod")  # the control: importing it does leave the marker
    assert marker.read_text() == "ran"
    sys.modules.pop("galot_side_effect_mod", None)


@pytest.mark.parametrize("name, entry, expected", [
    ("text_encoder", ["os", "system"], "library 'os'"),
    ("scheduler", ["subprocess", "Popen"], "library 'subprocess'"),
    ("tokenizer", ["no_such_library_galot", "Tok"], "library 'no_such_library_galot'"),
    ("unet", ["diffusers.utils", "UNet2DConditionModel"], "library 'diffusers.utils'"),
    ("unet", ["diffusers", "__class__"], "not a class name"),
    ("unet", ["diffusers"], "must be [library, class]"),
    ("unet", "diffusers.UNet2DConditionModel", "must be [library, class]"),
    ("unet", ["diffusers", "logging"], "does not provide"),          # a module, not a class
])
def test_bad_component_entries_are_one_line(saved_sd, tmp_path, name, entry, expected):
    folder = _copy_with_entry(saved_sd, tmp_path / "model", name, entry)
    _refused(folder, "t2i.model:", expected)


def test_model_index_that_is_not_an_object_is_one_line(saved_sd, tmp_path):
    import shutil

    shutil.copytree(saved_sd, tmp_path / "m")
    (tmp_path / "m" / "model_index.json").write_text("[1, 2]")
    _refused(tmp_path / "m", "is not a JSON object")


def test_the_untouched_folder_still_loads(saved_sd):
    assert type(DiffusersT2I.from_pretrained(saved_sd, device="cpu")) is DiffusersT2I


# ------------------------------------------------------------------------ from_pipeline


@pytest.mark.parametrize("build, cls, kwargs", [
    (tiny_sdxl_pipeline, SDXLT2I, {}),
    (tiny_sd3_pipeline, SD3T2I, {"max_sequence_length": 16}),
    (tiny_flux_pipeline, FluxT2I, {"max_sequence_length": 16, "resolution": 16}),
    (tiny_z_image_pipeline, ZImageT2I, {"max_sequence_length": 64, "resolution": 16}),
    (tiny_sd_pipeline, DiffusersT2I, {}),
])
def test_from_pipeline_picks_the_family_of_the_pipeline(build, cls, kwargs):
    pipe = build()
    backend = DiffusersT2I.from_pipeline(pipe, **kwargs)
    assert type(backend) is cls
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    assert backend.denoiser is denoiser  # shared, not copied
    tokens = backend.encode_conditioning(["a cat"]).tokens if hasattr(backend, "encode_conditioning") else \
        backend.encode(["a cat"])
    assert tokens.shape[0] == 1


def test_from_pipeline_refuses_what_is_not_a_supported_pipeline():
    from diffusers import StableDiffusionImg2ImgPipeline

    sd = tiny_sd_pipeline()
    img2img = StableDiffusionImg2ImgPipeline(**sd.components)
    for pipe in (img2img, sd.scheduler):
        with pytest.raises(GalotError) as info:
            DiffusersT2I.from_pipeline(pipe)
        message = str(info.value)
        assert "\n" not in message and f"pipe is a {type(pipe).__name__}" in message
        assert "StableDiffusionXLPipeline" in message  # the supported ones are named


def test_a_family_class_refuses_another_familys_pipeline():
    class OtherSD(DiffusersT2I):  # a family class that keeps the base from_pipeline
        family = "sd-test-other"

    try:
        with pytest.raises(GalotError, match="not a pipeline of family 'sd-test-other'"):
            OtherSD.from_pipeline(tiny_sd_pipeline())
    finally:
        from galot_core.t2i.backend import FAMILIES

        FAMILIES.pop("sd-test-other", None)


def test_cli_refuses_the_folder_with_exit_2_before_writing_or_importing(saved_sd, tmp_path, monkeypatch, capsys):
    import yaml

    from galot.flows.cli import main

    marker = tmp_path / "imported.marker"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "galot_cli_side_effect.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    folder = _copy_with_entry(saved_sd, tmp_path / "model", "text_encoder", ["galot_cli_side_effect", "CLIPTextModel"])
    runs = tmp_path / "runs"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"runs_dir": str(runs), "name": "m", "mode": "al+gal",
                                                     "judge": None},
                                      "t2i": {"model": str(folder), "device": "cpu"}, "tracking": {"mlflow": False}}))
    code = main(["run", "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert "field 'text_encoder'" in err and "'galot_cli_side_effect'" in err
    assert not marker.exists() and not runs.exists()
