"""Hostile inputs (issue 19): each guarantee, tried with the cases a hostile probe found and their relatives.

Every case goes through the real `galot` command in a fresh process with a memory limit
(tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input; `galot verify`
reports problems with 1), a bound on time and memory, and an unchanged run folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from galot_core import label_files, labels, synthetic
from galot_core.config import Config, config_from_dict
from galot_core.config_errors import field_spec
from galot_core.errors import GalotError
from galot_core.runfolder import RunFolder
from tests.hostile_util import CLASSES, assert_one_line_error, cli, galot, human_run, snapshot


def verify_problems(run: Path, capsys=None, budget_mb: int = 300) -> list[str]:
    """`galot verify RUN` (in this process with ``capsys``, else in a process with a memory limit):
    exit 1, no traceback; its problem lines."""
    r = cli(capsys, "verify", str(run)) if capsys is not None else galot("verify", str(run), budget_mb=budget_mb)
    assert "Traceback" not in r.err + r.out, (r.err + r.out)[-2000:]
    assert r.code == 1, (r.code, r.out, r.err)
    return [line for line in r.out.splitlines() if not line.startswith("galot verify:")]


# ----- 1. every number is finite and bounded ---------------------------------------------------
def _numeric_fields():
    for section, info in Config.model_fields.items():
        for name in info.annotation.model_fields:
            spec = field_spec(Config, section, name)
            if spec.kind in (int, float):
                yield f"{section}.{name}", spec.kind, spec


NUMERIC = list(_numeric_fields())
FLOATS = [key for key, tp, _ in NUMERIC if tp is float]


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_every_float_key_refuses_non_finite_numbers(key, value):
    section, name = key.split(".")
    with pytest.raises(GalotError, match=f"{key} must be a finite number") as e:
        config_from_dict({section: {name: value}})
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


@pytest.mark.parametrize("key", [key for key, _, _ in NUMERIC])
def test_every_number_has_an_upper_bound_with_a_reason(key):
    """Size-like keys (every integer) say why their bound is where it is; max + 1 is refused naming it."""
    tp, f = next((tp, f) for k, tp, f in NUMERIC if k == key)
    hi = f.max
    assert hi is not None, f"{key} has no upper bound"
    if tp is int:
        assert f.why and f.why in f.help, f"{key}: no reason for its bound"
    section, name = key.split(".")
    with pytest.raises(GalotError, match=f"{key} must be <= ") as e:
        config_from_dict({section: {name: int(hi) + 1 if tp is int else hi * 2 + 1}})
    assert f.why in str(e.value)


@pytest.mark.parametrize("override, expected", [
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("gal.epsilon=-.inf", "gal.epsilon must be a finite number"),
    ("t2i.guidance_scale=.NaN", "t2i.guidance_scale must be a finite number"),
    ("data.image_size=100000", "data.image_size must be <= 4096 (every image is held in memory"),
    ("t2i.batch_size=1e999", "t2i.batch_size must be an integer, got '1e999'"),
    ("t2i.guidance_scale=1.0e+999", "t2i.guidance_scale must be a finite number, got inf"),
    ("train.batch_size=" + "9" * 5000, "train.batch_size must be an integer, got '9999"),
    ("train.batch_size=" + "9" * 4000, "train.batch_size must be <= 65536"),
])
def test_non_finite_and_oversized_numbers_on_the_command_line(tmp_path, capsys, override, expected):
    params = tmp_path / "params.yaml"
    params.write_text("experiment: {name: x}\n")
    r = cli(capsys, "verify", "--params", str(params), "--set", override)
    assert_one_line_error(r, expected)
    assert not (tmp_path / "runs").exists()


# ----- 2. error messages never echo unbounded input; YAML aliases refused ---------------------
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, expected", [
    (BOMB + "gal:\n  template: *i\n", "YAML alias (*name) at line"),                       # value bomb
    (BOMB + "gal: *i\n", "YAML alias (*name) at line"),                                    # section bomb
    ("[" * 100_000 + "]" * 100_000, "params.yaml"),                                         # nesting
    ("al:\n  budget_per_cycle: " + "9" * 100_000 + "\n", "a number with thousands of digits"),
])
def test_params_bombs_are_one_line_in_bounded_memory(tmp_path, text, expected):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    r = galot("verify", "--params", str(params), budget_mb=200, timeout=60)
    assert_one_line_error(r, expected)
    assert len(r.err) < 400 and r.seconds < 60


@pytest.mark.parametrize("text, expected", [
    ("base: &b {name: x}\nexperiment: *b\n", "YAML alias (*name) at line 2"),              # a harmless alias
    ("gal:\n  template: '" + "A" * 500_000 + "'\n", "gal.template must contain '{label}', got 'AAAA"),
    ("experiment:\n  name: '" + "../" * 100_000 + "'\n", "experiment.name must be a plain folder name"),
    ("al:\n  strategy: [" + ",".join(["Margin"] * 100_000) + "]\n", "al.strategy must be a string"),
    ("x" * 2_000_000, "larger than 1 MiB"),
    ("gal: {" + ",".join(f"k{i}: 1" for i in range(20000)) + "}\n", "unknown key 'gal.k0'"),
    ("? " + "k" * 300_000 + "\n: 1\n", "unknown section 'kkkk"),
])
def test_error_messages_never_echo_unbounded_input(tmp_path, capsys, text, expected):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    r = cli(capsys, "verify", "--params", str(params))
    assert_one_line_error(r, expected)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_params_that_is_not_a_regular_file_is_one_line(tmp_path, kind):
    path = {"fifo": tmp_path / "fifo", "dev-zero": Path("/dev/zero"), "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    r = galot("verify", "--params", str(path), timeout=30)
    assert_one_line_error(r, "not a regular file")


def test_alias_in_a_set_override_is_refused(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("experiment: {name: x}\n")
    r = cli(capsys, "verify", "--params", str(params), "--set", "baselines.strategies=[&a BALD, *a]")
    assert_one_line_error(r, "YAML alias")


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


def _cycle(run: Path, metrics, manifest: list | None = None) -> None:
    cdir = run / "cycles" / "cycle_001"
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if manifest is not None:
        folder = run / "synthetic" / "cycle_001"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in manifest))


GOOD_METRICS = {"cycle": 1, "labelled": 0, "generated": 0, "epsilon": 0.0, "test_accuracy": None, "files": {}}
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
    _cycle(run, metrics)
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
    _cycle(run, {**GOOD_METRICS, "generated": 1}, [{**GOOD_ENTRY, **change}])
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
    _cycle(run, GOOD_METRICS)
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


# ----- 4. bounded resources ----------------------------------------------------------------------
def _tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


@pytest.mark.parametrize("case, expected", [
    ("8 GiB member", "declares 8589934592 bytes"),
    ("member past the end", "declares 20000 bytes"),
    ("huge PAX header", "declares 4294967296 bytes"),
    ("garbage header", "bad header"),
])
def test_shard_member_sizes_are_checked_before_reading(tmp_path, capsys, case, expected):
    run = human_run(tmp_path)
    _cycle(run, GOOD_METRICS)
    head = {"8 GiB member": _tar_header("manifest.jsonl", 8 << 30),
            "member past the end": _tar_header("manifest.jsonl", 20000),
            "huge PAX header": _tar_header("././@PaxHeader", 4 << 30, tarfile.XHDTYPE),
            "garbage header": b"\xff" * 512}[case]
    data = head + b"\0" * (10_000 - len(head))
    shard = run / "dataset" / "synthetic" / "cycle_001.tar"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(data)
    import hashlib

    (run / "dataset" / "index.json").write_text(json.dumps({"format": "galot-dataset/1", "shards": [
        {"cycle": 1, "file": "synthetic/cycle_001.tar", "sha256": hashlib.sha256(data).hexdigest(), "images": 1}]}))
    (run / "dataset" / "real.json").write_text(json.dumps({"labelled": []}))
    problems = verify_problems(run, None if case == "8 GiB member" else capsys, budget_mb=150)
    assert any("cycle_001.tar" in p and expected in p for p in problems), problems


def _png_header_only_bomb(path: Path, side: int) -> None:
    """A valid grayscale PNG of side × side black pixels, compressed to a few hundred KB."""
    comp, row = zlib.compressobj(9), b"\0" * (side + 1)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb_folder(tmp_path_factory):
    """A folder dataset: six small PNGs and one 12,000 × 12,000 PNG (~140 KB on disk, 144 MB decoded)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("bomb")
    for i in range(6):
        Image.fromarray(np.full((16, 16), 30 * i, dtype=np.uint8)).save(root / f"small{i}.png")
    _png_header_only_bomb(root / "bomb.png", 12_000)
    assert (root / "bomb.png").stat().st_size < 1 << 20
    return root


