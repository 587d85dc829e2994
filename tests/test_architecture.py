"""The rooms of the house and who may import whom (docs/ARCHITECTURE.md draws them).

anomseg (the core) <- db (the store) <- training <- workbench (application layer, CLI) and
dashboard (the UI), read off the source with ``ast``: every ``import`` / ``from ... import``,
at module top or inside a function, counts. Only ``workbench.cli.serve_cmd`` may import
``dashboard``; no module imports itself back through others (no cycles); no module outside
``anomseg/world/`` is longer than 700 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("anomseg", "db", "training", "workbench", "dashboard")
# package -> packages it must never import
FORBIDDEN = {
    "anomseg": {"db", "training", "workbench", "dashboard"},
    "db": {"training", "workbench", "dashboard"},
    "training": {"workbench", "dashboard"},
    "workbench": {"dashboard"},  # except SERVE below
    "dashboard": set(),
}
SERVE = ("workbench.cli.serve_cmd",)  # the one place the UI is started from
MAX_LINES = 700
LONG_OK = ("anomseg/world/",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imported_modules(path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module, line) of every import in a file, resolved to the deepest known module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level-1 steps
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rpartition(".")[0]
            if t in known and t != name:
                yield t, node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    files = {module_name(p): p for p in source_files()}
    known = set(files)
    return {m: dict(imported_modules(p, known)) for m, p in files.items()}


GRAPH = import_graph()


def room(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read():
    # the reader itself: a known import of each kind must be found
    assert "anomseg.errors" in GRAPH["db.engine"]
    assert "db.catalog" in GRAPH["workbench.models"]
    assert any(room(t) == "dashboard" for t in GRAPH["workbench.cli.serve_cmd"])


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_goes_up_the_layers(package):
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, targets in GRAPH.items()
        if room(mod) == package and mod not in SERVE
        for target, line in targets.items()
        if room(target) in FORBIDDEN[package]
    ]
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(bad)


def test_only_serve_imports_the_dashboard():
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, targets in GRAPH.items()
        if room(mod) != "dashboard" and mod not in SERVE
        for target, line in targets.items()
        if room(target) == "dashboard"
    ]
    assert not bad, "\n".join(bad)


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle_and_nothing_else():
    g = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {}}
    assert strongly_connected(g) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    cycles = strongly_connected(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_over_700_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in source_files()
        if not str(p.relative_to(ROOT)).startswith(LONG_OK)
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
