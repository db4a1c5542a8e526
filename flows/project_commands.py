"""The project commands: ``galot predict`` (classify images with a trained classifier) and
``galot init`` (a starter params.yaml, dvc.yaml and .gitignore for a new project)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from galot_core.errors import GalotError


def _predictor(source: str):
    """A run folder through galot, anything else (runs:/, models:/, a folder with MLmodel) through MLflow."""
    from galot_core.predict import load_predictor

    path = Path(source)
    if ":/" in source or (path.is_dir() and (path / "MLmodel").is_file()):
        from galot.tasks.tracking import load_logged_model

        return load_logged_model(source)
    return load_predictor(path)


def cmd_predict(args: argparse.Namespace) -> int:
    from galot_core.output import STDOUT, write_text_output
    from galot_core.predict import classify, image_files, rows_csv

    if args.top_k < 1:
        raise GalotError(f"--top-k: must be at least 1, got {args.top_k}")
    files = image_files(args.images)
    predictor, card = _predictor(args.model)
    rows, skipped = classify(predictor, card, files, top_k=args.top_k)
    width = max((len(r["image"]) for r in rows), default=5)
    if args.csv != STDOUT:  # with --csv -, standard output is the CSV alone
        for r in rows:
            print(f"{r['image']:<{width}}  " + "  ".join(f"{name} {p:.3f}" for name, p in r["top"]))
    for f in skipped:
        print(f"galot: skipped {f}: not a readable image", file=sys.stderr)
    if args.csv:
        write_text_output(args.csv, rows_csv(rows))
        if args.csv != STDOUT:
            print(f"galot: {len(rows)} predictions written to {args.csv}", file=sys.stderr)
    return 0


_GITIGNORE = "/runs/\n/models/\n/data/\nmlflow.db\nmlartifacts/\n/dvc_plots/\n"


def starter_dvc_yaml(text: str) -> str:
    """The project's dvc.yaml for a new folder: without the deps on galot's own source files,
    which there are an installed package (upgrade galot, then `dvc repro --force`)."""
    import re

    code = re.compile(r"^\s*- (galot_core|tasks|flows)(/\S*)?\s*$|^\s*# the code it runs")
    lines = [line for line in text.splitlines(keepends=True) if not code.match(line)]
    # A deps: left without items (the stage listed only code) goes too.
    return "".join(line for i, line in enumerate(lines)
                   if not (line.strip() == "deps:" and not lines[i + 1].lstrip().startswith("- ")))


def _with_preset(params: str, family: str, model: str | None) -> str:
    """The starter params.yaml with ``family``'s preset and ``t2i.model`` (a hub id may be downloaded)."""
    from galot_core.params_file import set_in_text
    from galot_core.t2i.presets import PRESETS, preset_settings

    if family not in PRESETS:
        raise GalotError(f"--preset: {family!r} is not a model family; use one of {', '.join(PRESETS)}")
    model = model or PRESETS[family].example
    local = Path(model).expanduser().exists()
    return set_in_text(params, {**preset_settings(family), "t2i.model": model, "t2i.allow_download": not local},
                       note=f"galot init --preset {family} (README, 'Supported text-to-image models')")


def cmd_init(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    from importlib.resources import files

    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise GalotError(f"DIR: '{folder}' is a file; give a folder (created if missing)")
    templates = files("galot") / "templates"
    params = templates.joinpath("params.yaml").read_text(encoding="utf-8")
    if args.preset is not None:
        params = _with_preset(params, args.preset, args.model)
    elif args.model is not None:
        raise GalotError("--model: only with --preset FAMILY (the model's settings); or set t2i.model in params.yaml")
    wanted = {"params.yaml": params,
              "dvc.yaml": starter_dvc_yaml(templates.joinpath("dvc.yaml").read_text(encoding="utf-8"))}
    existing = [n for n in wanted if (folder / n).exists()]
    if existing and not args.force:
        raise GalotError(f"DIR: {folder / existing[0]} already exists; pass --force to overwrite, or init another folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (folder / name).write_text(text, encoding="utf-8")
    if not (folder / ".gitignore").exists():
        (folder / ".gitignore").write_text(_GITIGNORE)
    if args.dvc and not (folder / ".dvc").exists():
        dvc = shutil.which("dvc")
        if dvc is None:
            raise GalotError("--dvc: the dvc command is not on PATH; install galot into this environment, or drop --dvc")
        in_git = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=folder, capture_output=True,
                                text=True).returncode == 0 if shutil.which("git") else False
        r = subprocess.run([dvc, "init", "-q", *([] if in_git else ["--no-scm"])], cwd=folder, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise GalotError(f"--dvc: `dvc init` failed in {folder}: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    keys = "at its default" if args.preset is None else f"the {args.preset} preset for the text-to-image model"
    print(f"galot: wrote {folder / 'params.yaml'} (every key, {keys}) and {folder / 'dvc.yaml'}"
          + (" and .dvc/" if args.dvc else ""))
    if args.preset is not None:
        print("galot: a hub model is downloaded on first use (t2i.allow_download: true); a gated one needs "
              "`hf auth login`; the presets: README, 'Supported text-to-image models'")
    print(f"galot: next: cd {folder} && galot run   (or `dvc repro` for the whole pipeline: galot-mini, GALOT, "
          "baselines, transfers, report); edit data.* in params.yaml for your own images")
    return 0
