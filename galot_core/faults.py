"""Failpoints: named places where a test can kill galot with SIGKILL, to prove it resumes.

``GALOT_FAILPOINT=name`` (or ``name:N`` for the N-th time the point is reached) makes the
process kill itself there — a real SIGKILL, no cleanup, no ``finally`` — exactly as a
power cut or the OOM killer would. Unset, a failpoint is a dictionary lookup. The fault
injection tests (tests/test_faults.py) kill a real ``galot`` process at each point and
check that rerunning the same command ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import signal

ENV = "GALOT_FAILPOINT"
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


OOM_ENV = "GALOT_SIMULATE_OOM_ABOVE"


def simulated_oom(batch: int) -> None:
    """``GALOT_SIMULATE_OOM_ABOVE=N``: behave as an accelerator that cannot fit more than N images,
    by raising the very error CUDA raises, so the batch-halving path is tested on any machine."""
    limit = os.environ.get(OOM_ENV)
    if limit and batch > int(limit):
        import torch

        raise torch.cuda.OutOfMemoryError(f"simulated: {batch} images > {limit} ({OOM_ENV})")
