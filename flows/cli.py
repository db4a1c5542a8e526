"""``galot`` — the command line front door.

Every command reads ``--params PATH`` (default ``./params.yaml``) and any number of
``--set section.key=value`` overrides, the same dotted keys ``dvc exp run -S`` takes.
A mistake in them, or in a dataset or model path, prints one line and exits with 2; so does a
file-system error (a read-only disk, a directory where a file belongs), with its path and the fix.
A human-oracle experiment that waits for a person's labels prints one line saying how to
give them (``galot label serve|import``) and exits with 3; rerunning continues it.

This module is the entry point only; the parser is :mod:`galot.flows.parser`, the commands are
in :mod:`galot.flows.experiment_commands`, :mod:`galot.flows.project_commands` and
:mod:`galot.flows.label_commands`, their shared options in :mod:`galot.flows.options`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from galot.flows.parser import build_parser
from galot_core.errors import GalotError, os_error
from galot_core.labels import WaitingForLabels


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
    except OSError as e:  # a read-only file system, a directory where a file belongs: one line with the fix
        print(f"galot: error: {os_error(e)}"[:2000], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galot: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
