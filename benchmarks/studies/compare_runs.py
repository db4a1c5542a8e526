"""Whether two run folders made the same first N cycles, byte for byte: a refactoring's proof.

    python -m benchmarks.studies.compare_runs OLD_RUN NEW_RUN --cycles 3

Compares, per cycle, the optimised embeddings, the classifier, the sample grid, every
generated PNG and the manifest, and metrics.json (every key but the step seconds), and the
pool's selections of those cycles. Prints one line per cycle and exits 1 if anything differs.

How issue 17's before/after check was made (docs/results.md, "Before and after the one-driver
refactoring"): the Fashion study's ``galot-s2`` run (code 05b98c5, before the refactoring,
``benchmarks/runs/study_fashion/galot-s2``) against the same config.json, written as YAML, run
for three cycles by ``galot cycle`` (three times, one torch thread) with the refactored code and
the same galot-mini.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cycle_files(run: Path, cycle: int) -> list[str]:
    files = [f"cycles/cycle_{cycle:03d}/{n}" for n in ("embeddings.safetensors", "model.safetensors", "grid.png")]
    synthetic = run / "synthetic" / f"cycle_{cycle:03d}"
    return [f for f in files if (run / f).exists()] + sorted(
        str(p.relative_to(run)) for p in synthetic.rglob("*") if p.is_file())


def compare(old: Path, new: Path, cycles: int) -> bool:
    same, different = 0, []
    for c in range(1, cycles + 1):
        for f in cycle_files(old, c):
            if (new / f).exists() and sha(old / f) == sha(new / f):
                same += 1
            else:
                different.append(f)
        before = json.loads((old / f"cycles/cycle_{c:03d}/metrics.json").read_text())
        after = json.loads((new / f"cycles/cycle_{c:03d}/metrics.json").read_text())
        keys = sorted(k for k in before if k != "seconds")
        moved = {k: (before[k], after.get(k)) for k in keys if before[k] != after.get(k)}
        print(f"cycle {c}: test accuracy {before['test_accuracy']} / {after['test_accuracy']}; metrics "
              f"({', '.join(keys)}) {'identical' if not moved else f'differ: {moved}'}")
        different += [f"cycles/cycle_{c:03d}/metrics.json"] if moved else []
    pool_a, pool_b = (json.loads((run / "pool.json").read_text()) for run in (old, new))
    kept = [i for i, c in enumerate(pool_a["cycles"]) if c <= cycles]
    pool_same = all([pool_a[k][i] for i in kept] == pool_b[k][:len(kept)] for k in ("labelled", "labels", "cycles"))
    print(f"pool selections of cycles 1–{cycles}: {'identical' if pool_same else 'differ'}")
    print(f"{same} files byte-identical, {len(different)} different" + (f": {different[:5]}" if different else ""))
    return pool_same and not different


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--cycles", type=int, required=True)
    args = ap.parse_args()
    sys.exit(0 if compare(args.old, args.new, args.cycles) else 1)


if __name__ == "__main__":
    main()
