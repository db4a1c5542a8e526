"""`galot predict`: a run's classifier on image files, preprocessed as in training."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from galot.flows.cli import main
from galot_core.checkpoint import load_classifier
from galot_core.train import predict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(finished_gal_run):
    """The session's finished run (tests/conftest.py); `galot predict` only reads it."""
    cfg, exp = finished_gal_run
    return cfg.run_dir, exp


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory, mnist5k):
    folder = tmp_path_factory.mktemp("new-digits")
    for i in range(6):
        sub = folder / ("a" if i < 3 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(mnist5k.test.images[i, 0].numpy()).save(sub / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder, mnist5k.test.images[:6]


def test_predict_folder_writes_top_k_csv(trained_run, digit_pngs, tmp_path, capsys):
    run, exp = trained_run
    folder, images = digit_pngs
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(folder), "--csv", str(out), "--top-k", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [str(folder / s / f"{i}.png") for i, s in enumerate("aaabbb")]
    assert list(rows[0]) == ["image", "label", "probability", "label_2", "probability_2"]
    model, _, _ = load_classifier(run / "classifier.safetensors")
    expected = predict(model, images, exp.preprocess)["probs"]
    names = exp.dataset.class_names
    assert [r["label"] for r in rows] == [names[c] for c in expected.argmax(1).tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(expected.max(1).values.tolist(), abs=1e-5)
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in rows)
    assert capsys.readouterr().out.count(".png") == 6


def test_predict_files_and_globs(trained_run, digit_pngs, capsys):
    run, _ = trained_run
    folder, _ = digit_pngs
    assert main(["predict", str(run), str(folder / "a" / "0.png"), str(folder / "b" / "*.png")]) == 0
    assert capsys.readouterr().out.count(".png") == 4


@pytest.mark.parametrize("args, message", [
    (["{run}", "/nonexistent/*.png"], "IMAGES: '/nonexistent/*.png' matches no image file"),
    (["{folder}", "{folder}"], "is not a galot run folder"),
    (["{run}", "{folder}", "--top-k", "0"], "--top-k: must be at least 1"),
])
def test_predict_bad_input_is_one_line(trained_run, digit_pngs, capsys, args, message):
    run, _ = trained_run
    folder, _ = digit_pngs
    assert main(["predict", *[a.format(run=run, folder=folder) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
