"""Dependencies point one way: no import cycles, and nothing outside the CLI imports it.

The graph holds every import in the project's modules (``scheduler``,
``workers``, ``policies``), lazy ones inside functions included, read with
``ast`` so nothing is imported; imports under ``if TYPE_CHECKING:`` are left
out (they never run). ``from a.b import c`` imports the module ``a.b.c`` when
there is one, else ``a.b``. The layers: ``scheduler.cli`` → ``scheduler.api``
→ the run modules (``scheduler.sims``, ``scheduler.live_runs``,
``scheduler.runs``) → the core; ``workers`` and ``policies`` never reach up
into the CLI.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("scheduler", "workers", "policies")
CLI = "scheduler.cli"

Graph = dict[str, dict[str, int]]  # module -> {imported project module: first line}


def module_files(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every project module under ``root``, by dotted name (a package by its own name)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those in an ``if TYPE_CHECKING:`` body."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _project(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing project module (``import a.b.c`` of a name-less
    attribute path still loads ``a.b``); None outside the project."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> Graph:
    modules = module_files(root, packages)
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _base(module, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                found = _project(target, modules)
                if found is not None and found != module:
                    edges[found] = min(edges.get(found, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's components, iteratively (no recursion limit), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def cycle_path(graph: Graph, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as a path back to it."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    return [*paths[node], start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in {component}")  # a component of 2+ always has one


def cycles(graph: Graph) -> list[str]:
    found = []
    for component in strongly_connected(graph):
        if len(component) > 1:
            path = cycle_path(graph, component)
            steps = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(path))
            found.append(f"cycle among {', '.join(component)}: {steps} -> {path[0]}")
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cli_importers(graph: Graph, packages: Iterable[str], cli: str = CLI) -> list[str]:
    """Modules under ``packages`` (outside the CLI itself) that import the CLI."""
    return [f"{module} imports {target} (line {line})"
            for module, edges in sorted(graph.items())
            if any(_inside(module, p) for p in packages) and not _inside(module, cli)
            for target, line in sorted(edges.items()) if _inside(target, cli)]


def _offenders(found: list[str]) -> str:
    return f"{len(found)} offender(s):\n" + "\n".join(found)


def test_no_import_cycles_among_project_modules() -> None:
    found = cycles(import_graph(REPO))
    assert not found, _offenders(found)


def test_nothing_in_scheduler_outside_the_cli_imports_it() -> None:
    found = cli_importers(import_graph(REPO), ["scheduler"])
    assert not found, _offenders(found)


def test_workers_and_policies_never_import_the_cli() -> None:
    found = cli_importers(import_graph(REPO), ["workers", "policies"])
    assert not found, _offenders(found)


def test_the_graph_sees_the_cli_importing_its_layers() -> None:
    """A guard against a graph that reads nothing: known edges are there."""
    graph = import_graph(REPO)
    assert "scheduler.cli.main" in graph and "scheduler.api" in graph
    assert "scheduler.cli.sim_cmd" in graph["scheduler.cli.main"]
    assert "scheduler.api" in graph["scheduler"]  # a lazy import inside __getattr__
    assert "workers.executor" in graph["scheduler.live_runs"]  # lazy, inside a function


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_synthetic_graph_finds_lazy_relative_and_from_imports(tmp_path: Path) -> None:
    _write(tmp_path, {
        "app/__init__.py": "",
        "app/core.py": "def f():\n    from app.cli import tools\n",  # lazy, a submodule
        "app/api.py": "from . import core\n",  # relative, names a module
        "app/cli/__init__.py": "",
        "app/cli/tools.py": "from ..api import helper\n",  # relative, names an attribute
        "app/typed.py": ("from typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from app.cli import tools\n"
                         "else:\n    import app.api\n"),
        "lib/__init__.py": "",
        "lib/mod.py": "import app.cli.tools.thing\nimport json\n",
    })
    graph = import_graph(tmp_path, ["app", "lib"])
    assert graph["app.core"] == {"app.cli.tools": 2}
    assert graph["app.api"] == {"app.core": 1}
    assert graph["app.cli.tools"] == {"app.api": 1}
    assert graph["app.typed"] == {"app.api": 5}  # the TYPE_CHECKING import is left out
    assert graph["lib.mod"] == {"app.cli.tools": 1}

    found = cycles(graph)
    assert len(found) == 1
    assert "app.api (line 1) -> app.core (line 2) -> app.cli.tools (line 1) -> app.api" in found[0]
    assert cli_importers(graph, ["app"], "app.cli") == ["app.core imports app.cli.tools (line 2)"]
    assert cli_importers(graph, ["lib"], "app.cli") == ["lib.mod imports app.cli.tools (line 1)"]


def test_an_acyclic_graph_has_no_cycles_and_components_cover_every_module() -> None:
    graph: Graph = {"a": {"b": 1, "c": 1}, "b": {"c": 2}, "c": {}, "d": {"d": 1}}
    assert cycles(graph) == []
    assert sorted(m for c in strongly_connected(graph) for m in c) == ["a", "b", "c", "d"]
    graph["c"] = {"a": 3}
    assert cycles(graph) == ["cycle among a, b, c: a (line 1) -> c (line 3) -> a"]
