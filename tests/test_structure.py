"""The code's shape, checked: no page or shared module imports app.py, shared/ has no import cycle, and no
page starts its own threads (long work goes through shared/jobs.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count: they are dependencies too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def modules_under(folder: str) -> dict[str, Path]:
    return {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts): p
            for p in (REPO_ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}


def test_no_page_or_shared_module_imports_app():
    offenders = [name for name, path in {**modules_under("spaces"), **modules_under("shared")}.items()
                 if "app" in imports_of(path)]
    assert offenders == [], f"these modules import app.py: {offenders}"


def test_shared_has_no_import_cycle():
    modules = {name.removesuffix(".__init__"): path for name, path in modules_under("shared").items()}
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in trail:
                cycles.append(trail[trail.index(target):] + [target])
            elif len(trail) < len(graph):
                visit(target, trail + [target])

    for start in graph:
        visit(start, [start])
    assert cycles == [], f"import cycles in shared/: {cycles[:3]}"


def test_pages_start_no_threads_of_their_own():
    offenders = []
    for name, path in modules_under("spaces").items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "Thread":
                offenders.append(name)
    assert offenders == [], f"these page modules start threads instead of using shared/jobs.py: {offenders}"
