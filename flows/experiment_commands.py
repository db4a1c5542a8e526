"""The experiment commands: ``galot run``, ``cycle``, ``transfer``, ``prepare``, ``pretrain-t2i``,
``serve``, ``verify`` and ``report``.

Each checks what is cheap to check (parameters, dataset, model) before a Prefect flow starts, so a
mistake is one line, then calls the flow or the galot_core function and prints its summary.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from galot.flows.options import load_args_config, params_path
from galot_core.errors import GalotError


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
        b = baseline_config(load_args_config(args), args.baseline)
        overrides += [f"experiment.runs_dir={b.experiment.runs_dir}", f"experiment.name={b.experiment.name}",
                      "experiment.mode=al", f"al.strategy={args.baseline}"]
    return overrides


def code_fingerprint() -> str:
    """SHA-256 of the source an experiment runs: every .py file of galot_core, tasks and flows as imported."""
    import hashlib
    import importlib

    h = hashlib.sha256()
    for name in ("galot_core", "galot.tasks", "galot.flows"):
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


def _prepare_run(args: argparse.Namespace, overrides: list[str], stack: ExitStack):
    """Validate everything cheap to check before Prefect starts, so mistakes are one line; then
    hold the run folder's lock (in ``stack``) so that no second process runs the same experiment."""
    from galot_core.params_file import load_config
    from galot_core.experiment import replace_if_changed
    from galot.tasks.tracking_check import check_tracking

    cfg = load_config(params_path(args), overrides)
    check_tracking(cfg)  # an unusable MLFLOW_TRACKING_URI is one line now, not after the cycle's work
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
    exp = context(cfg)
    # Everything that can be wrong is checked before the first byte is written.
    exp.dataset  # noqa: B018  (a bad dataset path fails here, with one line)
    exp.check()
    if exp.uses_generation and exp.completed_cycles() < cfg.experiment.cycles:
        exp.t2i  # noqa: B018  (an unknown or incomplete model fails here)
    stack.enter_context(exp.folder.run_lock())
    exp.start()
    if exp.folder.read_code() is None:  # the code that started the run (what --restart-if-changed compares)
        exp.folder.write_code(code)
    return cfg, exp


def cmd_run(args: argparse.Namespace) -> int:
    overrides = _run_overrides(args)
    with ExitStack() as stack:
        cfg, exp = _prepare_run(args, overrides, stack)
        return _run(args, cfg, exp)


