"""Output paths behave like Unix tools, and file-system errors are one line with the path and the
fix (issue 30).

Every case goes through the real `galot` command (in this process, or in a fresh process with a
memory limit: tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input;
`galot verify` reports problems with 1) and an unchanged run folder.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from tests.hostile_util import CLASSES, assert_one_line_error, cli, snapshot
from tests.abuse_runs import verify_problems, finished_run


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
