"""The modules of awpo_kernels import one another without a cycle.

The graph is read from the source with `ast`: every `import` / `from ... import` statement, the ones inside
functions (late imports) included, resolved to the package's own modules. A cycle works only as long as each
side avoids the other's names at import time, and it hides which file depends on which.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import awpo_kernels

PACKAGE_DIR = Path(awpo_kernels.__file__).parent
PACKAGE = PACKAGE_DIR.name
# Leaf modules: they import nothing of the package (the constants and the kernels' codes shared by everyone).
LEAVES = {f"{PACKAGE}._constants", f"{PACKAGE}._kernel_codes"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(path: Path, name: str, modules) -> set[str]:
    """The package's modules that the file at `path` (module `name`) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            # `from . import reference` imports the submodule; `from .options import X` the module .options
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    done, path, on_path = set(), [], set()

    def visit(node):
        path.append(node)
        on_path.add(node)
        for child in sorted(graph.get(node, ())):
            if child in on_path:
                return path[path.index(child):] + [child]
            if child not in done:
                cycle = visit(child)
                if cycle:
                    return cycle
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_awpo_kernels_imports_form_no_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_late_and_submodule_imports():
    """The reader finds the imports the cycle check relies on (else an empty graph would pass)."""
    graph = import_graph()
    chunked = graph[f"{PACKAGE}._chunked"]
    assert {f"{PACKAGE}._epilogue_torch", f"{PACKAGE}._epilogue_triton"} <= chunked  # inside a function
    assert f"{PACKAGE}._matmul" in chunked  # `from . import _matmul`
    assert f"{PACKAGE}._chunk_types" in graph[f"{PACKAGE}._epilogue_triton"]
    assert f"{PACKAGE}.advantages" in graph[PACKAGE]


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b", "c"}, "b": set(), "c": {"d"}, "d": {"c"}}, ["c", "d", "c"]),
])
def test_find_cycle(graph, expected):
    assert find_cycle(graph) == expected


def test_shared_constants_live_in_leaf_modules():
    graph = import_graph()
    for leaf in LEAVES:
        assert graph[leaf] == set(), f"{leaf} imports {graph[leaf]}: it must stay a leaf"
    # the fast paths take the constants from there, not from the reference
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "reference":
                assert "IGNORE_INDEX" not in {alias.name for alias in node.names}, name
