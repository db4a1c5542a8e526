"""The project's modules import each other in one direction: no circles, nothing upward.

Layers, bottom to top: ``galot_core`` (the algorithm: no Prefect, MLflow or DVC), ``galot.tasks``
(thin Prefect tasks, MLflow), ``galot.flows`` (flows and the CLI); ``benchmarks`` sits on top and
may import all three, never ``tests``. The graph is read from the
source with :mod:`ast`, without importing anything, and counts every import statement — at the
top of a module, inside a function or under ``if TYPE_CHECKING:`` — so a circle cannot hide
behind a deferred import. ``from package import name`` is an edge to the package (its
``__init__`` runs) and, when ``name`` is a module, to that module too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder in the checkout -> module prefix once installed (setup.py's package_dir)
PACKAGES = {"galot_core": "galot_core", "tasks": "galot.tasks", "flows": "galot.flows", "galot": "galot",
            "benchmarks": "benchmarks"}
# What a layer must not import (module prefixes, project or third-party).
FORBIDDEN = {
    "galot_core": ("galot.tasks", "galot.flows", "galot", "tasks", "flows", "prefect", "prefect_dask", "mlflow",
                   "dvc", "tests", "benchmarks"),
    "galot.tasks": ("galot.flows", "flows", "tests", "benchmarks"),
    "galot.flows": ("tests", "benchmarks"),
    "benchmarks": ("tests",),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """module name -> source file, for every .py file of the project's packages."""
    modules = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def imported_names(path: Path, module: str) -> list[str]:
    """Every module name ``path`` imports (absolute; relative imports resolved against ``module``)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append(target)
            names += [f"{target}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name in imported_names(path, module):
            if name in modules and name != module:
                graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _layer(module: str) -> str | None:
    return next((layer for layer in sorted(FORBIDDEN, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), None)


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert {"galot_core.config", "galot_core.t2i.backend", "galot.tasks.cycle", "galot.flows.galot"} <= set(graph)
    assert "galot_core.config" in graph["galot_core.params_file"]
    assert "galot_core.steps.adapt" in graph["galot_core.steps.generate"] or any(
        "galot_core.steps.adapt" in deps for deps in graph.values())


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer):
    modules = project_modules()
    upward = []
    for module, path in modules.items():
        if _layer(module) != layer:
            continue
        for name in imported_names(path, module):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]) \
                    and _layer(name) != layer:
                upward.append(f"{module} imports {name}")
    assert not upward, "; ".join(sorted(set(upward)))


def test_benchmarks_import_as_a_package():
    """benchmarks/ runs as ``python -m benchmarks.…``: no script edits sys.path to find its neighbours."""
    edits = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "benchmarks").rglob("*.py"))
             if any(f"sys.path.{verb}" in p.read_text() for verb in ("insert", "append"))]
    assert not edits, "sys.path edited in " + ", ".join(edits)
    graph = import_graph()
    assert "galot_core.t2i.tiny" in graph["benchmarks.perf.families"]
    assert "benchmarks.common" in graph["benchmarks.studies.report.world"]
