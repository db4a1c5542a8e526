"""Scale-out: the same GALOT cycles on prefect-dask's DaskTaskRunner (a local cluster of two
worker processes) and on the default thread runner give byte-identical results.

TextOpt fans out per group of classes and generation per shard; which process runs a task
must not change a single byte of the synthetic set, its manifest or the embeddings.
"""

from __future__ import annotations

import pytest

from galot_core import synthetic
from galot_core.params_file import load_config
from tests.test_flows import write_params

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dask_runner_matches_thread_runner(prefect_api, tmp_path, tiny_sd_folder):
    pytest.importorskip("prefect_dask")
    from galot.flows.galot import galot_run

    runs = {}
    for runner in ("thread", "dask"):
        (tmp_path / runner).mkdir()
        params = write_params(tmp_path / runner, tiny_sd_folder, name=runner, t2i={"batch_size": 4},
                              runner={"task_runner": runner, "dask_workers": 2, "shard_size": 4,
                                      "textopt_classes_per_task": 3})
        rows = galot_run(load_config(params))
        assert [r["generated"] for r in rows] == [10, 20]
        runs[runner] = tmp_path / runner / "runs" / runner

    for cycle in (1, 2):
        thread = _files(synthetic.cycle_folder(runs["thread"], cycle))
        dask = _files(synthetic.cycle_folder(runs["dask"], cycle))
        assert sorted(thread) == sorted(dask) and "manifest.jsonl" in thread
        assert [k for k in thread if thread[k] != dask[k]] == []  # images and manifest, byte for byte
        assert not any(k.startswith(".") for k in thread)  # shard part files were merged away
        emb = f"cycles/cycle_{cycle:03d}/embeddings.safetensors"
        assert (runs["thread"] / emb).read_bytes() == (runs["dask"] / emb).read_bytes()
        assert len(list(synthetic.cycle_folder(runs["dask"], cycle).glob("*/*.png"))) == 10 * cycle
