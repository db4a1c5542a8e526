"""Hostile inputs (issue 19), run folders: everything read back from one (pool, metrics, manifests,
classifier headers, embeddings, label files) is validated.

Every case goes through the real `galot` command (in this process, or in a fresh process with a
memory limit: tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input;
`galot verify` reports problems with 1) and an unchanged run folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from galot_core import synthetic
from galot_core.errors import GalotError
from galot_core.runfolder import RunFolder
from tests.hostile_util import CLASSES, assert_one_line_error, cli, human_run, snapshot
from tests.abuse_runs import verify_problems, write_cycle, GOOD_METRICS


# ----- 3. everything read back from a run folder is validated -----------------------------------
POOL_CASES = {
    "index out of range": ({"labelled": [10], "labels": [0], "cycles": [1]}, "'labelled'[0] must be a pool index"),
    "negative index": ({"labelled": [-1], "labels": [0], "cycles": [1]}, "'labelled'[0] must be a pool index"),
    "float index": ({"labelled": [1.0], "labels": [0], "cycles": [1]}, "got 1.0"),
    "truncated float index": ({"labelled": [2.7], "labels": [0], "cycles": [1]}, "got 2.7"),
    "boolean index": ({"labelled": [True], "labels": [0], "cycles": [1]}, "got True"),
    "string index": ({"labelled": ["1"], "labels": [0], "cycles": [1]}, "got '1'"),
    "negative label": ({"labelled": [1], "labels": [-1], "cycles": [1]}, "'labels'[0] must be a class index"),
    "removed out of range": ({"removed": [99]}, "'removed'[0] must be a pool index"),
    "lengths differ": ({"labelled": [1, 2], "labels": [0], "cycles": [1]}, "one entry per labelled image"),
    "duplicate index": ({"labelled": [1, 1], "labels": [0, 0], "cycles": [1, 1]}, "must not repeat"),
    "pool_size negative": ({"pool_size": -5}, "'pool_size' must be an integer"),
    "pool_size float": ({"pool_size": 10.5}, "'pool_size' must be an integer"),
    "labelled not a list": ({"labelled": {"1": 0}}, "'labelled' must be a list"),
}
RAW_POOL = {
    "a list": ("[]", "must be a JSON object"),
    "not JSON": ("{", "pool state is unreadable (JSONDecodeError)"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "pool state is unreadable (RecursionError)"),
    "huge number": ('{"pool_size": 1e999, "labelled": [], "labels": [], "cycles": []}', "got inf"),
}


def _write_pool(run: Path, case: str) -> str:
    if case in RAW_POOL:
        (run / "pool.json").write_text(RAW_POOL[case][0])
        return RAW_POOL[case][1]
    change, expected = POOL_CASES[case]
    pool = {"pool_size": 10, "labelled": [], "labels": [], "cycles": [], "removed": [], **change}
    (run / "pool.json").write_text(json.dumps(pool))
    return expected


@pytest.mark.parametrize("case", list(POOL_CASES) + list(RAW_POOL))
def test_bad_pool_state_is_one_line_exit_2_and_a_verify_problem(tmp_path, capsys, case):
    run = human_run(tmp_path)
    expected = _write_pool(run, case)
    before = snapshot(run)
    r = cli(capsys, "label", "export", str(run), "-o", "-")
    assert_one_line_error(r, "pool.json", expected)
    problems = verify_problems(run, capsys)
    assert any("pool.json" in p and expected in p for p in problems), problems
    with pytest.raises(GalotError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        RunFolder(run).read_pool(10, num_classes=2)
    assert snapshot(run) == before
    print(f"{case}: exit {r.code}: {r.err.strip()}")


def test_label_outside_the_classes_is_refused_by_the_reader_and_verify(tmp_path, capsys):
    """Only readers that know the classes can tell (the experiment, and verify from data.classes)."""
    run = human_run(tmp_path)
    (run / "pool.json").write_text(json.dumps({"pool_size": 10, "labelled": [1], "labels": [2], "cycles": [1]}))
    with pytest.raises(GalotError, match=r"'labels'\[0\] must be a class index \(0 to 1\), got 2"):
        RunFolder(run).read_pool(10, num_classes=2)
    assert any("'labels'[0] must be a class index" in p for p in verify_problems(run, capsys))


METRICS_CASES = {
    "a list": ("[]", "must be a JSON object"),
    "no cycle": ({k: v for k, v in GOOD_METRICS.items() if k != "cycle"}, "'cycle' must be 1"),
    "another cycle": ({**GOOD_METRICS, "cycle": 7}, "'cycle' must be 1 (the cycle folder's number), got 7"),
    "cycle as text": ({**GOOD_METRICS, "cycle": "1"}, "'cycle' must be 1"),
    "negative count": ({**GOOD_METRICS, "labelled": -3}, "'labelled' must be a count"),
    "NaN epsilon": ('{"cycle": 1, "labelled": 0, "generated": 0, "epsilon": NaN}', "'epsilon' must be a finite"),
    "files escaping": ({**GOOD_METRICS, "files": {"../../config.json": "0" * 64}}, "names '../../config.json'"),
    "files absolute": ({**GOOD_METRICS, "files": {"/etc/passwd": "0" * 64}}, "names '/etc/passwd'"),
    "files a list": ({**GOOD_METRICS, "files": ["x"]}, "'files' must map file names"),
    "files bad hash": ({**GOOD_METRICS, "files": {"model.safetensors": 5}}, "must be a SHA-256"),
    "not JSON": ("{", "cycle metrics is unreadable"),
}


@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_bad_metrics_are_a_verify_problem_never_a_crash(tmp_path, capsys, case):
    run = human_run(tmp_path)
    metrics, expected = METRICS_CASES[case]
    write_cycle(run, metrics)
    before = snapshot(run)
    problems = verify_problems(run, capsys)
    assert any(p.startswith("CORRUPT") and "metrics.json" in p and expected in p for p in problems), problems
    with pytest.raises(GalotError, match="metrics.json"):
        RunFolder(run).all_metrics()
    assert snapshot(run) == before
    print(f"{case}: {problems}")


GOOD_ENTRY = {"file": "000_cat/000000.png", "sha256": "0" * 64, "label": 0, "class_name": "cat", "prompt": "p",
              "cycle": 1, "epsilon": 0.0, "embedding_sha256": "0" * 64, "seed": 0, "model_id": "m", "revision": "",
              "scheduler": "s", "steps": 1, "guidance_scale": 1.0}
MANIFEST_CASES = {
    "parent path": ({"file": "../../pool.json"}, "field 'file'"),
    "absolute path": ({"file": "/etc/passwd"}, "field 'file'"),
    "inner parent": ({"file": "000_cat/../../../x.png"}, "field 'file'"),
    "backslash": ({"file": "..\\..\\x.png"}, "field 'file'"),
    "empty path": ({"file": ""}, "field 'file'"),
    "not a hash": ({"sha256": "abc"}, "field 'sha256'"),
    "float label": ({"label": 1.5}, "field 'label'"),
    "negative label": ({"label": -1}, "field 'label'"),
    "unknown field": ({"evil": 1}, "unknown field 'evil'"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_manifest_paths_outside_the_cycle_folder_are_refused(tmp_path, capsys, case):
    run = human_run(tmp_path)
    change, expected = MANIFEST_CASES[case]
    write_cycle(run, {**GOOD_METRICS, "generated": 1}, [{**GOOD_ENTRY, **change}])
    problems = verify_problems(run, capsys)
    assert any("manifest.jsonl" in p and "line 1" in p and expected in p for p in problems), problems
    with pytest.raises(GalotError, match=expected):
        synthetic.read_manifest(run / "synthetic" / "cycle_001")


def _classifier(path: Path, meta: dict, fc_rows: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"arch": "small_cnn", "in_channels": "1", "num_classes": "2", "dropout": "0.2", **meta}
    save_file({"model.fc.weight": torch.zeros(fc_rows, 128)}, str(path), metadata={"galot": json.dumps(full)})


@pytest.mark.parametrize("meta, expected", [
    ({"num_classes": "2000000"}, "header field 'num_classes' must be 1 to 100000"),
    ({"num_classes": "4000000000"}, "header field 'num_classes' must be 1 to 100000"),
    ({"num_classes": "3"}, "match the stored weights ((2, 128))"),
    ({"num_classes": "0"}, "'num_classes'"),
    ({"num_classes": "many"}, "missing or not a number"),
    ({"in_channels": "100000"}, "'in_channels' must be 1 or 3"),
    ({"arch": "../../evil"}, "'arch' must be one of"),
    ({"dropout": "nan"}, "'dropout' must be in [0, 1)"),
])
def test_classifier_metadata_is_checked_before_anything_is_allocated(tmp_path, capsys, meta, expected):
    run = human_run(tmp_path)
    write_cycle(run, GOOD_METRICS)
    _classifier(run / "cycles" / "cycle_001" / "model.safetensors", meta)
    # 2e6 classes × 128 floats would be 1 GB: only that case runs under a memory limit
    problems = verify_problems(run, None if "2000000" in meta.get("num_classes", "") else capsys, budget_mb=150)
    assert any("model.safetensors" in p and expected in p for p in problems), problems


@pytest.mark.parametrize("tensors, expected", [
    ({"s_star": torch.zeros(2, 4), "s": torch.full((2, 4), math.nan), "epsilon": torch.zeros(2)}, "tensor 's'"),
    ({"s_star": torch.zeros(2, 4), "epsilon": torch.zeros(2)}, "tensor 's' must be present"),
    ({"s_star": torch.zeros(2, 4), "s": torch.zeros(3, 4), "epsilon": torch.zeros(2)}, "one row per class"),
    (b"\xff" * 64, "embeddings are unreadable"),
])
def test_bad_embeddings_are_one_line(tmp_path, tensors, expected):
    run = RunFolder(tmp_path)
    path = run.embeddings_path(1)
    path.parent.mkdir(parents=True)
    if isinstance(tensors, bytes):
        path.write_bytes(tensors)
    else:
        save_file(tensors, str(path))
    with pytest.raises(GalotError, match=expected) as e:
        run.read_embeddings(1)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("file, content, expected", [
    ("cycle_001.answers.json", {"cycle": 1, "answers": [{"index": "0", "image": "a", "answer": "cat"}]},
     "'answers'[0] must be {index: integer"),
    ("cycle_001.answers.json", {"cycle": 1, "answers": {"0": "cat"}}, "'answers' must be a list"),
    ("cycle_001.answers.json", [], "'answers' must be a list"),
    ("cycle_001.json", {"cycle": 1, "classes": CLASSES, "items": [
        {"index": 0, "image": "a", "source": None, "thumbnail": "../../../etc/passwd"}]}, "thumbnail"),
    ("cycle_001.json", {"cycle": 1, "classes": CLASSES, "items": [
        {"index": -1, "image": "a", "source": None, "thumbnail": "labels/x.png"}]}, "'items'[0].index"),
    ("cycle_001.json", {"cycle": 1, "classes": "cat", "items": []}, "'classes' must list"),
    ("cycle_001.json", {"cycle": 2, "classes": CLASSES, "items": []}, "'cycle' must be 1"),
])
def test_bad_label_files_are_one_line_exit_2(tmp_path, capsys, file, content, expected):
    run = human_run(tmp_path)
    (run / "labels" / file).write_text(json.dumps(content))
    before = snapshot(run)
    r = cli(capsys, "label", "export", str(run), "-o", "-")
    assert_one_line_error(r, file, expected)
    assert snapshot(run) == before
