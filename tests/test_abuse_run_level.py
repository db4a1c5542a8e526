"""Run-level files are checked against the cycles on disk, and predict trusts nothing in the run's
config.json (issue 30).

Every case goes through the real `galot` command (in this process, or in a fresh process with a
memory limit: tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input;
`galot verify` reports problems with 1) and an unchanged run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile_util import assert_one_line_error, cli, snapshot
from tests.abuse_runs import verify_problems, FINISHED_ROW, finished_run


# ----- 3b. run-level files are checked against the cycles on disk (issue 30) -----------------------


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
