"""galot: generative active learning (GALOT) — train image classifiers from class names plus few labels.

One installed namespace: ``galot.flows`` (Prefect flows and the ``galot`` command),
``galot.tasks`` (Prefect tasks, MLflow tracking) and ``galot_core`` (the algorithm, free of
Prefect/MLflow/DVC). In the repository the first two are the top-level folders ``flows/``
and ``tasks/`` of the design; the wheel installs them under ``galot/`` (pyproject's
package-dir), so they never collide with a user's own ``flows``/``tasks`` packages. Run
from a source checkout (PYTHONPATH or an editable install), the checkout's root is added
to this package's path so that ``galot.flows`` finds ``flows/`` there.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_here = Path(__file__).resolve().parent
_checkout = _here.parent
if not (_here / "flows").is_dir() and (_checkout / "flows" / "__init__.py").is_file() \
        and (_checkout / "tasks" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (a package's __path__)
