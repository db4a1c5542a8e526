"""``galot`` — the command line front door.

Every command reads ``--params PATH`` (default ``./params.yaml``) and any number of
``--set section.key=value`` overrides, the same dotted keys ``dvc exp run -S`` takes.
A mistake in them, or in a dataset or model path, prints one line and exits with 2.
A human-oracle experiment that waits for a person's labels prints one line saying how to
give them (``galot label serve|import``) and exits with 3; rerunning continues it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from galot_core.errors import GalotError
from galot_core.labels import WaitingForLabels


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None,
                   help="parameters file (default: ./params.yaml if it exists, else every key at its default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one parameter, e.g. --set al.strategy=BALD (repeatable)")


def _params(args: argparse.Namespace) -> str | None:
    """--params as an absolute path; without it ./params.yaml, or None (all defaults) when there is none."""
    if args.params is None and not Path("params.yaml").is_file():
        return None
    return str(Path(args.params or "params.yaml").resolve())


def _config(args: argparse.Namespace):
    from galot_core.config import load_config

    return load_config(_params(args), args.overrides)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy by cycle as a fixed-width text table."""
    judged = any(r.get("judged_accuracy") is not None for r in rows)
    header = f"{'cycle':>5}  {'|L|':>6}  {'|G|':>6}  {'eps':>6}  {'test acc':>8}" + ("  judged" if judged else "")
    lines = [header, "-" * len(header)]
    for r in rows:
        acc = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"  # n/a: no labelled test set
        line = f"{r['cycle']:>5}  {r['labelled']:>6}  {r['generated']:>6}  {r['epsilon']:>6.3f}  {acc:>8}"
        if judged:
            line += f"  {r['judged_accuracy']:>6.3f}" if r.get("judged_accuracy") is not None else "       –"
        lines.append(line)
    return "\n".join(lines)


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides plus the ones --baseline implies (the AL-only comparison run)."""
    overrides = list(args.overrides)
    if getattr(args, "baseline", None):
        from galot_core.config import AL_STRATEGIES
        from galot_core.experiment import baseline_config

        if args.baseline not in AL_STRATEGIES:
            raise GalotError(f"--baseline: unknown strategy {args.baseline!r}; use one of {', '.join(AL_STRATEGIES)}")
        b = baseline_config(_config(args), args.baseline)
        overrides += [f"experiment.runs_dir={b.experiment.runs_dir}", f"experiment.name={b.experiment.name}",
                      "experiment.mode=al", f"al.strategy={args.baseline}"]
    return overrides


def code_fingerprint() -> str:
    """SHA-256 of the source an experiment runs: every .py file of galot_core, tasks and flows as imported."""
    import hashlib
    import importlib

    h = hashlib.sha256()
    for name in ("galot_core", "tasks", "flows"):
        root = Path(importlib.import_module(name).__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{name}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _replace_if_code_changed(run_dir: Path, runs_dir: Path, code: str) -> Path | None:
    """Move aside a run folder started by other code (recorded in its code.json), as for changed parameters."""
    import time

    from galot_core.runfolder import RunFolder

    started = RunFolder(run_dir).read_code()
    if started is None or started == code:
        return None
    dest = runs_dir / ".replaced" / f"{run_dir.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(dest)
    return dest


def _prepare_run(args: argparse.Namespace, overrides: list[str]):
    """Validate everything cheap to check before Prefect starts, so mistakes are one line."""
    from galot_core.config import load_config
    from galot_core.experiment import replace_if_changed

    cfg = load_config(_params(args), overrides)
    code = code_fingerprint()
    if args.restart_if_changed:
        moved = replace_if_changed(cfg)
        if moved:
            print(f"galot: parameters changed; moved the old run folder to {moved} and starting afresh", flush=True)
        moved = _replace_if_code_changed(cfg.run_dir, Path(cfg.experiment.runs_dir), code)
        if moved:
            print(f"galot: galot's code changed since this run started; moved the old run folder to {moved} and "
                  "starting afresh", flush=True)
    from galot.tasks.cycle import context

    # The flow's tasks reuse this context (same parameters, same process), so the dataset
    # and the diffusion model loaded for these checks are loaded once.
    exp = context(cfg.to_dict())
    # Everything that can be wrong is checked before the first byte is written.
    exp.dataset  # noqa: B018  (a bad dataset path fails here, with one line)
    exp.check()
    if exp.uses_generation and exp.completed_cycles() < cfg.experiment.cycles:
        exp.t2i  # noqa: B018  (an unknown or incomplete model fails here)
    exp.start()
    if exp.folder.read_code() is None:  # the code that started the run (what --restart-if-changed compares)
        exp.folder.write_code(code)
    return cfg, exp


def cmd_run(args: argparse.Namespace) -> int:
    from galot.flows.galot import galot_run

    overrides = _run_overrides(args)
    cfg, exp = _prepare_run(args, overrides)
    print(f"galot: experiment '{cfg.experiment.name}' ({cfg.experiment.mode}, {cfg.data.dataset}, "
          f"{cfg.experiment.cycles} cycles, {exp.completed_cycles()} done) in {exp.dir}", flush=True)
    if args.wait_for_labels:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise GalotError("--wait-for-labels: pausing for labels needs a Prefect server; start one and set "
                             "PREFECT_API_URL, or run without --wait-for-labels (galot then stops and you rerun it)")
    rows = galot_run(_params(args), overrides, args.wait_for_labels)
    print(format_table(rows))
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    from galot.flows.galot import galot_cycle
    from galot_core.context import describe
    from galot_core.cycle import next_cycle

    overrides = _run_overrides(args)
    cfg, exp = _prepare_run(args, overrides)
    next_cycle(exp)  # one line when every cycle is complete
    m = galot_cycle(_params(args), overrides)
    print(format_table(exp.all_metrics()))
    print(f"galot: cycle {m['cycle']} complete, test accuracy {describe(m['test_accuracy'])}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from galot.flows.galot import galot_transfer
    from galot_core.export import read_index

    cfg = _config(args)
    read_index(cfg.run_dir / "dataset")  # one clear line if the experiment has not exported anything yet
    results = galot_transfer(_params(args), list(args.overrides), args.arch or None)
    print(f"{'arch':<14}  {'real':>5}  {'gen':>5}  {'test acc':>8}  {'seconds':>7}  unet calls")
    for r in results:
        acc = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        print(f"{r['arch']:<14}  {r['real']:>5}  {r['generated']:>5}  {acc:>8}  "
              f"{r['seconds']:>7.0f}  {r['unet_calls']}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from galot_core.prepare import prepare

    cfg = _config(args)
    info = prepare(cfg, Path(args.out))
    judge = info.get("judge")
    print(f"galot: {info['dataset']}: {len(info['class_names'])} classes, pool {info['pool']}, test {info['test']}"
          + (f"; judge {judge['path']} (test accuracy {judge['test_accuracy']:.4f})" if judge else "")
          + f" -> {args.out}")
    return 0


def cmd_pretrain_t2i(args: argparse.Namespace) -> int:
    from galot_core.data import load_dataset
    from galot_core.t2i.embedded import pretrain, pretrained_with

    cfg = _config(args)
    out = Path(args.out or cfg.pretrain.out)
    if args.out is None and cfg.t2i.model != cfg.pretrain.out:
        from galot_core.io import atomic_write_json

        atomic_write_json(out / "galot_pretrain.json", {"skipped": f"t2i.model is {cfg.t2i.model!r}, not the "
                                                                   f"embedded model at {cfg.pretrain.out!r}"})
        print(f"galot: t2i.model is {cfg.t2i.model}; nothing to pretrain (the embedded model is only for offline use)")
        return 0
    if pretrained_with(out, cfg.pretrain):
        print(f"galot: {out} is already pretrained with these pretrain.* parameters; nothing to do")
        return 0
    dataset = load_dataset(cfg.data)
    if dataset.t2i_train is None:
        raise GalotError(f"data.dataset: '{cfg.data.dataset}' has no split reserved for pretraining the embedded "
                         "model; pretrain-t2i works with mnist5k and fashion_mnist, other datasets use Stable Diffusion (t2i.model)")
    print(f"galot: pretraining galot-mini on {len(dataset.t2i_train)} {cfg.data.dataset} images "
          f"(disjoint from pool and test) -> {out}", flush=True)
    info = pretrain(dataset.t2i_train.images, dataset.t2i_train.labels, dataset.class_names, out, cfg.pretrain,
                    captions=dataset.t2i_captions)
    print(f"galot: saved {out} after {info['total_seconds'] / 60:.1f} min "
          f"(vae {info['vae_seconds'] / 60:.1f}, unet {info['unet_seconds'] / 60:.1f})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from galot.flows.serve import serve

    serve(_params(args), list(args.overrides))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from galot_core.verify import format_report, verify_run

    run_dir = Path(args.run) if args.run else _config(args).run_dir
    problems, checked = verify_run(run_dir)
    print(format_report(problems, checked, run_dir))
    return 1 if problems else 0


def cmd_report(args: argparse.Namespace) -> int:
    from galot_core.report import write_report

    path, table = write_report(_config(args))
    print(table)
    print(f"galot: report written to {path}")
    return 0


def _predictor(source: str):
    """A run folder through galot, anything else (runs:/, models:/, a folder with MLmodel) through MLflow."""
    from galot_core.predict import load_predictor

    path = Path(source)
    if ":/" in source or (path.is_dir() and (path / "MLmodel").is_file()):
        from galot.tasks.tracking import load_logged_model

        return load_logged_model(source)
    return load_predictor(path)


def cmd_predict(args: argparse.Namespace) -> int:
    from galot_core.io import atomic_write_text
    from galot_core.predict import classify, image_files, rows_csv

    if args.top_k < 1:
        raise GalotError(f"--top-k: must be at least 1, got {args.top_k}")
    files = image_files(args.images)
    predictor, card = _predictor(args.model)
    rows, skipped = classify(predictor, card, files, top_k=args.top_k)
    width = max((len(r["image"]) for r in rows), default=5)
    for r in rows:
        print(f"{r['image']:<{width}}  " + "  ".join(f"{name} {p:.3f}" for name, p in r["top"]))
    for f in skipped:
        print(f"galot: skipped {f}: not a readable image", file=sys.stderr)
    if args.csv:
        atomic_write_text(Path(args.csv), rows_csv(rows))
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


def cmd_init(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    from importlib.resources import files

    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise GalotError(f"DIR: '{folder}' is a file; give a folder (created if missing)")
    templates = files("galot") / "templates"
    wanted = {"params.yaml": templates.joinpath("params.yaml").read_text(encoding="utf-8"),
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
    print(f"galot: wrote {folder / 'params.yaml'} (every key, at its default) and {folder / 'dvc.yaml'}"
          + (" and .dvc/" if args.dvc else ""))
    print(f"galot: next: cd {folder} && galot run   (or `dvc repro` for the whole pipeline: galot-mini, GALOT, "
          "baselines, transfers, report); edit data.* in params.yaml for your own images")
    return 0


def _run_folder(path: str) -> Path:
    run = Path(path)
    if not (run / "config.json").is_file():
        raise GalotError(f"run: '{run}' is not a galot run folder (no config.json); give runs/<experiment.name>")
    return run


def _pending(run: Path) -> int:
    from galot_core import labels

    cycle = labels.pending_cycle(run)
    if cycle is None:
        raise GalotError(f"run: no batch of '{run}' waits for labels; `galot run` stops at the next one "
                         "(experiment.oracle: human)")
    return cycle


def cmd_label_export(args: argparse.Namespace) -> int:
    from galot_core import labels
    from galot_core.io import atomic_write_text

    run = _run_folder(args.run)
    cycle = _pending(run)
    batch = labels.read_batch(run, cycle)
    answers = labels.read_answers(run, cycle)
    text = labels.export_csv(batch, answers)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out) if args.out else run / "labels" / f"cycle_{cycle:03d}.csv"
    atomic_write_text(out, text)
    left = len(labels.missing(batch, answers))
    print(f"galot: cycle {cycle}: {len(batch.items)} images ({left} without a label) -> {out}; fill the label column "
          f"with one of: {', '.join(batch.classes)} or {labels.SKIP}, then `galot label import {run} {out}`")
    return 0


def cmd_label_import(args: argparse.Namespace) -> int:
    from galot.flows.labelling import resume_paused
    from galot_core import labels

    run = _run_folder(args.run)
    report = labels.import_csv(run, args.file)
    for line in report.lines():
        print(f"galot: {line}")
    if report.missing:
        return 0
    flow_run = resume_paused(run, report.cycle)
    print(f"galot: resumed the paused Prefect flow run {flow_run}" if flow_run else
          f"galot: cycle {report.cycle} is fully labelled; run `galot run` to continue")
    return 0


def _continue_command(args: argparse.Namespace, run: Path) -> list[str]:
    """The `galot run` that continues this run folder: with --params if they name it, else its config.json."""
    from galot_core.config import load_config

    base = [sys.executable, "-m", "galot.flows.cli", "run"]
    params = Path(_params(args) or "params.yaml")
    if params.is_file() and load_config(params, args.overrides).run_dir.resolve() == run.resolve():
        return base + ["--params", str(params.resolve())] + [a for o in args.overrides for a in ("--set", o)]
    run = run.resolve()
    return base + ["--params", str(run / "config.json"), "--set", f"experiment.runs_dir={run.parent}",
                   "--set", f"experiment.name={run.name}"] + [a for o in args.overrides for a in ("--set", o)]


def cmd_label_serve(args: argparse.Namespace) -> int:
    from galot.flows.labelling import Continuation
    from galot.flows.labelpage import LabelServer

    run = _run_folder(args.run)
    cont = Continuation(run, _continue_command(args, run))
    try:
        server = LabelServer(run, port=args.port, on_done=cont, activity=cont.activity)
    except OSError as e:
        raise GalotError(f"--port: cannot listen on 127.0.0.1:{args.port} ({e.strerror}); choose another port") from None
    print(f"galot: labelling page for {run} at {server.url} (Ctrl-C to stop)", flush=True)
    # Ctrl-C (and a plain `kill`) stop the page even when this process inherited SIGINT as
    # ignored, as everything started in the background by a non-interactive shell does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    if cont.proc is not None and cont.proc.poll() is None:
        print(f"galot: waiting for the running experiment (pid {cont.proc.pid}) to reach a stop", flush=True)
        cont.wait()
    return 0


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
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("run", "run all cycles of the experiment in params.yaml (resumes where it stopped)", cmd_run),
        ("cycle", "advance the experiment by one cycle", cmd_cycle),
        ("transfer", "train other architectures on the experiment's cached real + synthetic data (no generation)",
         cmd_transfer),
        ("prepare", "check the dataset and train the judge classifier that scores pseudo-labels", cmd_prepare),
        ("pretrain-t2i", "train the embedded text-to-image model galot-mini (about 15 min on 2 CPU cores)",
         cmd_pretrain_t2i),
        ("serve", "serve the galot/cycle, galot-run/run and galot-transfer/transfer Prefect deployments", cmd_serve),
        ("report", "write runs/<name>/report/report.md with the accuracy plot, baselines and sample grids",
         cmd_report),
        ("verify", "check a run folder's synthetic images, pool state and model files against their recorded "
                   "hashes; exit 1 on any missing, truncated or altered file", cmd_verify),
    ]
    parsers = {}
    for name, help_text, fn in commands:
        p = parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
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
    pp = sub.add_parser("predict", help="classify images with a trained classifier (top-k classes and probabilities)",
                        description="Classify image files with a run's classifier, preprocessed exactly as in "
                                    "training. RUN_OR_MODEL: a run folder (runs/<name>), an MLflow model URI "
                                    "(runs:/<id>/model, models:/<name>/<version>) or a folder with an MLmodel file.")
    pp.add_argument("model", metavar="RUN_OR_MODEL")
    pp.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (searched recursively) or globs")
    pp.add_argument("--csv", metavar="OUT", help="also write image,label,probability[,label_2,probability_2...]")
    pp.add_argument("-k", "--top-k", type=int, default=3, help="classes to show per image (default 3)")
    pp.set_defaults(fn=cmd_predict)
    ip = sub.add_parser("init", help="write a starter params.yaml and dvc.yaml for a new project",
                        description="Start a galot project in DIR (default: here): params.yaml with every key at "
                                    "its default, the DVC pipeline dvc.yaml, a .gitignore; --dvc also runs `dvc init`.")
    ip.add_argument("dir", nargs="?", default=".", metavar="DIR")
    ip.add_argument("--dvc", action="store_true", help="also create .dvc/ (dvc init; --no-scm outside a git repo)")
    ip.add_argument("--force", action="store_true", help="overwrite an existing params.yaml / dvc.yaml")
    ip.set_defaults(fn=cmd_init)
    label = sub.add_parser("label", help="give a human oracle's labels: export / import a CSV, or a labelling page",
                           description="Label the batch a human-oracle experiment waits for (exit status 3 of "
                                       "`galot run`), then continue it.")
    label_sub = label.add_subparsers(dest="label_command", required=True)
    lp = label_sub.add_parser("export", help="write the pending batch as CSV (image,label,source)")
    lp.add_argument("run", help="run folder, e.g. runs/my-images")
    lp.add_argument("-o", "--out", help="CSV to write (default: RUN/labels/cycle_NNN.csv; '-' for stdout)")
    lp.set_defaults(fn=cmd_label_export)
    lp = label_sub.add_parser("import", help="add labels from a CSV (image,label); checked, partial files are fine")
    lp.add_argument("run", help="run folder")
    lp.add_argument("file", help="CSV with an image column (id, path or file name) and a label column")
    lp.set_defaults(fn=cmd_label_import)
    lp = label_sub.add_parser("serve", help="a labelling page on 127.0.0.1; its done button continues the run")
    lp.add_argument("run", help="run folder")
    lp.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    _common(lp)
    lp.set_defaults(fn=cmd_label_serve)
    parsers["transfer"].add_argument("--arch", action="append", default=[], metavar="ARCH",
                                     help="architecture to train (repeatable; default: transfer.archs)")
    parsers["verify"].add_argument("run", nargs="?", help="run folder (default: the experiment in params.yaml)")
    parsers["prepare"].add_argument("--out", default="runs/prepared.json", help="summary file to write")
    parsers["pretrain-t2i"].add_argument("--out", help="output folder (default: pretrain.out)")
    return parser


def _install_log_filter() -> None:
    """Prefect logs a failed task's exception with its traceback. For a GalotError — a mistake
    in the inputs, already explained in one line — keep the message and drop the traceback.
    Done in the record factory because Prefect (re)configures its handlers at run time."""
    make = logging.getLogRecordFactory()

    def factory(name, level, fn, lno, msg, args, exc_info, func=None, sinfo=None, **kwargs):
        if exc_info and isinstance(exc_info, tuple) and isinstance(exc_info[1], GalotError):
            exc_info = None
        return make(name, level, fn, lno, msg, args, exc_info, func, sinfo, **kwargs)

    logging.setLogRecordFactory(factory)


def main(argv: Sequence[str] | None = None) -> int:
    # Downloads happen only where a parameter allows them (t2i.allow_download, data.download);
    # the hub client's telemetry never.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Prefect's ephemeral server migrates a fresh database on first start (seen > 20 s on 2 cores).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # No telemetry from an offline tool (and its first write races with migrations on a new database).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("run", "cycle", "transfer", "serve"):
            _install_log_filter()
        return args.fn(args)
    except WaitingForLabels as e:
        print(f"galot: {e}", file=sys.stderr)
        return e.exit_code
    except GalotError as e:
        for line in str(e).splitlines() or [""]:
            print(f"galot: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("galot: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
