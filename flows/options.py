"""The options every ``galot`` command shares: ``--params PATH`` and ``--set SECTION.KEY=VALUE``,
and the configuration they load (one place, so every command reads its parameters alike)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common_options(p: argparse.ArgumentParser) -> None:
    """--params and --set, on one command's parser."""
    p.add_argument("--params", default=None,
                   help="parameters file (default: ./params.yaml if it exists, else every key at its default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one parameter, e.g. --set al.strategy=BALD (repeatable)")


def params_path(args: argparse.Namespace) -> str | None:
    """--params as an absolute path; without it ./params.yaml, or None (all defaults) when there is none."""
    if args.params is None and not Path("params.yaml").is_file():
        return None
    return str(Path(args.params or "params.yaml").resolve())


def load_args_config(args: argparse.Namespace):
    """The Config of --params with the --set overrides applied."""
    from galot_core.params_file import load_config

    return load_config(params_path(args), args.overrides)
