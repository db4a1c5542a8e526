"""Reading a diffusers folder: which family it holds, which classes load its components, and the
device/dtype/scheduler options that apply to every family.

Kept apart from the backend so that :mod:`galot_core.t2i.backend` holds the model and its sampling
loop only; the family modules (SDXL, FLUX) use the same helpers to load their own components.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch

from galot_core.devices import resolve_device
from galot_core.errors import GalotError, show

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# t2i.scheduler names → diffusers classes (all expose alphas_cumprod or sigmas, see schedule.predict_x0).
SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
              "unipc": "UniPCMultistepScheduler"}
_REQUIRED_COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer")
_LAYOUT = "model_index.json plus unet/, vae/, text_encoder/, tokenizer/, scheduler/"

# model_index.json's _class_name -> family. The family decides which components are loaded and
# how the denoiser is called (its class registers in galot_core.t2i.backend.FAMILIES); anything
# else is refused in one line.
# The libraries a model_index.json entry may name for a component galot loads: checked before
# anything is imported, so a folder cannot make galot import a module (and run its import-time code)
# by naming it. Every supported family's components come from these two (galot_core/t2i/tiny.py builds one of each).
COMPONENT_LIBRARIES = ("diffusers", "transformers")

PIPELINES: dict[str, str] = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
    "StableDiffusion3Pipeline": "sd3",
    "Flux2KleinPipeline": "flux2",
    "ZImagePipeline": "zimage",
}


def resolve_options(device: str, dtype: str, text_encoder_dtype: str, timestep_spacing: str | None,
                    scheduler: str | None) -> tuple[torch.device, torch.dtype, torch.dtype]:
    """Check the loading options before touching the disk or the network: (device, UNet/VAE dtype,
    text encoder dtype); see :meth:`DiffusersT2I.from_pretrained` for their meaning."""
    torch_device = resolve_device(device, "t2i.device")
    model_dtype = resolve_dtype(dtype, torch_device)
    if text_encoder_dtype not in DTYPES:
        raise GalotError(f"t2i.text_encoder_dtype: {text_encoder_dtype!r} is not one of {', '.join(DTYPES)}: "
                         "fix the value")
    if timestep_spacing is not None and timestep_spacing not in ("leading", "trailing", "linspace"):
        raise GalotError(
            f"t2i.timestep_spacing: {timestep_spacing!r} is not one of leading, trailing, linspace: fix the value"
        )
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise GalotError(f"t2i.scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}: fix the value")
    return torch_device, model_dtype, DTYPES[text_encoder_dtype]


def configured_scheduler(sched: Any, scheduler: str | None, timestep_spacing: str | None) -> Any:
    """The folder's scheduler ``sched``, replaced by :data:`SCHEDULERS` ``[scheduler]`` built from its
    config (same noise schedule) and with ``timestep_spacing`` overridden, where those are given."""
    if scheduler is not None:
        sched = getattr(diffusers, SCHEDULERS[scheduler]).from_config(sched.config)
    if timestep_spacing is not None:
        sched = type(sched).from_config(sched.config, timestep_spacing=timestep_spacing)
    return sched


def moved(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> torch.nn.Module:
    """``module`` on ``device``, cast only when the dtype really changes (diffusers warns on every
    ``.to(dtype=...)``, even a no-op one)."""
    module = module.to(device)
    return module if dtype is None or dtype == module.dtype else module.to(dtype=dtype)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise GalotError(f"t2i.dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}: fix the value")
    return DTYPES[dtype]


def pipeline_family(folder: Path) -> str:
    """The family of the pipeline that ``folder/model_index.json`` names; others are refused."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise GalotError(
            f"t2i.model: folder '{folder}' is missing model_index.json: point t2i.model at a diffusers folder "
            f"({_LAYOUT}), e.g. one written by pipeline.save_pretrained()"
        )
    class_name = _read_index(index_file).get("_class_name")
    if class_name not in PIPELINES:
        raise GalotError(
            f"t2i.model: '{folder}' holds a {show(class_name)} (model_index.json _class_name), which galot does not "
            f"support: use a model of one of {', '.join(PIPELINES)}"
        )
    return PIPELINES[class_name]


def component_loader(folder: Path, index: dict[str, tuple[str, str]], variant: str | None) -> Callable[..., Any]:
    """``load(name, **kwargs)``: the component ``folder/name`` with the class model_index.json names;
    weights of ``variant`` (e.g. fp16) for models (tokenizers and schedulers have no variants)."""

    def load(name: str, **kwargs: Any) -> Any:
        library, class_name = index[name]
        if variant and name.split("_")[0] not in ("tokenizer", "scheduler"):
            kwargs["variant"] = variant
        return load_component(folder, name, library, class_name, **kwargs)

    return load


def read_model_index(folder: Path, required: tuple[str, ...] = _REQUIRED_COMPONENTS,
                      optional: tuple[str, ...] = ("vae",), layout: str = _LAYOUT,
                      order: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                      ) -> dict[str, tuple[str, str]]:
    """The components listed in ``model_index.json`` as {name: (library, class)}; checks the folders exist.

    ``required`` must be listed and present; ``optional`` ones (SD's vae/ for pixel-space models)
    only when listed; ``order`` is the order in which missing folders are named.
    """
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise GalotError(
            f"t2i.model: folder '{folder}' is missing model_index.json: point t2i.model at a diffusers folder "
            f"({_LAYOUT}), e.g. one written by pipeline.save_pretrained()"
        )
    raw = _read_index(index_file)
    index = {name: entry for name in (*required, *optional)
             if (entry := _component_entry(index_file, name, raw.get(name))) is not None}
    # Optional components (pixel-space models list vae as [null, null]) are checked only when listed.
    expected = [name for name in order if name in required or name in index]
    problems = [f"{name}/" for name in expected if not (folder / name).is_dir()]
    problems += [f"{name} in model_index.json" for name in required if name not in index]
    if problems:
        optional_note = f" ({', '.join(f'{name}/' for name in optional)} optional)" if optional else ""
        raise GalotError(
            f"t2i.model: local folder '{folder}' is missing {', '.join(problems)}: a diffusers folder needs "
            f"{layout}{optional_note}; re-save it with pipeline.save_pretrained()"
        )
    return index


