"""The Prefect flows on a tiny config: 2 cycles in each mode, artifacts, MLflow, transfer.

Flows run in-process against a temporary Prefect API (tests/conftest.py::prefect_api);
the real mnist5k digits and a tiny random Stable Diffusion pipeline keep them fast.
"""

from __future__ import annotations

import pytest
import yaml

from galot_core import export, synthetic
from galot_core.checkpoint import load_classifier
from galot_core.params_file import load_config


pytestmark = pytest.mark.usefixtures("one_thread")


def write_params(tmp_path, model, name="f", mode="al+gal", experiment=None, **sections):
    raw = {
        "experiment": {"name": name, "runs_dir": str(tmp_path / "runs"), "mode": mode, "cycles": 2, "seed": 1,
                       "judge": None},
        "al": {"budget_per_cycle": 10},
        "gal": {"epsilon": 0.5, "steps": 1, "samples": 2},
        "t2i": {"model": str(model), "steps": 2, "guidance_scale": 2.0, "batch_size": 16, "device": "cpu"},
        "train": {"epochs": 1, "min_steps": 4, "device": "cpu"},
        "transfer": {"archs": ["small_cnn"], "epochs": 1, "min_steps": 3},
        "baselines": {"strategies": ["RandomSampling"]},
    }
    raw["experiment"].update(experiment or {})
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def mlflow_run(name):
    from mlflow import MlflowClient

    from galot.tasks.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name("galot")
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize("mode, labelled, generated", [
    ("al", [10, 20], [0, 0]),
    ("gal", [0, 0], [10, 20]),
    ("al+gal", [10, 20], [10, 20]),
])
def test_run_flow_two_cycles_each_mode(prefect_api, tmp_path, tiny_sd_folder, mode, labelled, generated):
    from galot.flows.galot import galot_run

    name = f"flow-{mode.replace('+', '-')}"
    params = write_params(tmp_path, tiny_sd_folder, name=name, mode=mode)
    rows = galot_run(load_config(params))
    assert [r["cycle"] for r in rows] == [1, 2]
    assert [r["labelled"] for r in rows] == labelled and [r["generated"] for r in rows] == generated
    run_dir = tmp_path / "runs" / name
    index = export.read_index(run_dir / "dataset")
    assert len(index["shards"]) == (2 if mode != "al" else 0)
    assert (run_dir / "summary.json").exists() and (run_dir / "accuracy.csv").read_text().count("\n") == 3
    load_classifier(run_dir / "classifier.safetensors")  # safetensors, nothing unpickled

    client, run = mlflow_run(name)
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert run.data.params["experiment.mode"] == mode and run.data.params["al.budget_per_cycle"] == "10"
    assert "seconds_train" in run.data.metrics and "labelled" in run.data.metrics
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "grids", "metrics.json"} <= paths
    assert {"model/classifier.safetensors", "model/MLmodel"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "grids")}
    assert grids == {"grids/cycle_001", "grids/cycle_002"}
    assert run.info.status == "FINISHED"


def test_logged_model_is_a_real_mlflow_model(prefect_api, tmp_path, tiny_sd_folder, mnist5k):
    """`mlflow.pytorch.load_model` and pyfunc give galot's own predictions, from a pickle-free pt2 file."""
    import mlflow.pyfunc
    import mlflow.pytorch
    import torch

    from galot.flows.galot import galot_run
    from galot_core.predict import load_predictor

    params = write_params(tmp_path, tiny_sd_folder, name="mlmodel", mode="al")
    galot_run(load_config(params))
    client, run = mlflow_run("mlmodel")
    uri = f"runs:/{run.info.run_id}/model"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model/data")}
    assert files == {"model/data/model.pt2"}  # torch.export archive, no pickle
    predictor, card = load_predictor(tmp_path / "runs" / "mlmodel")
    images = mnist5k.test.images[:7]
    with torch.no_grad():
        ours = predictor(images)
    theirs = mlflow.pytorch.load_model(uri)(images)
    assert torch.allclose(ours, theirs, atol=1e-5) and torch.equal(ours.argmax(1), theirs.argmax(1))
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert torch.allclose(ours, torch.as_tensor(pyfunc.predict(images.numpy())), atol=1e-5)
    assert pyfunc.metadata.metadata["galot"]["class_names"][7] == "seven"


