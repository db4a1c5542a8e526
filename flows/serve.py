"""Serve the ``galot`` deployments so a Prefect server can run them: ``galot serve``.

With ``prefect server start`` running and ``PREFECT_API_URL`` pointing at it, this
process registers three deployments and runs whatever is triggered on them:

- ``galot/cycle`` — one more cycle of the experiment (``prefect deployment run galot/cycle``)
- ``galot-run/run`` — all remaining cycles
- ``galot-transfer/transfer`` — the transfer architectures on the cached dataset

Their default parameters are the experiment's :class:`~galot_core.config.Config` as read
here (``params.yaml`` with the ``--set`` overrides, validated once): the Prefect UI shows it as
a form, one field per key, and a run can change any of them there, or with
``prefect deployment run galot/cycle -p overrides='["gal.epsilon=0.1"]'``. The values are those
of ``params.yaml`` when ``galot serve`` started: restart it after editing the file.
``galot/cycle`` and ``galot-run/run`` pause for labels (``pause_for_labels: true``) in human-oracle experiments: the flow run waits, *Paused*, until
the batch is labelled with ``galot label serve`` (whose done button resumes it) or the
run is resumed from the UI with the labels as input.
"""

from __future__ import annotations

import os
from pathlib import Path

from galot_core.errors import GalotError
from galot_core.params_file import load_config


def serve(params: str | None = "params.yaml", overrides: list[str] | None = None) -> None:
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    from galot.flows.galot import galot_cycle, galot_run, galot_transfer

    if not PREFECT_API_URL.value():
        raise GalotError("PREFECT_API_URL is not set: start a server with `prefect server start` (it listens on "
                         "127.0.0.1:4200) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`, then rerun")
    # params None: no params.yaml, every key at its default (paths relative to this folder)
    parameters = {"config": load_config(params, list(overrides or [])).to_dict()}
    waiting = {**parameters, "pause_for_labels": True}  # a served run waits for labels, paused
    if params:
        os.chdir(Path(params).resolve().parent)  # relative paths in params.yaml resolve next to it
    prefect_serve(
        galot_cycle.to_deployment(name="cycle", parameters=waiting,
                                  description="Advance the experiment by one active-learning cycle"),
        galot_run.to_deployment(name="run", parameters=waiting, description="Run all remaining cycles"),
        galot_transfer.to_deployment(name="transfer", parameters=parameters,
                                     description="Train other architectures on the cached dataset"),
    )


if __name__ == "__main__":
    serve()
