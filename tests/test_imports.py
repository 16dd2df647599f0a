"""The package's import graph: no cycle (imports inside functions count), config_lib imports
nothing from the package, and the evaluation code never imports the training loop."""

from __future__ import annotations

import ast
import os

from conftest import REPO

PACKAGE = "fewstep_jax"


def module_files() -> dict[str, str]:
    """{dotted module name: path} of every module of the package."""
    out = {}
    root = os.path.join(REPO, PACKAGE)
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), REPO)[: -len(".py")]
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = os.path.join(folder, name)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its code}. `from a import b` is an
    edge to a.b when that is a module, else to a."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert f"{PACKAGE}.train" in graph and f"{PACKAGE}.methods.base" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_config_lib_imports_nothing_from_the_package():
    assert import_graph()[f"{PACKAGE}.config_lib"] == set()


def test_evaluation_never_imports_the_training_loop():
    graph = import_graph()
    for module in ("evaluate", "modes", "experiment"):
        assert f"{PACKAGE}.train" not in graph[f"{PACKAGE}.{module}"], module


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
