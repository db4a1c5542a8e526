"""The house rules a newcomer relies on: no module over 400 lines, no function over 60.

Read with :mod:`ast` from the source (nothing imported), over every Python file of the project:
the algorithm, the tasks and flows, the benchmarks and these tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("galot_core", "tasks", "flows", "galot", "benchmarks", "tests")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_the_rules_see_the_whole_project():
    files = {p.relative_to(ROOT).parts[0] for p in python_files()}
    assert files == set(FOLDERS) and len(python_files()) > 100


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in python_files()
            if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert not long, f"split these modules by concept: {long}"


def test_no_function_over_60_lines():
    long = {}
    for p in python_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.name}"] = n
    assert not long, f"shorten these functions (helpers with names that say what they do): {long}"
