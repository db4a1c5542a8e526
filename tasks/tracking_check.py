"""Is MLFLOW_TRACKING_URI usable? Checked before a cycle's work starts, in seconds, in one line.

MLflow reads the tracking URI only when galot first logs, which is after a cycle has trained
and generated: an unsupported scheme then ends the run with MLflow's traceback, and a server
that does not answer makes the run hang on MLflow's retries (7 by default, two minutes each)
with the cycle's work done. :func:`check_tracking` runs where every cycle starts (the CLI's
checks, the ``galot`` and ``galot-run`` flows, before the run lock): it refuses a scheme MLflow
cannot track to, a SQLite database in a folder that does not exist, and an http(s) server that
does not answer within :data:`TIMEOUT_ENV` seconds (default :data:`DEFAULT_TIMEOUT_S`).

Schemes accepted, those of MLflow's tracking stores: a folder path (no scheme) or ``file:``;
SQLAlchemy databases ``sqlite:``, ``postgresql:``, ``mysql:``, ``mssql:`` (with ``+driver``);
``http:``/``https:`` (an MLflow server); ``databricks`` (its reachability is Databricks' to check:
it needs a profile). galot's tests use the folder path, ``file:``, ``sqlite:`` and ``http:``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from galot_core.config import Config
from galot_core.errors import GalotError, show
from galot.tasks.tracking import redacted, tracking_uri

TIMEOUT_ENV = "GALOT_TRACKING_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 5.0
SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
_FIX = "set MLFLOW_TRACKING_URI to a reachable store (e.g. sqlite:///mlflow.db), or tracking.mlflow: false"


def check_tracking(cfg: Config) -> None:
    """Raise one GalotError line when ``cfg`` tracks to MLflow and MLFLOW_TRACKING_URI cannot work."""
    if not cfg.tracking.mlflow:
        return
    uri = tracking_uri()
    shown = show(redacted(uri))
    scheme = urlsplit(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter (C:\mlruns) is a path
        scheme = ""
    if scheme.split("+")[0] not in SCHEMES:
        raise GalotError(f"MLFLOW_TRACKING_URI: {shown} has the scheme {show(scheme)}, which MLflow cannot track "
                         f"to (use a folder, file:, sqlite:, postgresql:, mysql:, mssql:, http(s): or "
                         f"databricks); {_FIX}")
    if scheme.startswith("sqlite") and uri.startswith(f"{scheme}:///") and uri != f"{scheme}:///:memory:":
        folder = Path(uri[len(f"{scheme}:///"):].split("?")[0]).parent
        if not folder.is_dir():
            raise GalotError(f"MLFLOW_TRACKING_URI: {shown} is a database in '{folder}', which is not a folder; "
                             f"create the folder or {_FIX}")
    if scheme in ("http", "https"):
        _check_server(uri, shown)


def timeout_s() -> float:
    """How long to wait for the tracking server: ``GALOT_TRACKING_TIMEOUT_S`` (a positive number), else 5."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise GalotError(f"{TIMEOUT_ENV}: must be a number of seconds in (0, 600], got {show(raw)}; fix or unset it")
    return value


def _check_server(uri: str, shown: str) -> None:
    """MLflow's ``/health`` under the URI answers 200 (or 401/403: authentication in front of it, which
    MLflow's client handles); a refused connection, an unknown host, no answer within the timeout or
    another status (a proxy's 502, a 404 from something that is not an MLflow server) is refused."""
    wait = timeout_s()
    parts = urlsplit(uri)
    if not parts.hostname:
        raise GalotError(f"MLFLOW_TRACKING_URI: {shown} names no host; {_FIX}")
    health = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], path=parts.path.rstrip("/") + "/health",
                            query="", fragment="").geturl()
    try:
        with urllib.request.urlopen(urllib.request.Request(health, method="GET"), timeout=wait):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return
        raise GalotError(f"MLFLOW_TRACKING_URI: {shown} answers HTTP {e.code} at /health, not as an MLflow "
                         f"tracking server does; check the URL (and the server's path prefix), or {_FIX}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        why = " ".join(str(reason).split())[:120] or type(e).__name__
        raise GalotError(f"MLFLOW_TRACKING_URI: the tracking server {shown} does not answer ({why}; waited at most "
                         f"{wait:g} s, {TIMEOUT_ENV}); start it, or {_FIX}") from None
