"""The import graph of the project's packages, read from the source with ``ast`` (nothing is imported).

Every ``import`` counts wherever it stands (module top, inside a function, under ``TYPE_CHECKING``): an import
deferred into a function still makes the importing module depend on the imported one, and a circle hidden that way
is still a circle. Edges join modules of ``PACKAGES``; an import of a package's ``__init__`` is an edge to the
package. The folder graph has one node per top-level package (a subpackage such as ``pipelines.interpolation``
belongs to ``pipelines``): an edge says some module of one package imports some module of the other.

``python tests/import_graph.py`` prints the module and folder cycles (none, when the layering holds) and the folder
edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "pipelines", "preprocessors", "weights", "bench")

Graph = dict[str, set[str]]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of ``PACKAGES`` by dotted name (a package by its own name, for its ``__init__.py``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    """The modules of ``known`` that one import statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        # ``from a import b`` loads the module a.b when there is one, else takes a name from a
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for name in names:
        while name and name not in known:  # ``import a.b.c`` where only ``a.b`` is ours: the nearest module
            name = name.rpartition(".")[0]
        if name:
            yield name


def module_graph(root: Path = ROOT) -> Graph:
    """Module -> the project modules it imports."""
    files = module_files(root)
    known = set(files)
    graph: Graph = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name].update(_imported(node, name, path.name == "__init__.py", known))
        graph[name].discard(name)
    return graph


def folder_graph(graph: Graph) -> Graph:
    """Top-level package -> the top-level packages its modules import from."""
    folders: Graph = {}
    for module, targets in graph.items():
        here = module.partition(".")[0]
        folders.setdefault(here, set()).update(t.partition(".")[0] for t in targets)
        folders[here].discard(here)
    return folders


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted; [] for an acyclic graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


if __name__ == "__main__":
    modules = module_graph()
    folders = folder_graph(modules)
    print("module cycles:", cycles(modules) or "none")
    print("folder cycles:", cycles(folders) or "none")
    for folder, targets in sorted(folders.items()):
        print(f"{folder} -> {', '.join(sorted(targets)) or '-'}")