@pytest.mark.parametrize("sets, code, expected", [
    (["data.on_bad_image=fail"], 2, "bomb.png' (12000×12000 pixels, more than the limit of 16777216"),
    (["data.on_bad_image=skip"], 0, "skipping unreadable image"),
    (["data.on_bad_image=skip", "data.max_pixels=100"], 2, "no readable images found"),  # 16×16 > 100 px
    (["data.max_pixels=1e999"], 2, "data.max_pixels must be an integer"),
])
def test_pixel_limit_on_decode(tmp_path, capsys, bomb_folder, sets, code, expected):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"experiment": {"name": "b", "runs_dir": str(tmp_path / "runs"), "judge": None,
                                                 "oracle": "human", "mode": "al"},
                                  "data": {"dataset": "folder", "root": str(bomb_folder), "classes": CLASSES}}))
    args = ["prepare", "--params", str(params), "--out", str(tmp_path / "prepared.json")]
    sets = [x for s in sets for x in ("--set", s)]
    # decoding the bomb would take 144 MB: those cases run under a memory limit
    r = galot(*args, *sets, budget_mb=100) if "bomb" in expected or code == 0 else cli(capsys, *args, *sets)
    if code == 2:
        assert_one_line_error(r, expected)
    else:
        assert r.code == 0 and "Traceback" not in r.err, r.err[-2000:]
        assert expected in r.err and "bomb.png" in r.err
        assert json.loads((tmp_path / "prepared.json").read_text())["pool"] == 6


