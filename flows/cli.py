"""``galot`` — the command line front door.

Every command reads ``--params PATH`` (default ``./params.yaml``) and any number of
``--set section.key=value`` overrides, the same dotted keys ``dvc exp run -S`` takes.
A mistake in them, or in a dataset or model path, prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from galot_core.errors import GalotError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameters file (default: ./params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one parameter, e.g. --set al.strategy=BALD (repeatable)")


def _config(args: argparse.Namespace):
    from galot_core.config import load_config

    return load_config(args.params, args.overrides)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy by cycle as a fixed-width text table."""
    header = f"{'cycle':>5}  {'|L|':>6}  {'|G|':>6}  {'eps':>6}  {'test acc':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['cycle']:>5}  {r['labelled']:>6}  {r['generated']:>6}  {r['epsilon']:>6.3f}  "
                     f"{r['test_accuracy']:>8.4f}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from galot_core.experiment import Experiment

    cfg = _config(args)
    exp = Experiment(cfg)
    print(f"galot: experiment '{cfg.experiment.name}' ({cfg.experiment.mode}, {cfg.data.dataset}, "
          f"{cfg.experiment.cycles} cycles) in {exp.dir}", flush=True)
    rows = exp.run()
    print(format_table(rows))
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    from galot_core.experiment import Experiment

    exp = Experiment(_config(args))
    m = exp.run_cycle()
    print(format_table(exp.all_metrics()))
    print(f"galot: cycle {m.cycle} complete, test accuracy {m.test_accuracy:.4f}")
    return 0


def cmd_pretrain_t2i(args: argparse.Namespace) -> int:
    from galot_core.data import load_dataset
    from galot_core.t2i.embedded import PretrainConfig, pretrain

    cfg = _config(args)
    dataset = load_dataset(cfg.data)
    if dataset.t2i_train is None:
        raise GalotError(f"data.dataset: '{cfg.data.dataset}' has no split reserved for pretraining the embedded "
                         "model; pretrain-t2i works with mnist5k, other datasets use Stable Diffusion (t2i.model)")
    out = args.out or cfg.t2i.model
    pcfg = PretrainConfig(unet_steps=args.unet_steps) if args.unet_steps else PretrainConfig()
    print(f"galot: pretraining galot-mini on {len(dataset.t2i_train)} {cfg.data.dataset} images "
          f"(disjoint from pool and test) -> {out}", flush=True)
    info = pretrain(dataset.t2i_train.images, dataset.t2i_train.labels, dataset.class_names, out, pcfg)
    print(f"galot: saved {out} after {info['total_seconds'] / 60:.1f} min "
          f"(vae {info['vae_seconds'] / 60:.1f}, unet {info['unet_seconds'] / 60:.1f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galot",
        description="Train image classifiers from class names plus few labels, by generative active learning.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("run", "run all cycles of the experiment in params.yaml (resumes where it stopped)", cmd_run),
        ("cycle", "advance the experiment by one cycle", cmd_cycle),
    ]
    commands.append(("pretrain-t2i", "train the embedded text-to-image model galot-mini (about 20 min on 2 CPU cores)",
                     cmd_pretrain_t2i))
    parsers = {}
    for name, help_text, fn in commands:
        p = parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(fn=fn)
    parsers["pretrain-t2i"].add_argument("--out", help="output folder (default: t2i.model)")
    parsers["pretrain-t2i"].add_argument("--unet-steps", type=int, help="UNet training steps (default 1500)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except GalotError as e:
        print(f"galot: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("galot: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
