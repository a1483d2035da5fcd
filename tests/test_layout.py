"""The shape of the house: rules about how the product's modules depend on each other."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("streamer", "engines")


def product_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every module of the product packages under ``root`` (not tests, tools)."""
    found: dict[str, Path] = {}
    for package in PRODUCT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: all of them but the bodies of ``if TYPE_CHECKING:`` (annotations only)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend([node.test, *node.orelse])
        else:
            todo.extend(ast.iter_child_nodes(node))
    return nodes


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    """The longest product module that ``name`` starts with (``import a.b.c`` where a.b.c is a class: a.b)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def runtime_imports(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{product module imported: first line} for one module. Module-level and function-level imports count,
    so do ``importlib.import_module("a.b")`` and lazy references in entry-point form ``"a.b:Name"`` (what a
    registry imports on demand); ``if TYPE_CHECKING:`` imports do not. ``from pkg import name`` is an import
    of ``pkg.name`` where that is a module, else of ``pkg``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        if target is not None and target != module:
            edges[target] = min(edges.get(target, line), line)

    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_deepest(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else _deepest(base, modules), node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            add(modules.get(node.args[0].value) and node.args[0].value, node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count(":") == 1:
            target, _, attr = node.value.partition(":")
            if attr.isidentifier() and target in modules:
                add(target, node.lineno)
    return edges


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """{module: {module it imports at run time: line}} over the product modules under ``root``."""
    modules = product_modules(root)
    return {name: runtime_imports(name, path, modules) for name, path in modules.items()}


def import_cycles(root: Path) -> list[list[str]]:
    """One shortest cycle per strongly connected group of modules (Tarjan), each as [a, b, ..., a]."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # recursive: the graph is a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.add(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        todo = [start]
        while todo:  # breadth first, inside the group, back to start
            node = todo.pop(0)
            for nxt in sorted(graph[node]):
                if nxt == start:
                    todo = []
                    cycles.append([*paths[node], start])
                    break
                if nxt in group and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    todo.append(nxt)
    return sorted(cycles)


def describe(cycle: list[str], root: Path) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each step with the line that imports the next module."""
    graph = import_graph(root)
    modules = product_modules(root)
    steps = [f"{a} ({modules[a].relative_to(root)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*steps, cycle[-1]])


def test_no_import_cycles() -> None:
    """No two product modules import each other, directly or around a loop: a circle means neither can be
    read, tested or moved alone, and the import order decides whether a name exists yet."""
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, ROOT) for c in cycles)


def test_the_cycle_check_sees_a_function_level_cycle_and_skips_type_checking(tmp_path: Path) -> None:
    """The check itself: a circle closed by an import inside a function is found; one closed only under
    ``if TYPE_CHECKING:`` is not; ``from pkg import sub`` is an import of the submodule."""
    pkg = tmp_path / "engines"
    (pkg / "models").mkdir(parents=True)
    (tmp_path / "streamer").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from engines.models import base\n")
    (pkg / "models" / "base.py").write_text("from typing import TYPE_CHECKING\n"
                                            "if TYPE_CHECKING:\n    from engines import weights\n")
    (pkg / "weights.py").write_text("def spec():\n    from engines.models import base\n")
    assert import_cycles(tmp_path) == []
    (pkg / "models" / "base.py").write_text("def f():\n    import engines.weights\n")
    (pkg / "weights.py").write_text("REGISTRY = {'x': 'engines.models.base:Base'}\n")
    assert import_cycles(tmp_path) == [["engines.models.base", "engines.weights", "engines.models.base"]]
    assert describe(import_cycles(tmp_path)[0], tmp_path) == \
        "engines.models.base (engines/models/base.py:2) -> engines.weights (engines/weights.py:1) -> engines.models.base"


def test_no_product_file_is_over_450_lines() -> None:
    """A file past this holds several concerns (issue 21): split it by concern, not by line count."""
    files = sorted([*(ROOT / "streamer").rglob("*.py"), *(ROOT / "engines").rglob("*.py")])
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