def _read_index(index_file: Path) -> dict[str, Any]:
    try:
        raw = json.loads(index_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict):
        raise GalotError(f"t2i.model: '{index_file}' is not a JSON object: re-save the model with "
                         "pipeline.save_pretrained()")
    return raw


def _component_entry(index_file: Path, name: str, entry: Any) -> tuple[str, str] | None:
    """model_index.json's ``[library, class]`` for component ``name``, checked without importing
    anything: the library one of :data:`COMPONENT_LIBRARIES` and installed, the class a public name;
    None when the component is not listed (absent, or ``[null, null]``)."""
    if entry is None or (isinstance(entry, list) and len(entry) == 2 and entry[0] is None and entry[1] is None):
        return None
    fix = "re-save the model with pipeline.save_pretrained() or fix that entry"
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise GalotError(f"t2i.model: '{index_file}' field '{name}' must be [library, class], got {show(entry)}; {fix}")
    library, class_name = entry
    if library not in COMPONENT_LIBRARIES:
        raise GalotError(f"t2i.model: '{index_file}' field '{name}' names library {show(library)}, which galot does "
                         f"not load components from (allowed: {', '.join(COMPONENT_LIBRARIES)}); {fix}")
    if not class_name.isidentifier() or class_name.startswith("_"):
        raise GalotError(f"t2i.model: '{index_file}' field '{name}' names class {show(class_name)}, which is not a "
                         f"class name; {fix}")
    if importlib.util.find_spec(library) is None:  # finds the package without running it
        raise GalotError(f"t2i.model: '{index_file}' field '{name}' needs {library}, which is not installed: "
                         f"pip install {library}")
    return library, class_name


def pipe_family(pipe: Any, expected: str | None = None) -> str:
    """The family of an already-built pipeline, by its class (or a base class) as :data:`PIPELINES` names
    it; a pipeline of no supported family, or not of ``expected``, is refused in one line."""
    family = next((PIPELINES[k.__name__] for k in type(pipe).__mro__ if k.__name__ in PIPELINES), None)
    if family is None or (expected is not None and family != expected):
        wanted = f"a pipeline of family {expected!r}" if expected else f"one of {', '.join(PIPELINES)}"
        raise GalotError(f"from_pipeline: pipe is a {type(pipe).__name__}, not {wanted}: pass such a pipeline, or "
                         "call DiffusersT2I.from_pipeline (it picks the family) or from_pretrained on its folder")
    return family


def load_component(folder: Path, name: str, library: str, class_name: str, **kwargs: Any) -> Any:
    """Load ``folder/name`` with the class that model_index.json names (e.g. transformers.BertModel);
    ``library`` was checked by :func:`read_model_index` before anything was imported."""
    if library not in COMPONENT_LIBRARIES:  # a caller that did not read the index through read_model_index
        raise GalotError(f"t2i.model: model_index.json names library {show(library)} for {name}/, which galot does "
                         f"not load components from (allowed: {', '.join(COMPONENT_LIBRARIES)})")
    component_class = getattr(importlib.import_module(library), class_name, None)
    if not isinstance(component_class, type) or not hasattr(component_class, "from_pretrained"):
        raise GalotError(
            f"t2i.model: model_index.json names {library}.{class_name} for {name}/, which the installed "
            f"{library} does not provide: install a matching {library} version"
        )
    try:
        return component_class.from_pretrained(folder / name, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GalotError(f"t2i.model: cannot load {name}/ from '{folder}' ({first_line}): re-save the model") from None


def load_components(folder: Path, required: tuple[str, ...], optional: tuple[str, ...] = (), *,
                    model_dtype: torch.dtype, text_encoder_dtype: torch.dtype, variant: str | None,
                    ) -> dict[str, Any]:
    """Every ``required`` component of ``folder`` and each ``optional`` one it lists (else ``None``),
    by its kind: denoiser and VAE in ``model_dtype``, text encoders in ``text_encoder_dtype``,
    tokenizers and the scheduler as saved. Missing folders are named in ``required`` order."""
    layout = "model_index.json plus " + ", ".join(f"{name}/" for name in required)
    index = read_model_index(folder, required, optional, layout, (*required, *optional))
    load = component_loader(folder, index, variant)

    def kwargs(name: str) -> dict[str, Any]:
        if name.startswith("text_encoder"):
            return {"dtype": text_encoder_dtype}
        return {} if name.startswith(("tokenizer", "scheduler")) else {"torch_dtype": model_dtype}

    return {name: load(name, **kwargs(name)) if name in index else None for name in (*required, *optional)}


def model_index_flag(folder: Path, key: str, default: bool) -> bool:
    """A pipeline's boolean config entry in ``model_index.json`` (SDXL's force_zeros_for_empty_prompt,
    FLUX.2's is_distilled)."""
    return bool(json.loads((folder / "model_index.json").read_text()).get(key, default))
