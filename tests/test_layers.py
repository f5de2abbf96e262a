"""The import graph has one direction: core library <- agents <- application.

- core (``policy_distill``'s settings, environments, data format, networks, losses, metrics,
  collection, evaluation, export): imports neither ``agents`` nor the application;
- ``agents`` (teacher network, PPO trainer, teacher loaders, model cards): imports only the core;
- application (``distill``, the CLI, ``experiments``, the package's lazy facade): anything.
No module imports itself back through another (no cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPLICATION = ("policy_distill", "policy_distill.__main__", "policy_distill.cli", "policy_distill.distill")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("policy_distill", "agents"):
        for file in (ROOT / package).rglob("*.py"):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = file
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file, lazy imports included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def layer(module: str) -> int:
    if module in APPLICATION or module.startswith("policy_distill.experiments"):
        return 2
    return 1 if module.startswith("agents") else 0


def test_imports_point_down_the_layers_only() -> None:
    graph = import_graph()
    assert "policy_distill.collect" in graph and "agents.ppo" in graph  # the walk found the code
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
