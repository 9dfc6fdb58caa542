"""The layering, read from the source's import statements (nothing is imported or run): no two
bnnbench modules import each other, directly or round a longer circle, and the kernel library
(top-level ``kernels/``, imported as ``bnnbench.kernels``) imports nothing from bnnbench.

Every import statement counts, the ones inside functions too: a deferred import only hides a
circle until the day both modules are loaded in the other order.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import ROOT

KERNELS = "bnnbench.kernels"


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for bnnbench/ and kernels/ (as bnnbench.kernels)."""
    files = {}
    for top, prefix in ((ROOT / "bnnbench", ("bnnbench",)), (ROOT / "kernels", (KERNELS,))):
        for path in sorted(top.rglob("*.py")):
            parts = path.relative_to(top).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((*prefix, *parts))] = path
    return files


def imported(module: str, path: Path, modules: set[str]) -> Iterator[tuple[str, int]]:
    """(bnnbench module, line) for every bnnbench module ``module``'s source imports: for
    ``from X import n``, ``X.n`` when that is a module, else ``X``; relative imports resolved;
    imports under ``if TYPE_CHECKING:`` (annotations only) left out."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for_annotations = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in for_annotations:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import a.b.c of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target, node.lineno


@lru_cache(maxsize=1)
def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported bnnbench module: first line importing it}."""
    files = module_files()
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imported(module, path, set(files)):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
    return found


def test_the_scan_sees_imports_and_finds_a_planted_circle(tmp_path):
    """The scanner itself: absolute, relative, deferred and ``from package import module``
    imports are edges (``if TYPE_CHECKING:`` ones are not), and a circle planted round three
    modules is reported."""
    (tmp_path / "pkg").mkdir()
    sources = {"__init__.py": "", "a.py": "def f():\n    from pkg import b\n",
               "b.py": "from .c import thing\n", "c.py": "import pkg.a\nthing = 1\n",
               "d.py": "from typing import TYPE_CHECKING\nfrom pkg.a import f\n"
                       "if TYPE_CHECKING:\n    from pkg.b import Thing\n"}
    for name, text in sources.items():
        (tmp_path / "pkg" / name).write_text(text)
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"}
    graph = {m: dict(imported(m, tmp_path / "pkg" / f"{m.partition('.')[2] or '__init__'}.py",
                              modules)) for m in modules}
    assert {m: set(e) for m, e in graph.items()} == {
        "pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg.a"}}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_circle_among_bnnbench_modules():
    graph = import_graph()
    assert "bnnbench.export" in graph and "bnnbench.size" in graph  # the scan found the tree
    found = circles(graph)
    described = ["; ".join(f"{m} -> {n} (line {graph[m][n]})" for m in circle for n in circle
                           if n in graph[m]) for circle in found]
    assert not found, "import circles (move the shared code below both):\n" + "\n".join(described)


@pytest.mark.parametrize("module", sorted(m for m in module_files() if m.startswith(KERNELS)))
def test_kernels_import_nothing_from_bnnbench(module):
    """The kernel library is the ground floor: it imports only its own modules."""
    above = {m: line for m, line in import_graph()[module].items()
             if not m.startswith(KERNELS)}
    assert not above, f"{module} imports {above} (line numbers); kernels/ imports no bnnbench"


def test_training_side_imports_nothing_from_the_report():
    """The report sits on top: it reads what runs wrote (bnnbench.record, metrics.json); the
    run side (train, rundir, multirun, summary, ...) never imports the report package."""
    report = "bnnbench.report"
    above = {m: {n: line for n, line in edges.items() if n.startswith(report)}
             for m, edges in import_graph().items() if not m.startswith(report)}
    assert not {m: e for m, e in above.items() if e}, "move the shared code below the report"