def _label_file(tmp: Path, case: str) -> Path:
    path = tmp / "labels.csv"
    if case == "dev-zero":
        return Path("/dev/zero")
    if case == "fifo":
        os.mkfifo(path)  # nobody writes: reading it would hang forever
    elif case == "directory":
        path.mkdir()
    elif case == "sparse 65 MiB":
        with open(path, "wb") as f:
            f.truncate(65 << 20)
    elif case == "NUL byte":
        path.write_bytes(b"image,label\nimg0.png,c\0at\n")
    elif case == "huge field":
        path.write_text("image,label\n" + "x" * 200_000 + ",cat\n")
    elif case == "not UTF-8":
        path.write_bytes(b"image,label\n\xff\xfe,cat\n")
    elif case == "long field":
        path.write_text("image,label\n" + "x" * 5000 + ",cat\n")
    return path


@pytest.mark.parametrize("case, expected", [
    ("dev-zero", "not a regular file"),
    ("fifo", "not a regular file"),
    ("directory", "not a regular file"),
    ("sparse 65 MiB", "larger than 64 MiB"),
    ("NUL byte", "labels.csv:2: not a labels CSV (a NUL byte)"),
    ("huge field", "labels.csv:2: not a labels CSV (field larger than field limit"),
    ("long field", "labels.csv:2: not a labels CSV (a cell longer than 4096 characters)"),
    ("not UTF-8", "not UTF-8 text (byte 12)"),
])
def test_label_import_of_a_hostile_file_is_one_line(tmp_path, capsys, case, expected):
    run = human_run(tmp_path)
    before = snapshot(run)
    args = ("label", "import", str(run), str(_label_file(tmp_path, case)))
    # /dev/zero and a FIFO never end: a process with a deadline and a memory limit
    r = galot(*args, budget_mb=200, timeout=60) if case in ("dev-zero", "fifo") else cli(capsys, *args)
    assert_one_line_error(r, expected)
    assert r.seconds < 60 and snapshot(run) == before