def test_mlflow_run_ends_with_the_flow_and_reopens(prefect_api, tmp_path, tiny_sd_folder):
    from galot.flows.galot import galot_cycle

    params = write_params(tmp_path, tiny_sd_folder, name="lifecycle", mode="al")
    galot_cycle(load_config(params))
    client, run = mlflow_run("lifecycle")
    assert run.info.status == "FINISHED"
    # A failing cycle (the classifier cannot be built: unknown device) ends the reopened run FAILED.
    with pytest.raises(Exception):
        galot_cycle(load_config(params), ["train.device=nodevice"])
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    galot_cycle(load_config(params))  # resumed: the same run, reopened, then FINISHED
    client, again = mlflow_run("lifecycle")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")) == [1, 2]


def test_cycle_flow_advances_by_one_and_makes_artifacts(prefect_api, tmp_path, tiny_sd_folder):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from galot.flows.galot import galot_cycle

    params = write_params(tmp_path, tiny_sd_folder, name="one-by-one")
    first = galot_cycle(load_config(params))
    second = galot_cycle(load_config(params))
    assert (first["cycle"], second["cycle"]) == (1, 2)
    assert second["unet_calls"]["textopt"] > 0 and second["unet_calls"]["generate"] > 0
    with get_client(sync_client=True) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["galot-one-by-one-accuracy"])))
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["galot-one-by-one-summary"])))
    assert len(table) == 2 and len(summary) == 2  # one of each per cycle
    assert any("cycle 2 of 2" in a.data for a in summary)
    # Rerunning a finished experiment is a clear error, not a silent third cycle.
    from galot_core.errors import GalotError

    with pytest.raises(GalotError, match="experiment.cycles"):
        galot_cycle(load_config(params))


def test_transfer_flow_reuses_cached_data_without_the_t2i_model(prefect_api, tmp_path, tiny_sd_folder):
    from galot.flows.galot import galot_run, galot_transfer

    params = write_params(tmp_path, tiny_sd_folder, name="tr")
    galot_run(load_config(params))
    run_dir = tmp_path / "runs" / "tr"
    manifests = {c: synthetic.read_manifest(synthetic.cycle_folder(run_dir, c)) for c in (1, 2)}
    # The T2I model is made unreachable: transfer must never need it.
    results = galot_transfer(load_config(params), ["t2i.model=/nonexistent/model"], ["small_cnn", "mobilenet_v2"])
    assert [r["arch"] for r in results] == ["small_cnn", "mobilenet_v2"]
    assert all(r["real"] == 20 and r["generated"] == 20 and r["unet_calls"] == 0 for r in results)
    assert {c: synthetic.read_manifest(synthetic.cycle_folder(run_dir, c)) for c in (1, 2)} == manifests
    model, _, _ = load_classifier(run_dir / "transfer/mobilenet_v2/model.safetensors")
    assert type(model).__name__ == "Classifier"
    client, run = mlflow_run("tr-transfer-mobilenet_v2")
    assert run.data.metrics["unet_calls"] == 0 and run.data.params["arch"] == "mobilenet_v2"


def test_judge_scores_pseudo_labels_when_it_exists(prefect_api, tmp_path, tiny_sd_folder, mnist5k):
    from galot.flows.galot import galot_cycle
    from galot_core.checkpoint import save_classifier
    from galot_core.models import build_model

    judge = tmp_path / "judge.safetensors"
    save_classifier(build_model("small_cnn", 1, 10, 0.2), judge, arch="small_cnn", in_channels=1)
    params = write_params(tmp_path, tiny_sd_folder, name="judged", experiment={"judge": str(judge)})
    m = galot_cycle(load_config(params))
    assert m["judged_accuracy"] is not None and 0.0 <= m["judged_accuracy"] <= 1.0
    client, run = mlflow_run("judged")
    assert "judged_accuracy" in run.data.metrics


@pytest.mark.parametrize("command", ["run", "cycle", "transfer", "prepare", "pretrain-t2i", "serve", "report"])
def test_every_command_has_help(command, capsys):
    # In this process (tests/test_experiment_al.py::test_cli_help_lists_commands starts the real CLI).
    from galot.flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--params" in out and "--set" in out
