"""Training another architecture on a finished experiment's cached data, as a Prefect task."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from galot_core.config import Config
from galot_core.transfer import transfer, transfer_dir


@task(name="transfer", cache_policy=NO_CACHE)
def train_transfer(cfg: Config, arch: str) -> dict[str, Any]:
    """Train ``arch`` on the exported real + synthetic set; never loads the diffusion model."""
    metrics = transfer(cfg, arch)
    return {**metrics, "model": str(transfer_dir(cfg, arch) / "model.safetensors")}
