"""The ``galot`` argument parser: one subcommand per command module function, with its options."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from galot.flows import experiment_commands as experiment
from galot.flows import label_commands as label
from galot.flows import project_commands as project
from galot.flows.options import add_common_options


def _version() -> str:
    """The installed distribution's version (what pip installed), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("galot")
    except PackageNotFoundError:
        from galot import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galot",
        description="Train image classifiers from class names plus few labels, by generative active learning.",
    )
    parser.add_argument("--version", action="version", version=f"galot {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = _add_experiment_commands(sub)
    _add_predict(sub)
    _add_init(sub)
    _add_label(sub)
    parsers["transfer"].add_argument("--arch", action="append", default=[], metavar="ARCH",
                                     help="architecture to train (repeatable; default: transfer.archs)")
    parsers["verify"].add_argument("run", nargs="?", help="run folder (default: the experiment in params.yaml)")
    parsers["prepare"].add_argument("--out", default="runs/prepared.json", help="summary file to write")
    parsers["pretrain-t2i"].add_argument("--out", help="output folder (default: pretrain.out)")
    q = parsers["t2i-quality"]
    q.add_argument("--out", default="runs/t2i_quality.json", help="metrics file to write")
    q.add_argument("--per-class", type=int, default=50, help="images generated per class (default 50)")
    q.add_argument("--reference", choices=("test", "val"), default="test",
                   help="real split to compare with (val: for choosing models without the test set)")
    q.add_argument("--seed", type=int, default=0, help="seed of the generation noise and the real floor sample")
    return parser


def _add_experiment_commands(sub: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """The commands that read the experiment's parameters, with --params/--set; returns their parsers by name."""
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("run", "run all cycles of the experiment in params.yaml (resumes where it stopped)", experiment.cmd_run),
        ("cycle", "advance the experiment by one cycle", experiment.cmd_cycle),
        ("transfer", "train other architectures on the experiment's cached real + synthetic data (no generation)",
         experiment.cmd_transfer),
        ("prepare", "check the dataset and train the judge classifier that scores pseudo-labels",
         experiment.cmd_prepare),
        ("pretrain-t2i", "train the embedded text-to-image model galot-mini (about 15 min on 2 CPU cores)",
         experiment.cmd_pretrain_t2i),
        ("t2i-quality", "measure the text-to-image model at ε = 0: judged accuracy per class, Fréchet distance "
                        "and diversity in the judge's features, each beside its real floor", experiment.cmd_t2i_quality),
        ("serve", "serve the galot/cycle, galot-run/run and galot-transfer/transfer Prefect deployments",
         experiment.cmd_serve),
        ("report", "write runs/<name>/report/report.md with the accuracy plot, baselines and sample grids",
         experiment.cmd_report),
        ("verify", "check a run folder's synthetic images, pool state and model files against their recorded "
                   "hashes; exit 1 on any missing, truncated or altered file", experiment.cmd_verify),
    ]
    parsers = {}
    for name, help_text, fn in commands:
        p = parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        add_common_options(p)
        p.set_defaults(fn=fn)
    for name in ("run", "cycle"):
        parsers[name].add_argument("--baseline", metavar="STRATEGY",
                                   help="run the AL-only baseline with the same budgets instead "
                                        "(in <runs_dir>/<name>-baselines/STRATEGY)")
        parsers[name].add_argument("--restart-if-changed", action="store_true",
                                   help="if the run folder was started with other parameters, move it to "
                                        "runs/.replaced/ and start afresh (what dvc repro does) instead of failing")
    parsers["run"].add_argument("--wait-for-labels", action="store_true",
                                help="human oracle: pause the flow run (needs a Prefect server) until the batch is "
                                     "labelled, instead of stopping with exit status 3")
    return parsers


def _add_predict(sub: argparse._SubParsersAction) -> None:
    pp = sub.add_parser("predict", help="classify images with a trained classifier (top-k classes and probabilities)",
                        description="Classify image files with a run's classifier, preprocessed exactly as in "
                                    "training. RUN_OR_MODEL: a run folder (runs/<name>), an MLflow model URI "
                                    "(runs:/<id>/model, models:/<name>/<version>) or a folder with an MLmodel file.")
    pp.add_argument("model", metavar="RUN_OR_MODEL")
    pp.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (searched recursively) or globs")
    pp.add_argument("--csv", metavar="OUT", help="also write image,label,probability[,label_2,probability_2...] "
                                                 "to OUT; - is standard output (then the only output there); a "
                                                 "symlink is written through, a device such as /dev/null written "
                                                 "directly, a regular file replaced atomically")
    pp.add_argument("-k", "--top-k", type=int, default=3, help="classes to show per image (default 3)")
    pp.set_defaults(fn=project.cmd_predict)


def _add_init(sub: argparse._SubParsersAction) -> None:
    ip = sub.add_parser("init", help="write a starter params.yaml and dvc.yaml for a new project",
                        description="Start a galot project in DIR (default: here): params.yaml with every key at "
                                    "its default, the DVC pipeline dvc.yaml, a .gitignore; --dvc also runs `dvc init`.")
    ip.add_argument("dir", nargs="?", default=".", metavar="DIR")
    ip.add_argument("--dvc", action="store_true", help="also create .dvc/ (dvc init; --no-scm outside a git repo)")
    ip.add_argument("--force", action="store_true", help="overwrite an existing params.yaml / dvc.yaml")
    ip.add_argument("--preset", metavar="FAMILY",
                    help="a text-to-image family's settings (sd, sdxl, flux, sd3, flux2, zimage; README, 'Supported "
                         "text-to-image models'): steps, guidance, dtype, scheduler, estimator, ε, and t2i.model")
    ip.add_argument("--model", metavar="ID_OR_FOLDER", help="with --preset: t2i.model (default: the preset's "
                                                            "example hub id)")
    ip.set_defaults(fn=project.cmd_init)


def _add_label(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("label", help="give a human oracle's labels: export / import a CSV, or a labelling page",
                            description="Label the batch a human-oracle experiment waits for (exit status 3 of "
                                        "`galot run`), then continue it.")
    label_sub = parser.add_subparsers(dest="label_command", required=True)
    lp = label_sub.add_parser("export", help="write the pending batch as CSV (image,label,source)")
    lp.add_argument("run", help="run folder, e.g. runs/my-images")
    lp.add_argument("-o", "--out", help="CSV to write (default: RUN/labels/cycle_NNN.csv; '-' for stdout)")
    lp.set_defaults(fn=label.cmd_label_export)
    lp = label_sub.add_parser("import", help="add labels from a CSV (image,label); checked, partial files are fine")
    lp.add_argument("run", help="run folder")
    lp.add_argument("file", help="CSV with an image column (id, path or file name) and a label column")
    lp.set_defaults(fn=label.cmd_label_import)
    lp = label_sub.add_parser("serve", help="a labelling page on 127.0.0.1; its done button continues the run")
    lp.add_argument("run", help="run folder")
    lp.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    add_common_options(lp)
    lp.set_defaults(fn=label.cmd_label_serve)
