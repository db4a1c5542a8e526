"""Hostile inputs (issue 19), bounded resources: tar headers checked before a shard is read, the pixel
limit on decode, label imports of hostile files; CSV for spreadsheets is safe.

Every case goes through the real `galot` command (in this process, or in a fresh process with a
memory limit: tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input;
`galot verify` reports problems with 1) and an unchanged run folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from galot_core import label_files, labels
from tests.hostile_util import CLASSES, assert_one_line_error, cli, galot, human_run, snapshot
from tests.abuse_runs import verify_problems, write_cycle, GOOD_METRICS


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
    write_cycle(run, GOOD_METRICS)
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
