"""`galot verify`, out-of-memory back-off, retry policy and safe loading."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from galot_core import synthetic
from galot_core.errors import GalotError
from galot_core.experiment import Experiment
from galot_core.verify import verify_run
from tests.test_experiment_gal import gal_cfg


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def finished(finished_gal_run):
    return finished_gal_run[0].run_dir


def damaged_copy(run_dir, tmp_path):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_verify_passes_a_clean_run(finished):
    problems, checked = verify_run(finished)
    assert problems == [] and checked > 40


@pytest.mark.parametrize("damage, kind, where", [
    ("delete_png", "missing", "synthetic/cycle_002/"),
    ("truncate_png", "truncated", "synthetic/cycle_002/"),
    ("alter_png", "altered", "synthetic/cycle_001/"),
    ("truncate_model", "altered", "cycles/cycle_002/model.safetensors"),
    ("alter_pool", "inconsistent", "pool.json"),
    ("alter_shard", "altered", "dataset/synthetic/cycle_002.tar"),
    ("stray_tmp", "stray", "synthetic/cycle_001/"),
])
def test_verify_reports_each_damage(finished, tmp_path, damage, kind, where):
    run = damaged_copy(finished, tmp_path)
    pngs = sorted((run / "synthetic/cycle_002").rglob("*.png"))
    if damage == "delete_png":
        pngs[0].unlink()
    elif damage == "truncate_png":
        pngs[0].write_bytes(pngs[0].read_bytes()[:50])
    elif damage == "alter_png":
        p = sorted((run / "synthetic/cycle_001").rglob("*.png"))[0]
        data = bytearray(p.read_bytes())
        data[-20] ^= 0xFF
        p.write_bytes(bytes(data))
    elif damage == "truncate_model":
        m = run / "cycles/cycle_002/model.safetensors"
        m.write_bytes(m.read_bytes()[:-100])
    elif damage == "alter_pool":
        import json

        pool = json.loads((run / "pool.json").read_text())
        pool["labelled"], pool["labels"], pool["cycles"] = pool["labelled"][:-1], pool["labels"][:-1], pool["cycles"][:-1]
        (run / "pool.json").write_text(json.dumps(pool))
    elif damage == "alter_shard":
        t = run / "dataset/synthetic/cycle_002.tar"
        t.write_bytes(t.read_bytes()[:-1024] + b"\0" * 1024 + b"x")
    elif damage == "stray_tmp":
        (run / "synthetic/cycle_001" / ".000003.png.abc.tmp").write_bytes(b"partial")
    problems, _ = verify_run(run)
    print("\n".join(str(p) for p in problems))
    assert any(p.kind == kind and p.path.startswith(where) for p in problems), problems


def test_verify_cli_exit_codes(finished, tmp_path):
    from galot.flows.cli import main

    assert main(["verify", str(finished)]) == 0
    run = damaged_copy(finished, tmp_path)
    next((run / "synthetic/cycle_002").rglob("*.png")).unlink()
    assert main(["verify", str(run)]) == 1


def test_out_of_memory_halves_the_batch_and_images_are_unchanged(tmp_path, tiny_digits, tiny_sd_folder,
                                                                   finished_gal_run, monkeypatch, caplog):
    ref = finished_gal_run[1]  # gal_cfg as below, run without the simulated limit (read only here)
    monkeypatch.setenv("GALOT_SIMULATE_OOM_ABOVE", "3")  # an "accelerator" that fits 3 images at a time
    exp = Experiment(gal_cfg(tmp_path / "oom", tiny_sd_folder), dataset=tiny_digits)
    with caplog.at_level("WARNING", logger="galot"):
        exp.run()
    assert "out of GPU memory during generation" in caplog.text and "out of GPU memory during TextOpt" in caplog.text
    assert exp.batch_limit["generation"] <= 3 and exp.batch_limit["TextOpt"] <= 3
    for c in (1, 2):
        a = synthetic.read_manifest(synthetic.cycle_folder(ref.dir, c))
        b = synthetic.read_manifest(synthetic.cycle_folder(exp.dir, c))
        assert [e.file for e in a] == [e.file for e in b] and [e.seed for e in a] == [e.seed for e in b]
        assert max(_max_pixel_diff(ref.dir, exp.dir, c, e.file) for e in a) <= 1  # same images, any batch size


def _max_pixel_diff(a_dir, b_dir, cycle, file):
    a = synthetic.decode_png(synthetic.cycle_folder(a_dir, cycle) / file).int()
    b = synthetic.decode_png(synthetic.cycle_folder(b_dir, cycle) / file).int()
    return int((a - b).abs().max())


def test_out_of_memory_with_one_image_is_a_clear_error(tmp_path, tiny_digits, tiny_sd_folder, monkeypatch):
    monkeypatch.setenv("GALOT_SIMULATE_OOM_ABOVE", "0")
    exp = Experiment(gal_cfg(tmp_path, tiny_sd_folder, experiment={"cycles": 1}), dataset=tiny_digits)
    with pytest.raises(GalotError, match="t2i.batch_size: out of GPU memory during generation even with one image"):
        exp.run()


def test_retries_only_where_they_can_help():
    from prefect.states import Failed

    from galot.tasks import cycle

    assert cycle.generate_shard.retries == 2 and cycle.optimize_group.retries == 2
    assert cycle.select_real_batch.retries == 0 and cycle.train_classifier.retries == 0
    assert cycle.transient(None, None, Failed(data=RuntimeError("CUDA error: unspecified launch failure")))
    assert not cycle.transient(None, None, Failed(data=GalotError("t2i.model: missing")))


def test_checkpoints_never_unpickle(finished, tmp_path):
    from galot_core.checkpoint import load_classifier

    path = finished / "classifier.safetensors"
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle
    load_classifier(path)
    evil = tmp_path / "evil.safetensors"
    import pickle

    evil.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(GalotError, match="missing or corrupt"):
        load_classifier(evil)
    assert hashlib.sha256(path.read_bytes()).hexdigest()


def test_tracking_uri_credentials_never_leave_the_process():
    from galot.tasks.tracking import redacted

    assert redacted("https://alice:s3cret@mlflow.example.com/api") == "https://***@mlflow.example.com/api"
    assert redacted("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_servers_the_docs_start_listen_on_loopback_only():
    from mlflow.cli import server
    from prefect.settings import PREFECT_SERVER_API_HOST

    assert PREFECT_SERVER_API_HOST.value() == "127.0.0.1"  # `prefect server start`
    host = next(p for p in server.params if p.name == "host")  # `mlflow ui` is `mlflow server`
    assert host.default == "127.0.0.1"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a\0b", "x" * 1000, "..", "", "chat/chien", "Čáp ptačí"])
def test_class_names_cannot_escape_the_output_folder(name, tmp_path):
    d = synthetic.safe_dirname(7, name)
    assert "/" not in d and "\0" not in d and ".." not in d and 4 < len(d) <= 52 and d.startswith("007_")
    assert (tmp_path / d).resolve().parent == tmp_path.resolve()


def test_disk_full_while_generating_is_one_line_and_resumable(tmp_path, tiny_digits, tiny_sd_folder):
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        cfg = gal_cfg(mnt, tiny_sd_folder, experiment={"cycles": 1}, al={"budget_per_cycle": 150},
                      train={"min_steps": 2})
        exp = Experiment(cfg, dataset=tiny_digits)
        with pytest.raises(GalotError, match="disk full .* rerun the same command"):
            exp.run()
        folder = synthetic.cycle_folder(cfg.run_dir, 1)
        listed = synthetic.read_manifest(folder)
        for e in listed:  # the manifest lists only complete images
            assert hashlib.sha256((folder / e.file).read_bytes()).hexdigest() == e.sha256
        assert not list(folder.rglob(".*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        rows = Experiment(cfg, dataset=tiny_digits).run()
        assert rows[-1]["generated"] == 150 and verify_run(cfg.run_dir)[0] == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
