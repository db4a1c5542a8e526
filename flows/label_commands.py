"""``galot label export|import|serve``: give a human oracle's labels to the batch a run waits for
(exit status 3 of ``galot run``), as a CSV or on a local labelling page, then continue the run."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from galot.flows.options import params_path
from galot_core.errors import GalotError, show_names


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
    from galot_core import label_files, labels
    from galot_core.io import atomic_write_text

    run = _run_folder(args.run)
    cycle = _pending(run)
    batch = labels.read_batch(run, cycle)
    answers = labels.read_answers(run, cycle)
    text = label_files.export_csv(batch, answers)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out) if args.out else run / "labels" / f"cycle_{cycle:03d}.csv"
    atomic_write_text(out, text)
    left = len(labels.missing(batch, answers))
    print(f"galot: cycle {cycle}: {len(batch.items)} images ({left} without a label) -> {out}; fill the label column "
          f"with one of: {show_names(batch.classes)} or {labels.SKIP}, then `galot label import {run} {out}`")
    return 0


def cmd_label_import(args: argparse.Namespace) -> int:
    from galot.flows.labelling import resume_paused
    from galot_core import label_files

    run = _run_folder(args.run)
    report = label_files.import_csv(run, args.file)
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
    from galot_core.params_file import load_config

    base = [sys.executable, "-m", "galot.flows.cli", "run"]
    params = Path(params_path(args) or "params.yaml")
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
