"""The house's rules, read from the code's own imports: no import circles, and imports one way.

cli, api, worker -> model and store; inside model: train -> segment -> image, dataset ->
segment and register -> image, synth -> image, segment.quantize -> synth; nothing in model
imports api, store or worker; api never imports worker. Imports inside functions count too:
a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "api", "store", "worker")

# What each room may import (besides itself, the `model` package's face and model.errors).
ALLOWED = {
    "model.metrics": set(),
    "model.image": set(),
    "model.segment": {"model.image", "model.metrics", "model.segment.quantize"},
    # int8 calibration tiles are cut from generated slides (issue 31): only this module.
    "model.segment.quantize": {"model.image", "model.metrics", "model.segment", "model.synth"},
    "model.register": {"model.image"},
    "model.synth": {"model.image"},
    "model.dataset": {"model.image", "model.segment", "model.register"},
    "model.train": {"model.image", "model.metrics", "model.segment", "model.register"},
    "model.cli": {"model"},  # the top of the library: any room of it
    "store": {"model"},
    "api": {"store", "model"},
    "worker": {"store", "model"},
}
ALWAYS = {"model.errors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from model.segment import neural` names a module; `from x import y` a name.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: imported_modules(path, modules) - {name} - {"model"} for name, path in modules.items()
    }


def room(module: str) -> str:
    """The most specific entry of ALLOWED that holds `module`."""
    candidates = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return max(candidates, key=len) if candidates else module


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_every_package():
    graph = import_graph()
    assert {"model.segment.predict", "api.app", "store.tasks", "worker.tasks"} <= graph.keys()
    assert "model.segment.single_pass" in graph["model.segment.predict"]


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_imports_run_one_way():
    breaches = []
    for module, targets in import_graph().items():
        source = room(module)
        for target in targets:
            if target in ALWAYS or room(target) == source:
                continue
            allowed = ALLOWED.get(source, set())
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                breaches.append(f"{module} -> {target}")
    assert breaches == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_circles_are_found(graph, expected):
    assert circles(graph) == expected
