"""Hostile names (issue 30): class names that differ only in case or Unicode form, control characters
in class names and in experiment.name, from every place class names come from (params.yaml, an image
folder's sub-folders, data.class_names_file, a run folder's label batch); lists of names bounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from galot.flows.cli import main
from galot_core.config import config_from_dict
from galot_core.data.folder import load_folder
from galot_core.data.imagefolder import load_imagefolder
from galot_core.errors import GalotError, show_names
from galot_core.names import class_names_problem, name_key


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _folder_cfg(classes) -> dict:
    return {"experiment": {"oracle": "human"}, "data": {"dataset": "folder", "classes": classes}}


def _one_line_error(fn, *fragments: str) -> str:
    with pytest.raises(GalotError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.mark.parametrize("classes, first, second", [
    (["Cat", "cat"], "'Cat'", "'cat'"),
    (["dog", "Straße", "STRASSE"], "'Straße'", "'STRASSE'"),            # casefold: ß = ss
    (["ｃａｔ", "cat"], "'ｃａｔ'", "'cat'"),                             # NFKC: full-width letters
    (["é", "e\u0301"], "'é'", "'é'"),                                  # NFKC: composed / decomposed
    (["big  cat", "Big cat"], "'big  cat'", "'Big cat'"),               # spacing
])
def test_class_names_equal_when_matched_are_refused_naming_both(classes, first, second):
    _one_line_error(lambda: config_from_dict(_folder_cfg(classes)), "params.yaml: data.classes", first, second,
                    "differ only in case")


@pytest.mark.parametrize("bad", ["a\nb", "cat\x1b[31m", "tab\there", "nul\x00", "rtl\u202eevil", "zw\u200bsp",
                                 "line\u2028sep", "nel\x85"])
def test_control_and_format_characters_in_class_names_are_refused(bad):
    message = _one_line_error(lambda: config_from_dict(_folder_cfg([bad, "dog"])), "data.classes",
                              "control characters")
    assert "\x1b" not in message and "\u202e" not in message  # shown escaped, never raw


def test_joiners_that_scripts_need_are_allowed():
    cfg = config_from_dict(_folder_cfg(["می\u200cخواهم", "👩\u200d🔬"]))
    assert len(cfg.data.classes) == 2


@pytest.mark.parametrize("name", ["a\nb", "run\x1b]0;pwned\x07", "x\r", "bidi\u202e"])
def test_control_characters_in_experiment_name_are_refused(name):
    _one_line_error(lambda: config_from_dict({"experiment": {"name": name}}), "experiment.name",
                    "control characters")


def test_distinct_names_pass_and_keys_are_what_labels_match():
    assert class_names_problem("data.classes", ["cat", "dog", "Katze"]) is None
    assert name_key("  ＣＡＴ ") == name_key("cat") == "cat"


def test_image_folder_subfolders_differing_in_case_are_refused(tmp_path):
    for i, folder in enumerate(["Cat", "cat", "dog"]):
        _png(tmp_path / folder / "0.png", 10 * i)
        _png(tmp_path / folder / "1.png", 10 * i + 5)
    _one_line_error(lambda: load_imagefolder(tmp_path), "data.root (its class sub-folders)", "'Cat'", "'cat'")


def test_image_folder_subfolders_equal_after_underscores_are_refused(tmp_path):
    for i, folder in enumerate(["big_cat", "big-cat"]):
        _png(tmp_path / folder / "0.png", 10 * i)
        _png(tmp_path / folder / "1.png", 10 * i + 5)
    _one_line_error(lambda: load_imagefolder(tmp_path), "data.root", "'big_cat'", "'big-cat'", "differ only")


def test_image_folder_subfolder_with_a_control_character_is_refused(tmp_path):
    for i, folder in enumerate(["cat\x1b[2J", "dog"]):
        _png(tmp_path / folder / "0.png", 10 * i)
        _png(tmp_path / folder / "1.png", 10 * i + 5)
    message = _one_line_error(lambda: load_imagefolder(tmp_path), "data.root", "control characters")
    assert "\x1b" not in message


def test_class_names_file_mapping_two_folders_to_one_name_is_refused(tmp_path):
    for i, folder in enumerate(["n01", "n02"]):
        _png(tmp_path / "imgs" / folder / "0.png", 10 * i)
        _png(tmp_path / "imgs" / folder / "1.png", 10 * i + 5)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"n01": "Tabby Cat", "n02": "tabby cat"}))
    _one_line_error(lambda: load_imagefolder(tmp_path / "imgs", class_names_file=names), "data.class_names_file",
                    "'Tabby Cat'", "'tabby cat'")


def test_folder_loader_called_directly_checks_its_classes(tmp_path):
    _png(tmp_path / "a.png", 1)
    _one_line_error(lambda: load_folder(tmp_path, ["Cat", "CAT"]), "data.classes", "'Cat'", "'CAT'")


def test_cli_refuses_case_twins_with_exit_2_and_writes_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"runs_dir": str(runs), "name": "n", "oracle": "human",
                                                     "mode": "al"},
                                      "data": {"dataset": "folder", "root": str(tmp_path), "classes": ["Cat", "cat"]},
                                      "tracking": {"mlflow": False}}))
    code = main(["run", "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "'Cat' and 'cat'" in err
    assert not runs.exists()


def test_tampered_label_batch_with_case_twins_is_refused(tmp_path):
    from galot_core.labels import batch_path, read_batch

    path = batch_path(tmp_path, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cycle": 1, "classes": ["Cat", "cat"], "items": []}))
    _one_line_error(lambda: read_batch(tmp_path, 1), str(path), "'classes'", "distinct")


def test_imported_label_matches_a_class_by_unicode_key():
    from galot_core.labels import Batch, resolve_answer

    batch = Batch(1, ["Straße", "dog"], [])
    assert resolve_answer(batch, "STRASSE") == "Straße" and resolve_answer(batch, "ＤＯＧ") == "dog"
    assert resolve_answer(batch, "cat") is None


# ------------------------------------------------------------------ bounded lists of names


def test_show_names_bounds_the_list_and_counts_the_rest():
    names = [f"class{i}" for i in range(10_000)]
    text = show_names(names)
    assert text.startswith("'class0', 'class1'") and text.endswith("… (9995 more)") and len(text) < 120
    assert show_names(["a", "b"]) == "'a', 'b'"
    assert "\x1b" not in show_names(["\x1b[31mred"])


def test_unknown_label_lists_a_few_classes_not_ten_thousand(tmp_path):
    from galot_core.labels import Batch, Item, give

    batch = Batch(1, [f"class{i}" for i in range(10_000)], [Item(0, "a.png", None, "labels/t.png")])
    message = _one_line_error(lambda: give(tmp_path, batch, 0, "nope"), "unknown class 'nope'", "(9995 more)")
    assert len(message) < 300


def test_test_root_folder_not_among_many_classes_is_one_short_line(tmp_path):
    _png(tmp_path / "pool" / "a.png", 1)
    _png(tmp_path / "test" / "zebra" / "a.png", 1)
    classes = [f"class{i}" for i in range(10_000)]
    message = _one_line_error(lambda: load_folder(tmp_path / "pool", classes, test_root=tmp_path / "test"),
                              "data.test_root", "'zebra'", "(9995 more)")
    assert len(message) < 400


def test_cli_refuses_an_image_folder_with_case_twin_subfolders_before_writing(tmp_path, capsys):
    for i, folder in enumerate(["Cat", "cat"]):
        for k in range(3):
            _png(tmp_path / "imgs" / folder / f"{k}.png", 20 * i + k)
    runs = tmp_path / "runs"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"runs_dir": str(runs), "name": "n", "mode": "al"},
                                      "data": {"dataset": "imagefolder", "root": str(tmp_path / "imgs")},
                                      "tracking": {"mlflow": False}}))
    code = main(["run", "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert "'Cat' and 'cat'" in err and not runs.exists()


def test_label_export_and_import_name_a_few_of_ten_thousand_classes(tmp_path, capsys):
    from tests.hostile_util import cli, human_run

    run = human_run(tmp_path)
    batch_file = run / "labels" / "cycle_001.json"
    batch = json.loads(batch_file.read_text())
    batch["classes"] = [f"class{i}" for i in range(10_000)]
    batch_file.write_text(json.dumps(batch))
    r = cli(capsys, "label", "export", str(run), "--out", str(tmp_path / "labels.csv"))
    assert r.code == 0 and "fill the label column with one of: 'class0'" in r.out and "(9995 more)" in r.out
    assert len(r.out) < 600
    (tmp_path / "answers.csv").write_text("image,label\nimg0.png,zebra\n")
    r = cli(capsys, "label", "import", str(run), str(tmp_path / "answers.csv"))
    assert r.code == 2 and "unknown class 'zebra'" in r.err and "(9995 more)" in r.err and len(r.err) < 800
