"""The import graph of mpo: no import cycles through the upper layers, the CLI on top.

Every module under ``mpo/`` is parsed with :mod:`ast` (nothing is imported);
module-level and function-level imports of ``mpo.*`` both count, and so do
``importlib.import_module("mpo....")`` calls with a literal name; imports under
``if TYPE_CHECKING:`` do not (they never run: annotations only). A package's
``__init__.py`` is the package's node (``mpo/report/__init__.py`` is
``mpo.report``); ``from mpo.x import y`` is an edge to ``mpo.x.y`` when that is a
module, else to ``mpo.x``. Works whether ``mpo.tuning`` is a module or a package.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Layers that take part in no import cycle (ARCHITECTURE.md: reports read results; the
#: CLI is on top; tuning is a package of its own).
ACYCLIC = ("mpo.report", "mpo.cli", "mpo.tuning")

#: Cycles elsewhere that exist today, each as the packages its modules lie in, with the
#: reason it is tolerated. A strongly connected component is tolerated when all its modules
#: lie in the packages of one entry (and none in ACYCLIC); any other cycle fails the test.
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {
    # mpo.config validates kind names through function-level lookups in the registries of
    # cost terms (mpo.costs), forecasts (mpo.forecast.kinds) and policy kinds (mpo.policies),
    # while those modules import mpo.config for their spec types: mpo.config -> mpo.costs ->
    # mpo.costs.base -> mpo.config, and mpo.config -> mpo.policies -> mpo.policies.learned ->
    # mpo.forecast.learned -> mpo.learn.train -> mpo.learn.config -> mpo.config. Lazy on one
    # side, so importing works; to break it, validate kinds outside mpo.config or give the
    # registries' modules their spec types from below config.
    ("mpo.config", "mpo.costs", "mpo.forecast", "mpo.learn", "mpo.policies"): (
        "config <-> the registries of kinds (in the lead engineer's registry work)"
    ),
}

#: The only modules that may import mpo.cli (the top layer).
CLI_IMPORTERS = {"mpo.__main__"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file of every module of mpo (a package's file is its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / "mpo").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        name = _module_name(path, root)
        # mpo/x.py and mpo/x/__init__.py side by side (mid-conversion): the package wins
        if name in modules and path.name != "__init__.py":
            continue
        modules[name] = path
    return modules


def _resolve(target: str, known: Iterable[str]) -> str | None:
    """The longest known module that ``target`` names or lies in (``mpo.x.attr`` -> ``mpo.x``)."""
    known = set(known)
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def _base_of_relative(name: str, path: Path, module: str | None, level: int) -> str:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_import_module(node: ast.AST) -> bool:
    """``importlib.import_module("literal")`` or ``import_module("literal")``."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name == "import_module" and isinstance(node.args[0].value, str)


def _import_targets(name: str, path: Path) -> Iterable[str]:
    """Every dotted name that module ``name`` imports when it runs, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                _base_of_relative(name, path, node.module, node.level)
                if node.level
                else (node.module or "")
            )
            # "from mpo.x import y": the module mpo.x.y if there is one, else mpo.x (resolved later)
            yield from (base if a.name == "*" else f"{base}.{a.name}" for a in node.names)
        elif _is_import_module(node):
            yield node.args[0].value


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the mpo modules it imports (no self-edges)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _import_targets(name, path):
            if target == "mpo" or target.startswith("mpo."):
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    edges.add(resolved)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle through the component's first module, ``[a, b, ..., a]``."""
    start = min(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & component):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{sorted(component)} is not strongly connected")  # pragma: no cover


def _in_layer(module: str, layers: Iterable[str]) -> bool:
    return any(module == layer or module.startswith(f"{layer}.") for layer in layers)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(discover())


def test_the_graph_sees_the_package(graph):
    assert {"mpo.cli", "mpo.report", "mpo.report.tables", "mpo.data.sources"} <= set(graph)
    assert "mpo.tuning" in graph  # module or package
    assert "mpo.report.tables" in graph["mpo.cli"] or "mpo.report" in graph["mpo.cli"]
    assert "mpo.cli" in graph["mpo.__main__"]


def test_no_import_cycle_through_report_cli_or_tuning(graph):
    problems = []
    for component in strongly_connected(graph):
        cycle = " -> ".join(a_cycle(graph, component))
        if any(_in_layer(m, ACYCLIC) for m in component):
            problems.append(f"cycle through {', '.join(ACYCLIC)}: {cycle}")
        elif not any(all(_in_layer(m, allowed) for m in component) for allowed in ALLOWED_CYCLES):
            problems.append(f"new import cycle (not in ALLOWED_CYCLES): {cycle}")
    assert not problems, "\n".join(problems) + (
        "\nBreak the cycle: move the shared code down a layer (see ARCHITECTURE.md), or import "
        "the lower module's function directly instead of through the upper one."
    )


def test_only_main_imports_the_cli(graph):
    importers = sorted(m for m, edges in graph.items() if "mpo.cli" in edges)
    assert set(importers) <= CLI_IMPORTERS, (
        f"{importers} import mpo.cli, the top layer; move what they need below it "
        "(formatting lives in mpo.report, loading in mpo.data)."
    )


# ---------------------------------------------------------------- the checker itself
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return import_graph(discover(tmp_path))


def test_checker_finds_function_level_and_relative_cycles(tmp_path):
    graph = _tree(
        tmp_path,
        {
            "mpo/__init__.py": "",
            "mpo/cli.py": "from mpo.report import table\n",
            "mpo/report/__init__.py": "from .tables import table\n",
            "mpo/report/tables.py": "def table():\n    from mpo.cli import app\n",
            "mpo/tuning/__init__.py": "import importlib\nimportlib.import_module('mpo.x')\n",
            "mpo/x.py": "from mpo import tuning\n",
            "mpo/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mpo.cli\n",
            "mpo/tuning.py": "",  # shadowed by the package
        },
    )
    assert graph["mpo.cli"] == {"mpo.report"}
    assert graph["mpo.report"] == {"mpo.report.tables"}
    assert graph["mpo.report.tables"] == {"mpo.cli"}
    assert graph["mpo.x"] == {"mpo.tuning"} and graph["mpo.tuning"] == {"mpo.x"}
    assert graph["mpo.y"] == set()  # annotations only
    components = sorted(sorted(c) for c in strongly_connected(graph))
    assert components == [
        ["mpo.cli", "mpo.report", "mpo.report.tables"],
        ["mpo.tuning", "mpo.x"],
    ]
    cycle = a_cycle(graph, {"mpo.cli", "mpo.report", "mpo.report.tables"})
    assert cycle == ["mpo.cli", "mpo.report", "mpo.report.tables", "mpo.cli"]


def test_no_module_reaches_600_lines():
    """Small modules, one responsibility each (STYLE.md 7; issue 13: no module over ~600)."""
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in sorted((ROOT / "mpo").rglob("*.py"))
    }
    assert len(sizes) > 40
    too_long = {name: n for name, n in sizes.items() if n >= 600}
    assert not too_long, f"split these modules along their responsibilities: {too_long}"
