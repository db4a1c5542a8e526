"""`dvc repro` of the project's own dvc.yaml in a temporary git repo, on tiny parameters.

Checks what the pipeline promises: every stage runs from a fresh clone's state; a second
repro does nothing; a transfer-only change reruns only the transfer stages and the report,
generating no image; a code change reruns exactly the stages whose code changed (the repo
holds a copy of galot's packages, and the stages run that copy); `dvc plots show` draws
GALOT and the baselines on one chart; `dvc push`/`dvc pull` round-trip the dataset through
a directory remote; `dvc exp run -S` takes our dotted keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "experiment": {"name": "default", "runs_dir": "runs", "seed": 0, "mode": "al+gal", "cycles": 2, "judge": None},
    "data": {"dataset": "mnist5k"},
    "al": {"strategy": "MarginSampling", "budget_per_cycle": 10},
    "gal": {"epsilon": 0.2, "epsilon_relative": True, "steps": 1, "samples": 2},
    "t2i": {"model": "models/galot-mini", "steps": 2, "batch_size": 50, "device": "cpu"},
    "model": {"arch": "small_cnn"},
    "train": {"epochs": 1, "min_steps": 4, "device": "cpu"},
    "pretrain": {"out": "models/galot-mini", "vae_steps": 2, "vae_batch": 4, "unet_steps": 2, "unet_batch": 4,
                 "warmup": 1},
    "transfer": {"archs": ["small_cnn", "mobilenet_v2"], "epochs": 1, "min_steps": 3},
    "baselines": {"strategies": ["RandomSampling", "MarginSampling"]},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api):
    path = tmp_path_factory.mktemp("dvc-repo")
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    for package in ("galot", "galot_core", "tasks", "flows"):  # the code the stages depend on, and run (PYTHONPATH)
        shutil.copytree(ROOT / package, path / package, ignore=shutil.ignore_patterns("__pycache__"))
    # The project's params.yaml with tiny overrides: DVC needs every key a stage lists.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("/runs/\n/models/\nmlflow.db\n/dvc_plots/\n__pycache__/\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1", PYTHONPATH=str(path),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def run(*args: str) -> str:
        r = subprocess.run(list(args), cwd=path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout + r.stderr

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")  # ignores __pycache__: the code deps are the sources
    run("git", "add", "-A")
    run("git", "commit", "-qm", "pipeline")
    return path, run


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def synthetic_state(path: Path) -> dict[str, str]:
    files = sorted((path / "runs/default/synthetic").rglob("*"))
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.mark.timeout(1800)  # the whole pipeline, in subprocesses
def test_repro_runs_every_stage_then_nothing(repo):
    path, run = repo
    out = run("dvc", "repro")
    assert stages_run(out) == {"prepare", "pretrain_t2i", "t2i_quality", "galot", "baselines@RandomSampling",
                               "baselines@MarginSampling", "transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    assert (path / "models/galot-mini/model_index.json").exists()
    assert "skipped" in json.loads((path / "runs/t2i_quality.json").read_text())  # TINY has no judge
    assert len(list((path / "runs/default/dataset/synthetic").glob("cycle_*.tar"))) == 2
    assert (path / "runs/default/report/report.md").read_text().count("| 2 | 20 |") == 1
    for s in ("RandomSampling", "MarginSampling"):
        assert (path / f"runs/default-baselines/{s}/summary.json").exists()
    again = run("dvc", "repro")
    assert stages_run(again) == set() and "up to date" in again


@pytest.mark.timeout(1800)  # the whole pipeline, in subprocesses
def test_transfer_change_reruns_only_transfer_and_report(repo):
    path, run = repo
    before = synthetic_state(path)
    calls = (path / "runs/default/cycles/cycle_002/generate_unet_calls.json").read_text()
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["transfer"]["min_steps"] = 5
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run("dvc", "repro")
    assert stages_run(out) == {"transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    assert synthetic_state(path) == before  # no image generated or touched
    assert (path / "runs/default/cycles/cycle_002/generate_unet_calls.json").read_text() == calls
    m = yaml.safe_load((path / "runs/default/transfer/small_cnn/metrics.json").read_text())
    assert m["steps"] == 5 and m["unet_calls"] == 0


def test_stages_run_the_repos_code(repo):
    path, run = repo
    out = run("python", "-c", "import galot.flows.cli, galot_core, galot.tasks; "
                              "print(galot.flows.cli.__file__, galot_core.__file__, galot.tasks.__file__)")
    assert out.count(str(path)) == 3


def _touch_code(path: Path, module: str) -> None:
    f = path / module
    f.write_text(f.read_text() + "\n# a code change\n")


@pytest.mark.timeout(1800)  # the experiments and their baselines rerun from scratch
def test_code_change_reruns_exactly_the_stages_that_run_it(repo):
    path, run = repo
    _touch_code(path, "galot_core/report.py")
    assert stages_run(run("dvc", "repro")) == {"report"}
    # transfer.py is run by the transfer stages and imported by the experiment flow (galot-transfer):
    # those rerun, and the experiments start afresh instead of resuming their finished folders.
    before = synthetic_state(path)
    _touch_code(path, "galot_core/transfer.py")
    out = run("dvc", "repro")
    assert stages_run(out) == {"galot", "baselines@RandomSampling", "baselines@MarginSampling",
                               "transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    assert out.count("code changed since this run started") == 3
    assert len(list((path / "runs/.replaced").glob("default-*"))) == 1
    assert synthetic_state(path) == before  # regenerated from scratch, byte for byte the same
    assert stages_run(run("dvc", "repro")) == set()


def test_plots_show_draws_galot_and_baselines_on_one_chart(repo):
    import json

    path, run = repo
    run("dvc", "plots", "show")
    html = (path / "dvc_plots/index.html").read_text()
    assert "budget" in html and "GALOT" in html and "accuracy.png" in html
    out = run("dvc", "plots", "show", "--json")
    plots = json.loads(out[:out.rindex("}") + 1])["data"]  # run() appends stderr (DVC's warnings, if any)
    values = plots["accuracy_vs_budget"][0]["content"]["data"]["values"]
    series = {v["filename::field"] for v in values}
    assert series == {"galot.csv::GALOT", "baselines.csv::RandomSampling", "baselines.csv::MarginSampling"}
    assert {v["budget"] for v in values} == {"10", "20"}
    assert not any(k.endswith("accuracy.csv") for k in plots)  # no chart per run any more


def test_push_and_pull_through_a_directory_remote(repo, tmp_path):
    from galot_core import export

    path, run = repo
    run("dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run("dvc", "push")
    dataset = path / "runs/default/dataset"
    files = {str(f.relative_to(dataset)): f.read_bytes() for f in sorted(dataset.rglob("*")) if f.is_file()}
    shutil.rmtree(dataset)
    shutil.rmtree(path / ".dvc/cache")
    run("dvc", "pull")  # everything: with the cache gone, DVC checks every output against the remote
    assert {str(f.relative_to(dataset)): f.read_bytes() for f in sorted(dataset.rglob("*")) if f.is_file()} == files
    index = export.read_index(dataset)
    assert sum(len(export.read_shard(dataset / s["file"])) for s in index["shards"]) == 30  # checked on read
    assert stages_run(run("dvc", "repro")) == set()
    run("dvc", "remote", "remove", "local")


@pytest.mark.timeout(1800)  # the whole pipeline, in subprocesses
def test_exp_run_takes_dotted_overrides(repo):
    path, run = repo
    run("git", "add", "-A")
    run("git", "commit", "-qm", "transfer steps")
    out = run("dvc", "exp", "run", "-S", "transfer.min_steps=6", "--name", "more-steps")
    assert stages_run(out) == {"transfer@small_cnn", "transfer@mobilenet_v2", "report"}
    shown = run("dvc", "exp", "show", "--no-pager", "--csv")
    assert "more-steps" in shown


# The code each stage's computation imports, from these entry modules (the CLI glue aside).
STAGE_ENTRIES = {
    "prepare": ["galot_core.prepare"],
    "pretrain_t2i": ["galot_core.t2i.embedded"],
    "galot": ["galot.flows.galot"],
    "baselines": ["galot.flows.galot"],
    "transfer": ["galot_core.transfer", "galot.tasks.transfer"],
    "report": ["galot_core.report"],
    "t2i_quality": ["galot_core.quality", "galot_core.context", "galot_core.judge", "galot_core.data", "galot_core.io"],
}


def _module_file(name: str) -> Path | None:
    if name.startswith(("galot.flows", "galot.tasks")):  # installed names of the repository's flows/ and tasks/
        name = name[len("galot."):]
    p = ROOT / Path(*name.split("."))
    return p / "__init__.py" if (p / "__init__.py").exists() else p.with_suffix(".py") if p.with_suffix(".py").exists() \
        else None


def import_closure(entries: list[str]) -> set[str]:
    """Every galot source file the entries import, at module level or inside functions (static, via ast)."""
    import ast

    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        f = _module_file(name)
        if name in seen or f is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for n in names:
                parts = n.split(".")
                if parts[:2] in (["galot", "flows"], ["galot", "tasks"]):
                    parts = parts[1:]
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1) if parts[0] in ("galot_core", "tasks", "flows")]
    return {str(_module_file(m).relative_to(ROOT)) for m in seen}


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRIES))
def test_stage_deps_cover_the_code_it_runs(stage):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    spec = stages[stage].get("do", stages[stage])
    deps = [d for d in spec["deps"] if not d.startswith(("runs/", "${"))]
    assert all((ROOT / d).exists() for d in deps), deps
    needed = {f for f in import_closure(STAGE_ENTRIES[stage]) if f not in ("galot_core/__init__.py",
                                                                           "tasks/__init__.py", "flows/__init__.py")}
    missing = {f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
    assert not missing, f"dvc.yaml stage {stage} runs {sorted(missing)} but does not list them in deps"