def test_label_import_prints_at_most_a_screenful_of_problems(tmp_path):
    run = human_run(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_text("image,label\n" + "nope.png,cat\n" * 500_000)  # 6.5 MB, half a million bad rows
    before = snapshot(run)
    r = galot("label", "import", str(run), str(path), budget_mb=200, timeout=120)
    lines = r.err.splitlines()
    assert r.code == 2 and "Traceback" not in r.err
    assert len(lines) == label_files.PROBLEMS_SHOWN + 2 and len(r.err) < 10_000
    assert "… and 499980 more problems" in lines[-2] and "nothing imported (500000 problems)" in lines[-1]
    assert snapshot(run) == before


# ----- 5. CSV written for spreadsheets is safe ---------------------------------------------------
HOSTILE_NAMES = ["=1+2+cmd|' -C calc'!A0.png", "@SUM(1+1)x.png", "+1.png", "-2.png", "\tx.png", "\rcr.png",
                 "'quoted.png", "''=x.png", "'=already.png", 'a,"b".png', "new\nline.png", "plain.png"]


def test_label_csv_round_trip_with_hostile_names(tmp_path, capsys):
    run = human_run(tmp_path, HOSTILE_NAMES, pool_size=20)
    r = cli(capsys, "label", "export", str(run), "-o", "-")
    assert r.code == 0, r.err
    rows = list(csv.reader(io.StringIO(r.out)))
    for row in rows[1:]:
        assert not any(cell.startswith(label_files.FORMULA_START) for cell in row), row  # nothing a spreadsheet runs
    assert [label_files.unescape_cell(row[0]) for row in rows[1:]] == HOSTILE_NAMES
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(rows[0])
    for k, row in enumerate(rows[1:]):
        w.writerow([row[0], CLASSES[k % 2], row[2]])   # a person fills the label column, cells kept as exported
    path = tmp_path / "filled.csv"
    path.write_text(out.getvalue())
    r = cli(capsys, "label", "import", str(run), str(path))
    assert r.code == 0 and "imported 12 labels" in r.out, r.out + r.err
    answers = labels.read_answers(run, 1)
    assert [(a["image"], a["answer"]) for a in answers] == [(n, CLASSES[k % 2]) for k, n in enumerate(HOSTILE_NAMES)]


@pytest.mark.parametrize("text", ["=1+2", "+x", "-x", "@x", "\tx", "\rx", "'x", "''", "'=x", "x", "", "'"])
def test_escape_then_unescape_is_the_identity(text):
    escaped = label_files.escape_cell(text)
    assert label_files.unescape_cell(escaped) == text
    assert not escaped.startswith(label_files.FORMULA_START)


# ----- 4b. the labelling page: bounded bodies, timeouts, 400 for bad types ------------------------
@pytest.fixture
def page(tmp_path):
    import threading

    from galot.flows.labelpage import LabelServer

    run = human_run(tmp_path)
    server = LabelServer(run, timeout_s=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, run
    server.shutdown()


def _post(server, path: str, body: bytes, length: str | None = "auto", timeout: float = 5) -> tuple[int, dict]:
    """A raw HTTP POST, with any Content-Length header (or none)."""
    import socket

    headers = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"X-Galot-Token: {server.token}",
               "Content-Type: application/json", "Connection: close"]
    if length is not None:
        headers.append(f"Content-Length: {len(body) if length == 'auto' else length}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"{}")


BAD_BODIES = {
    "index [7]": b'{"cycle": 1, "index": [7], "answer": "cat"}',
    "index {}": b'{"cycle": 1, "index": {}, "answer": "cat"}',
    "index null": b'{"cycle": 1, "index": null, "answer": "cat"}',
    "index 1e999": b'{"cycle": 1, "index": 1e999, "answer": "cat"}',
    "index 7.9": b'{"cycle": 1, "index": 0.9, "answer": "cat"}',
    "index true": b'{"cycle": 1, "index": true, "answer": "cat"}',
    "index string": b'{"cycle": 1, "index": "0", "answer": "cat"}',
    "index NaN": b'{"cycle": 1, "index": NaN, "answer": "cat"}',
    "cycle list": b'{"cycle": [1], "index": 0, "answer": "cat"}',
    "answer list": b'{"cycle": 1, "index": 0, "answer": ["cat"]}',
    "deep nesting": b"[" * 60_000 + b"]" * 5_000,
    "a list": b"[1, 2]",
    "not JSON": b"\xff\xfe",
    "huge integer": b'{"cycle": 1, "index": ' + b"9" * 5000 + b', "answer": "cat"}',
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_page_answers_bad_types_with_400_and_no_traceback(page, capfd, case):
    server, run = page
    before = snapshot(run)
    status, body = _post(server, "/api/label", BAD_BODIES[case])
    assert status == 400 and "\n" not in body["error"] and len(body["error"]) < 300, (status, body)
    assert "Traceback" not in capfd.readouterr().err
    assert snapshot(run) == before
    status, body = _post(server, "/api/label", b'{"cycle": 1, "index": 0, "answer": "cat"}')
    assert status == 200 and body["labelled"] == 1  # the server still works


@pytest.mark.parametrize("length", ["-1", "99999999999", "65537", "abc", "1e3", " -0"])
def test_page_body_cap_holds_for_any_content_length(page, capfd, length):
    server, run = page
    before = snapshot(run)
    status, body = _post(server, "/api/label", b'{"cycle": 1, "index": 0, "answer": "cat"}', length=length)
    assert status == 400 and "Content-Length" in body["error"]
    assert "Traceback" not in capfd.readouterr().err and snapshot(run) == before


def test_page_closes_idle_and_half_open_connections(page):
    """100 connections that send nothing (or half a request) do not hold 100 threads: each is closed."""
    import socket
    import threading
    import time

    server, _ = page
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    socks[0].sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n")                 # headers never end
    socks[1].sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Galot-Token: %s\r\n"
                     b"Content-Length: 100\r\n\r\n{" % (server.port, server.token.encode()))  # body never ends
    deadline = time.monotonic() + 10
    for s in socks:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        while s.recv(1024):  # a socket.timeout here: the server kept the connection open
            pass
        s.close()
    time.sleep(0.5)
    handlers = [t for t in threading.enumerate() if "process_request" in t.name]
    assert len(handlers) < 5, len(handlers)


# ----- 6. one writer at a time -------------------------------------------------------------------
def _give_all(run: str, indices: list[int], barrier) -> None:
    """One process answering: the page's way (labels.give, one per call) for even indices, import for odd."""
    batch = labels.read_batch(run, 1)
    barrier.wait()
    for i in indices:
        if i % 2:
            label_files.import_rows(run, [(f"row {i}", f"img{i}.png", CLASSES[i % 2])], 1)
        else:
            labels.give(run, batch, i, CLASSES[i % 2])


def test_concurrent_page_and_import_never_lose_an_acknowledged_answer(tmp_path):
    import multiprocessing as mp

    n, procs = 24, 6
    run = human_run(tmp_path, [f"img{i}.png" for i in range(n)], pool_size=n)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    workers = [ctx.Process(target=_give_all, args=(str(run), list(range(k, n, procs)), barrier))
               for k in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    answers = labels.read_answers(run, 1)
    assert sorted(a["index"] for a in answers) == list(range(n))  # every acknowledged answer is there


def _press_done(run: str, command: list[str], barrier, out) -> None:
    from galot.flows.labelling import Continuation

    cont = Continuation(Path(run), command)
    barrier.wait()
    out.put(cont(1))
    if cont.proc is not None:
        cont.proc.wait()


def test_concurrent_done_requests_start_at_most_one_run(tmp_path):
    """Four "done" at once, from four processes (pages): one run starts, the others say it is running."""
    import multiprocessing as mp
    import sys

    run = human_run(tmp_path)
    marker = tmp_path / "started"
    # A stand-in for `galot run` that adopts the lock the page hands it, as galot run does.
    script = ("import sys, time; from pathlib import Path; from galot_core.runfolder import RunFolder\n"
              f"with RunFolder({str(run)!r}).run_lock():\n"
              f"    open({str(marker)!r}, 'a').write('x\\n'); time.sleep(3)\n")
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_press_done, args=(str(run), [sys.executable, "-c", script], barrier, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    messages = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert marker.read_text() == "x\n", messages
    assert sum("continuing the experiment" in m for m in messages) == 1, messages
    assert sum("already running" in m for m in messages) == 3, messages


def test_a_second_run_on_the_same_folder_is_one_line(tmp_path):
    import subprocess
    import sys

    run = human_run(tmp_path)
    fd = RunFolder(run).try_run_lock()
    assert fd is not None
    try:
        with pytest.raises(GalotError, match="another `galot run`.*is already running this experiment"):
            with RunFolder(run).run_lock():
                pass
        # The descriptor handed down (the labelling page's way) is adopted, not refused.
        code = ("import os; from galot_core.runfolder import RunFolder, RUN_LOCK_ENV\n"
                f"with RunFolder({str(run)!r}).run_lock(): print('adopted', RUN_LOCK_ENV in os.environ)\n")
        p = subprocess.run([sys.executable, "-c", code], pass_fds=(fd,), capture_output=True, text=True, timeout=120,
                           env={**os.environ, "GALOT_RUN_LOCK_FD": str(fd)})
        assert p.stdout.strip() == "adopted False", p.stderr
    finally:
        os.close(fd)
    assert RunFolder(run).try_run_lock() is not None  # released with the last descriptor


def test_page_reports_a_damaged_run_folder_in_one_line(page, capfd):
    import urllib.error
    import urllib.request

    server, run = page
    (run / "pool.json").write_text(json.dumps({"pool_size": 10, "labelled": [-1], "labels": [0], "cycles": [1]}))
    try:
        urllib.request.urlopen(server.url + "api/state", timeout=5)
        raise AssertionError("expected an error status")
    except urllib.error.HTTPError as e:
        assert e.code == 409 and "pool.json: 'labelled'[0] must be a pool index" in json.loads(e.read())["error"]
    status, body = _post(server, "/api/label", b'{"cycle": 1, "index": 0, "answer": "cat"}')
    assert status == 409 and "pool.json" in body["error"]
    assert "Traceback" not in capfd.readouterr().err


# ----- 6b. one lock for every way a cycle starts (issue 30) ---------------------------------------
def _long_al_params(tmp_path: Path) -> Path:
    """A simulated-oracle AL run whose first cycle trains for minutes: the first holder is still inside it."""
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "experiment": {"name": "raced", "runs_dir": str(tmp_path / "runs"), "mode": "al", "cycles": 2, "judge": None},
        "al": {"budget_per_cycle": 10}, "tracking": {"mlflow": False},
        "train": {"epochs": 1, "min_steps": 20_000, "device": "cpu"}}))
    return params


_FLOW = ("import sys; from galot.flows.galot import galot_run; from galot_core.params_file import load_config\n"
         "galot_run(load_config(sys.argv[1]))\n")


def _start_first(params: Path, run: Path, first: str, api: str):
    """The first process advancing the run: the CLI or the flow function; returned once it holds the run
    (config.json is written under the lock, by either)."""
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "galot.flows.cli", "run", "--params", str(params)] if first == "cli" \
        else [sys.executable, "-c", _FLOW, str(params)]
    env = {**os.environ, "PREFECT_API_URL": api, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "config.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the first process never started the run"
        time.sleep(0.5)
    return proc


@pytest.mark.parametrize("first", ["cli", "flow"])
def test_cli_and_flow_function_refuse_each_other(prefect_api, tmp_path, capsys, first):
    """`galot run` and the flow function `galot_run(...)` (what a deployment runs) on one run folder:
    whichever comes second is refused in one line, and the first one's run is untouched."""
    import signal

    from galot.flows.galot import galot_run
    from galot_core.params_file import load_config

    params = _long_al_params(tmp_path)
    run = tmp_path / "runs" / "raced"
    proc = _start_first(params, run, first, prefect_api)
    try:
        if first == "flow":
            r = cli(capsys, "run", "--params", str(params))
            assert_one_line_error(r, str(run), "is already running this experiment")
        else:
            with pytest.raises(GalotError, match="is already running this experiment") as e:
                galot_run(load_config(params))
            assert "\n" not in str(e.value)
        assert not (run / "metrics.json").exists() and proc.poll() is None  # the first one goes on
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert RunFolder(run).try_run_lock() is not None  # the kernel released the dead holder's lock


def test_run_lock_is_reentrant_in_one_process_and_shared_by_its_spellings(tmp_path):
    """The CLI holds the lock and then calls the flow, which takes it again, as does each cycle:
    nested holders in one process share it; it is released when the outermost one leaves."""
    run = tmp_path / "r"
    run.mkdir()
    with RunFolder(run).run_lock():
        with RunFolder(tmp_path / "." / "r").run_lock():
            assert RunFolder(run).try_run_lock() is None
        assert RunFolder(run).try_run_lock() is None  # still held by the outer one
    fd = RunFolder(run).try_run_lock()
    assert fd is not None
    os.close(fd)


# ----- 3b. run-level files are checked against the cycles on disk (issue 30) -----------------------
FINISHED_ROW = {**GOOD_METRICS, "test_accuracy": 0.5, "seconds": {"train": 1.0}, "unet_calls": {}}


def finished_run(tmp: Path, classes: int = 2) -> Path:
    """``human_run`` with cycle 1 complete and its run-level copies written, as write_summary leaves them,
    and a folder of two images for the dataset (predict loads it for the model card)."""
    from PIL import Image

    run = human_run(tmp)
    (tmp / "imgs").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(tmp / "imgs" / f"img{i}.png")
    _cycle(run, FINISHED_ROW)
    from galot_core.checkpoint import save_classifier
    from galot_core.models import build_model

    torch.manual_seed(0)
    save_classifier(build_model("small_cnn", 3, classes, 0.2), run / "cycles" / "cycle_001" / "model.safetensors",
                    arch="small_cnn", in_channels=3)
    (run / "classifier.safetensors").write_bytes((run / "cycles" / "cycle_001" / "model.safetensors").read_bytes())
    (run / "metrics.json").write_text(json.dumps([FINISHED_ROW]))
    (run / "summary.json").write_text(json.dumps({"cycles": 1, "labelled": 0, "generated": 0,
                                                  "final_test_accuracy": 0.5, "mean_test_accuracy": 0.5}))
    (run / "code.json").write_text(json.dumps({"sha256": "0" * 64}))
    params = tmp / "params.yaml"
    import yaml

    params.write_text(yaml.safe_dump(json.loads((run / "config.json").read_text())))
    return run


RUN_LEVEL_CASES = {
    "accuracy 5.0": ("metrics.json", [{**FINISHED_ROW, "test_accuracy": 5.0}], "must be an accuracy in [0, 1]"),
    "negative accuracy": ("metrics.json", [{**FINISHED_ROW, "test_accuracy": -0.1}], "must be an accuracy in [0, 1]"),
    "an extra cycle": ("metrics.json", [FINISHED_ROW, {**FINISHED_ROW, "cycle": 2}], "names cycle 2, but only 1"),
    "NaN accuracy": ("metrics.json", '[{"cycle": 1, "labelled": 0, "generated": 0, "epsilon": 0, '
                     '"test_accuracy": NaN}]', "must be a finite number"),
    "truncated": ("metrics.json", '[{"cycle": 1, "labe', "run metrics is unreadable (JSONDecodeError)"),
    "an object": ("metrics.json", {"cycle": 1}, "must be a JSON list"),
    "another accuracy": ("metrics.json", [{**FINISHED_ROW, "test_accuracy": 0.99}],
                         "disagrees with cycles/cycle_001/metrics.json on 'test_accuracy'"),
    "rows swapped": ("metrics.json", [{**FINISHED_ROW, "cycle": 2}], "row 1: 'cycle' must be 1"),
    "cycle as text": ("metrics.json", [{**FINISHED_ROW, "cycle": "1"}], "'cycle' must be 1"),
    "summary accuracy": ("summary.json", {"cycles": 1, "labelled": 0, "generated": 0, "final_test_accuracy": 2,
                                          "mean_test_accuracy": 0.5}, "'final_test_accuracy' must be an accuracy"),
    "summary cycles": ("summary.json", {"cycles": 3, "labelled": 0, "generated": 0, "final_test_accuracy": 0.5,
                                        "mean_test_accuracy": 0.5}, "'cycles' is 3, but only 1"),
    "summary disagrees": ("summary.json", {"cycles": 1, "labelled": 7, "generated": 0, "final_test_accuracy": 0.5,
                                           "mean_test_accuracy": 0.5}, "'labelled' is 7, but cycle 1 recorded 0"),
    "summary a list": ("summary.json", [1], "must be a JSON object"),
    "summary deep": ("summary.json", "[" * 100_000 + "]" * 100_000, "run summary is unreadable (RecursionError)"),
}


def _damage(run: Path, file: str, content) -> None:
    path = run / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("case", list(RUN_LEVEL_CASES))
def test_report_predict_and_verify_refuse_a_damaged_run_level_file(tmp_path, capsys, case):
    run = finished_run(tmp_path)
    r = cli(capsys, "verify", str(run))
    assert r.code == 0, r.out + r.err  # the control: the hand-made run is sound
    file, content, expected = RUN_LEVEL_CASES[case]
    _damage(run, file, content)
    before = snapshot(run)
    r = cli(capsys, "report", "--params", str(tmp_path / "params.yaml"))
    assert_one_line_error(r, str(run / file), expected)
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"))
    assert_one_line_error(r, str(run / file), expected)
    problems = verify_problems(run, capsys)
    assert any(p.startswith("CORRUPT") and file in p and expected in p for p in problems), problems
    assert snapshot(run) == before


@pytest.mark.parametrize("file, content, expected", [
    ("code.json", {"sha256": "abc"}, "'sha256' must be the SHA-256"),
    ("code.json", "{", "code record is unreadable"),
    ("code.json", [], "'sha256' must be the SHA-256"),
    ("transfer/vgg16/metrics.json", {"arch": "vgg16", "test_accuracy": 5.0, "real": 1, "generated": 0,
                                     "seconds": 1}, "'test_accuracy' must be an accuracy"),
    ("transfer/vgg16/metrics.json", {"arch": "densenet121", "test_accuracy": 0.5, "real": 1, "generated": 0,
                                     "seconds": 1}, "'arch' must be 'vgg16'"),
    ("transfer/vgg16/metrics.json", {"arch": "vgg16", "test_accuracy": 0.5, "real": -1, "generated": 0,
                                     "seconds": 1}, "'real' must be a count"),
    ("cycles/cycle_003/metrics.json", FINISHED_ROW, "cycle 3 has metrics but cycle 2 is not complete"),
])
def test_verify_checks_code_json_transfers_and_cycle_numbers(tmp_path, capsys, file, content, expected):
    run = finished_run(tmp_path)
    _damage(run, file, content)
    problems = verify_problems(run, capsys)
    assert any(file in p and expected in p for p in problems), problems
    if file.startswith("transfer"):
        r = cli(capsys, "report", "--params", str(tmp_path / "params.yaml"))
        assert_one_line_error(r, file, expected)


@pytest.mark.parametrize("missing", [["summary.json"], ["metrics.json", "summary.json"]])
def test_a_run_stopped_before_its_summary_says_to_finish_the_cycle(tmp_path, capsys, missing):
    """Killed between cycle 1's metrics and the run-level copies: not damage (verify passes), and
    report and predict say how to finish it instead of showing the previous cycle's results."""
    run = finished_run(tmp_path)
    for name in missing:
        (run / name).unlink()
    r = cli(capsys, "verify", str(run))
    assert r.code == 0 and "OK" in r.out, r.out + r.err
    expected = f"{run / missing[0]}: is missing (the run stopped after cycle 1's metrics, before its summary); " \
               "rerun `galot run` to finish cycle 1"
    assert_one_line_error(cli(capsys, "report", "--params", str(tmp_path / "params.yaml")), expected)
    assert_one_line_error(cli(capsys, "predict", str(run), str(tmp_path / "imgs")), expected)


def test_report_never_copies_a_link_out_of_the_run_folder(tmp_path, capsys):
    from PIL import Image

    run = finished_run(tmp_path)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    (run / "cycles" / "cycle_001" / "grid.png").symlink_to(secret)
    r = cli(capsys, "report", "--params", str(tmp_path / "params.yaml"))
    assert r.code == 0, r.err
    assert not (run / "report" / "grid_cycle_001.png").exists()
    (run / "cycles" / "cycle_001" / "grid.png").unlink()
    secret.rename(run / "cycles" / "cycle_001" / "grid.png")  # the control: a grid of its own is copied
    assert cli(capsys, "report", "--params", str(tmp_path / "params.yaml")).code == 0
    assert (run / "report" / "grid_cycle_001.png").exists()


# ----- 3c. predict trusts nothing in the run's config.json (issue 30) ------------------------------
def test_predict_on_a_config_json_that_is_not_json_is_one_line(tmp_path, capsys):
    run = finished_run(tmp_path)
    (run / "config.json").write_text("{not json")
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"))
    assert_one_line_error(r, "config.json", "the run's parameters is unreadable (JSONDecodeError)")


@pytest.mark.parametrize("outputs", [3, 1])
def test_predict_refuses_a_class_list_that_does_not_match_the_classifier(tmp_path, capsys, outputs):
    """Shorter than the outputs: an IndexError before; longer: wrong class names with exit 0."""
    run = finished_run(tmp_path, classes=outputs)
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"))
    assert_one_line_error(r, str(run / "config.json"), f"lists 2 classes but classifier.safetensors has {outputs}")
    run2 = finished_run(tmp_path / "control")
    r = cli(capsys, "predict", str(run2), str(tmp_path / "control" / "imgs"))
    assert r.code == 0 and "img0.png" in r.out, r.err


# ----- 7. output paths behave like Unix tools (issue 30) -------------------------------------------
def test_predict_csv_dash_is_standard_output_and_nothing_else(tmp_path, capsys):
    run = finished_run(tmp_path)
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"), "--csv", "-")
    assert r.code == 0, r.err
    rows = list(csv.reader(io.StringIO(r.out)))
    assert rows[0][:3] == ["image", "label", "probability"] and len(rows) == 3, r.out
    assert not (tmp_path / "-").exists()


def test_predict_csv_writes_through_a_symlink_and_keeps_permissions(tmp_path, capsys):
    run = finished_run(tmp_path)
    target, link = tmp_path / "kept" / "predictions.csv", tmp_path / "link.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    target.chmod(0o640)
    link.symlink_to(target)
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"), "--csv", str(link))
    assert r.code == 0, r.err
    assert link.is_symlink() and target.read_text().startswith("image,label,probability")
    assert (target.stat().st_mode & 0o777) == 0o640
    new = tmp_path / "new.csv"
    assert cli(capsys, "predict", str(run), str(tmp_path / "imgs"), "--csv", str(new)).code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (new.stat().st_mode & 0o777) == 0o666 & ~umask  # not the temp file's 0600


def test_predict_csv_to_a_device_is_written_not_replaced(tmp_path):
    import subprocess
    import sys

    run = finished_run(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "galot.flows.cli", "predict", str(run), str(tmp_path / "imgs"),
                        "--csv", "/dev/stdout"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "image,label,probability" in p.stdout
    r = cli_in_process("predict", str(run), str(tmp_path / "imgs"), "--csv", "/dev/null")
    assert r == 0 and Path("/dev/null").is_char_device()


def cli_in_process(*args: str) -> int:
    from galot.flows.cli import main

    return main(list(args))


@pytest.mark.parametrize("where, expected", [
    ("directory", "(a directory)"),
    ("under a file", "cannot write"),
    ("missing folder", "No such file or directory"),
    ("/proc", "cannot write /proc/galot-predictions.csv"),
])
def test_predict_csv_to_a_path_that_cannot_be_written_is_one_line(tmp_path, capsys, where, expected):
    run = finished_run(tmp_path)
    (tmp_path / "file").write_text("x")
    path = {"directory": tmp_path, "under a file": tmp_path / "file" / "out.csv",
            "missing folder": tmp_path / "nope" / "out.csv", "/proc": Path("/proc/galot-predictions.csv")}[where]
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"), "--csv", str(path))
    assert_one_line_error(r, "--csv: cannot write", expected, "- for standard output")
    assert (tmp_path / "file").read_text() == "x" and tmp_path.is_dir()


# ----- 8. file-system errors are one line with the path and the fix (issue 30) ---------------------
@pytest.fixture
def read_only(tmp_path):
    """``tmp_path/ro``: a read-only bind mount of ``tmp_path/rw`` (needs mount rights: root in a container)."""
    import subprocess

    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(rw), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("no permission to mount a read-only file system here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        yield rw, ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_file_system_is_one_line_for_every_command(read_only, capsys):
    import yaml

    rw, ro = read_only
    run = finished_run(rw)
    (rw / "answers.csv").write_text("image,label\nimg0.png,cat\n")
    cfg = yaml.safe_load((rw / "params.yaml").read_text())
    cfg["experiment"]["runs_dir"] = str(ro / "runs")
    cfg["data"]["root"] = str(ro / "imgs")
    (rw / "ro-params.yaml").write_text(yaml.safe_dump(cfg))
    cfg["experiment"].update(name="new", cycles=1)
    cfg["al"] = {"budget_per_cycle": 1}
    (rw / "new-params.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(run)
    ro_run = ro / "runs" / "r"
    for args in (["report", "--params", str(ro / "ro-params.yaml")],
                 ["label", "import", str(ro_run), str(ro / "answers.csv")],
                 ["label", "export", str(ro_run), "-o", str(ro / "out.csv")],
                 ["predict", str(ro_run), str(ro / "imgs"), "--csv", str(ro / "p.csv")],
                 ["run", "--params", str(ro / "new-params.yaml")]):
        r = cli(capsys, *args)
        assert_one_line_error(r, "Read-only file system")
    assert snapshot(run) == before


@pytest.mark.parametrize("case", ["runs_dir a file", "run folder a file"])
def test_runs_dir_that_is_not_a_folder_is_one_line(tmp_path, capsys, case):
    import yaml

    (tmp_path / "imgs").mkdir()
    runs = tmp_path / "runs"
    if case == "runs_dir a file":
        runs.write_text("x")
    else:
        runs.mkdir()
        (runs / "a").write_text("x")
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / "imgs" / f"i{i}.png")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"name": "a", "runs_dir": str(runs), "oracle": "human",
                                                     "mode": "al", "cycles": 1, "judge": None},
                                      "al": {"budget_per_cycle": 2}, "tracking": {"mlflow": False},
                                      "data": {"dataset": "folder", "classes": CLASSES, "root": str(tmp_path / "imgs")}}))
    r = cli(capsys, "run", "--params", str(params))
    assert_one_line_error(r, "is a file, not a", "experiment.runs_dir" if case == "runs_dir a file" else "experiment.name")


@pytest.mark.parametrize("file", ["config.json", "code.json", "cycles/cycle_001/model.safetensors",
                                  "classifier.safetensors"])
def test_a_directory_where_a_run_file_belongs_is_one_line_or_a_verify_problem(tmp_path, capsys, file):
    run = finished_run(tmp_path)
    path = run / file
    path.unlink()
    path.mkdir()
    problems = verify_problems(run, capsys)
    assert any(p.startswith("CORRUPT") and file in p and ("IsADirectoryError" in p or "not a regular file" in p)
               for p in problems), problems
    r = cli(capsys, "predict", str(run), str(tmp_path / "imgs"))
    if file in ("config.json", "classifier.safetensors"):  # what predict reads
        assert_one_line_error(r, file)