def _run(args: argparse.Namespace, cfg, exp) -> int:
    from galot.flows.galot import galot_run

    print(f"galot: experiment '{cfg.experiment.name}' ({cfg.experiment.mode}, {cfg.data.dataset}, "
          f"{cfg.experiment.cycles} cycles, {exp.completed_cycles()} done) in {exp.dir}", flush=True)
    if args.wait_for_labels:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise GalotError("--wait-for-labels: pausing for labels needs a Prefect server; start one and set "
                             "PREFECT_API_URL, or run without --wait-for-labels (galot then stops and you rerun it)")
    rows = galot_run(cfg, pause_for_labels=args.wait_for_labels)
    print(format_table(rows))
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    from galot.flows.galot import galot_cycle
    from galot_core.context import describe
    from galot_core.cycle import next_cycle

    overrides = _run_overrides(args)
    with ExitStack() as stack:
        cfg, exp = _prepare_run(args, overrides, stack)
        next_cycle(exp)  # one line when every cycle is complete
        m = galot_cycle(cfg)
    print(format_table(exp.all_metrics()))
    print(f"galot: cycle {m['cycle']} complete, test accuracy {describe(m['test_accuracy'])}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from galot.flows.galot import galot_transfer
    from galot_core.export import read_index

    cfg = load_args_config(args)
    read_index(cfg.run_dir / "dataset")  # one clear line if the experiment has not exported anything yet
    results = galot_transfer(cfg, archs=args.arch or None)
    print(f"{'arch':<14}  {'real':>5}  {'gen':>5}  {'test acc':>8}  {'seconds':>7}  unet calls")
    for r in results:
        acc = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        print(f"{r['arch']:<14}  {r['real']:>5}  {r['generated']:>5}  {acc:>8}  "
              f"{r['seconds']:>7.0f}  {r['unet_calls']}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from galot_core.prepare import prepare

    cfg = load_args_config(args)
    info = prepare(cfg, Path(args.out))
    judge = info.get("judge")
    print(f"galot: {info['dataset']}: {len(info['class_names'])} classes, pool {info['pool']}, test {info['test']}"
          + (f"; judge {judge['path']} (test accuracy {judge['test_accuracy']:.4f})" if judge else "")
          + f" -> {args.out}")
    return 0


def cmd_t2i_quality(args: argparse.Namespace) -> int:
    """Measure the experiment's T2I model at ε = 0: judged accuracy, Fréchet distance and diversity
    (galot_core/quality.py), each with its real floor; the DVC stage t2i_quality keeps it as metrics."""
    import torch

    from galot_core.context import load_t2i
    from galot_core.data import load_dataset
    from galot_core.io import atomic_write_json
    from galot_core.judge import load_or_train_judge
    from galot_core.quality import model_sha, realism

    cfg = load_args_config(args)
    if args.per_class < 2:
        raise GalotError(f"--per-class: must be at least 2 (diversity needs pairs), got {args.per_class}")
    if cfg.experiment.judge is None:  # a user's own folder has no fully labelled pool to judge with
        atomic_write_json(Path(args.out), {"skipped": "experiment.judge is not set: nothing judges the images"})
        print("galot: t2i-quality: experiment.judge is not set, nothing to measure with; set it to a path "
              f"(galot prepare trains the judge there) -> {args.out}")
        return 0
    dataset = load_dataset(cfg.data)
    reference = dataset.val if args.reference == "val" else dataset.test
    if reference is None:
        raise GalotError(f"--reference: {cfg.data.dataset} has no validation split; use --reference test")
    judge = load_or_train_judge(dataset, cfg.experiment.judge)
    t2i = load_t2i(cfg)
    s_star = t2i.encode([cfg.gal.template.format(label=name) for name in dataset.class_names])
    prompted = torch.arange(dataset.num_classes).repeat_interleave(args.per_class)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        images = torch.cat([t2i.generate(s_star[prompted[i:i + 100]], num_inference_steps=cfg.t2i.steps,
                                         guidance_scale=cfg.t2i.guidance_scale, generator=generator).cpu()
                            for i in range(0, len(prompted), 100)])
    result = {"model": cfg.t2i.model, "model_sha256": model_sha(cfg.t2i.model), "dataset": dataset.name,
              "class_names": dataset.class_names, "template": cfg.gal.template, "steps": cfg.t2i.steps,
              "guidance": cfg.t2i.guidance_scale, "seed": args.seed, "reference": args.reference,
              **realism(judge, dataset, images, prompted, reference, seed=args.seed)}
    atomic_write_json(Path(args.out), result)
    print(f"galot: {cfg.t2i.model} (model {result['model_sha256']}): judged {result['judged_accuracy']:.1%} "
          f"(worst class {min(result['judged_per_class']):.0%}), FD {result['fd']:.2f} (real floor "
          f"{result['fd_real_floor']:.2f}) -> {args.out}")
    return 0


def cmd_pretrain_t2i(args: argparse.Namespace) -> int:
    from galot_core.data import load_dataset
    from galot_core.t2i.embedded import pretrain, pretrained_with

    cfg = load_args_config(args)
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

    serve(params_path(args), list(args.overrides))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from galot_core.verify import format_report, verify_run

    run_dir = Path(args.run) if args.run else load_args_config(args).run_dir
    problems, checked = verify_run(run_dir)
    print(format_report(problems, checked, run_dir))
    return 1 if problems else 0


def cmd_report(args: argparse.Namespace) -> int:
    from galot_core.report import write_report

    path, table = write_report(load_args_config(args))
    print(table)
    print(f"galot: report written to {path}")
    return 0
