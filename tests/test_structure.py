"""The package's import structure, checked statically (the package is parsed, never imported).

* No import cycle between musiq_daemon's modules. Every import statement counts: at module level, inside
  functions, under ``if TYPE_CHECKING:``. A function-local import hides a cycle from Python, not from the
  design: the two modules still depend on each other.
* No module imports a private name (``_name``, not ``__dunder__``) of another module, neither with
  ``from musiq_daemon.x import _name`` nor as an attribute (``x._name``) of an imported module.

Edges: ``import a.b`` and ``from a.b import name`` import ``a.b``; ``from a import b`` imports ``a.b`` when
that is a module, else ``a`` (a name of ``a/__init__.py``). Relative imports are resolved. The implicit
import of the parent packages that Python performs is not an edge (every submodule would otherwise form a
cycle with a package ``__init__`` that re-exports it); a package ``__init__`` importing its submodules is.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "musiq_daemon"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE


@dataclass(frozen=True)
class Source:
    text: str
    is_package: bool  # an __init__.py
    filename: str


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


@dataclass(frozen=True)
class PrivateUse:
    module: str
    line: int
    owner: str
    name: str

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) uses {self.owner}.{self.name}"


def load_package(directory: Path = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, Source]:
    """Every module of the package on disk, by dotted name."""
    modules: dict[str, Source] = {}
    for path in sorted(directory.rglob("*.py")):
        parts = list(path.relative_to(directory).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join([package, *parts])
        modules[name] = Source(path.read_text(encoding="utf-8"), is_package, str(path))
    return modules


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _base(module: str, source: Source, node: ast.ImportFrom) -> str | None:
    """The absolute module named by ``from <base> import ...`` (relative imports resolved)."""
    if node.level == 0:
        return node.module
    parts = module.split(".")
    if not source.is_package:
        parts.pop()
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    if not parts:
        return None
    return ".".join([*parts, node.module] if node.module else parts)


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports(module: str, modules: Mapping[str, Source], package: str = PACKAGE) -> list[Edge]:
    """The package modules ``module`` imports, wherever the import statement is."""
    source = modules[module]
    edges: list[Edge] = []
    for node in ast.walk(ast.parse(source.text, source.filename)):
        if isinstance(node, ast.Import):
            edges.extend(Edge(a.name, node.lineno) for a in node.names if _inside(a.name, package))
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, source, node)
            if base is None or not _inside(base, package):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                edges.append(Edge(sub if sub in modules else base, node.lineno))
    return [e for e in edges if e.target != module]


def import_graph(modules: Mapping[str, Source], package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for module in modules:
        targets: dict[str, int] = {}
        for edge in imports(module, modules, package):
            targets.setdefault(edge.target, edge.line)
        graph[module] = targets
    return graph


def find_cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """One shortest cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(start: str) -> None:  # Tarjan's algorithm, iteratively
        work: list[tuple[str, Iterator[str]]] = []

        def push(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            work.append((node, iter(sorted(graph.get(node, {})))))

        push(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    push(child)
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)

    cycles = []
    for component in components:
        members = set(component)
        if len(members) == 1 and component[0] not in graph.get(component[0], {}):
            continue
        start = min(members)
        # Breadth first from start back to start, inside the component: the shortest chain.
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            following = []
            for node in frontier:
                for child in sorted(graph.get(node, {})):
                    if child == start:
                        found = node
                        break
                    if child in members and child not in previous:
                        previous[child] = node
                        following.append(child)
                if found is not None:
                    break
            frontier = following
        assert found is not None
        chain = [start]
        node = found
        while node != start:
            chain.append(node)
            node = previous[node]
        cycles.append([start, *reversed(chain[1:]), start])
    return sorted(cycles)


def describe(cycle: list[str], graph: Mapping[str, Mapping[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> " for a, b in itertools.pairwise(cycle)]
    return "".join(steps) + cycle[-1]


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def private_uses(module: str, modules: Mapping[str, Source], package: str = PACKAGE) -> list[PrivateUse]:
    """Private names of other package modules that ``module`` imports or reads as attributes."""
    source = modules[module]
    tree = ast.parse(source.text, source.filename)
    found: list[PrivateUse] = []
    bound: dict[str, str] = {}  # a local name -> the package module (or package prefix) it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _inside(alias.name, package):
                    continue
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, source, node)
            if base is None or not _inside(base, package):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    bound[alias.asname or alias.name] = sub
                elif _is_private(alias.name) and base != module:
                    found.append(PrivateUse(module, node.lineno, base, alias.name))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        dotted = _dotted(node.value)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head not in bound:
            continue
        owner = ".".join(filter(None, [bound[head], rest]))
        if owner in modules and owner != module and f"{owner}.{node.attr}" not in modules:
            found.append(PrivateUse(module, node.lineno, owner, node.attr))
    return found


# --- the package ---------------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    modules = load_package()
    assert f"{PACKAGE}.decode" in modules and f"{PACKAGE}.daemon.scan" in modules
    graph = import_graph(modules)
    cycles = [describe(c, graph) for c in find_cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_imports() -> None:
    modules = load_package()
    uses = [str(u) for m in sorted(modules) for u in private_uses(m, modules)]
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


# --- the checks themselves, on synthetic packages ------------------------------------------------------


def _synthetic(files: Mapping[str, str]) -> dict[str, Source]:
    return {
        name.removesuffix(".__init__"): Source(text, name.endswith(".__init__"), name)
        for name, text in files.items()
    }


def test_find_cycles_reports_the_shortest_chain() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2, "d": 3}, "c": {"a": 4}, "d": {"b": 5}, "e": {"a": 6}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "c", "a"], graph) == "a (line 1) -> b (line 2) -> c (line 4) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 2}}) == []
    assert find_cycles({"a": {"b": 1}, "b": {"a": 1}, "c": {"d": 1}, "d": {"c": 1}}) == [
        ["a", "b", "a"],
        ["c", "d", "c"],
    ]


def test_every_import_statement_counts() -> None:
    modules = _synthetic(
        {
            "pkg.__init__": "def __getattr__(name):\n    from pkg import api\n    return api\n",
            "pkg.api": "from .sub import leaf\nfrom . import version\n",
            "pkg.version": "V = 1\n",
            "pkg.sub.__init__": "from .leaf import X\n",
            "pkg.sub.leaf": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..api import Thing\n"
                "def f():\n    import pkg.version\n    from pkg import V\n"
            ),
        }
    )
    graph = import_graph(modules, "pkg")
    assert graph == {
        "pkg": {"pkg.api": 2},
        "pkg.api": {"pkg.sub.leaf": 1, "pkg.version": 2},
        "pkg.version": {},
        "pkg.sub": {"pkg.sub.leaf": 1},
        "pkg.sub.leaf": {"pkg.api": 3, "pkg.version": 5, "pkg": 6},
    }
    assert find_cycles(graph) == [["pkg", "pkg.api", "pkg.sub.leaf", "pkg"]]


def test_private_names_are_found() -> None:
    modules = _synthetic(
        {
            "pkg.__init__": "",
            "pkg.a": "_helper = 1\n_Thing = 2\n",
            "pkg.b": (
                "from pkg.a import _helper\nimport pkg.a\nfrom pkg import a as alias\n"
                "def f():\n    return pkg.a._Thing, alias._helper, alias.__name__, alias.public\n"
            ),
            "pkg.c": "from . import a as _a\nfrom .a import __doc__\nx = _a.public\n",
        }
    )
    found = {(u.module, u.line, u.owner, u.name) for m in modules for u in private_uses(m, modules, "pkg")}
    assert found == {
        ("pkg.b", 1, "pkg.a", "_helper"),
        ("pkg.b", 5, "pkg.a", "_Thing"),
        ("pkg.b", 5, "pkg.a", "_helper"),
    }
