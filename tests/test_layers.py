"""The package imports one way (issue 15): each module imports only modules of its own layer or below, and
no import cycle exists, counting imports inside functions (``ast``: every ``import`` statement anywhere)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kun_hpc"

# low to high; a module's layer is that of its longest matching prefix (docs/structure.md draws them)
LAYERS = [
    ("kun_hpc", "kun_hpc.core", "kun_hpc.text_libraries"),
    ("kun_hpc.io",),
    ("kun_hpc.config",),
    ("kun_hpc.inference", "kun_hpc.filtering"),
    ("kun_hpc.stages",),
    ("kun_hpc.cluster",),
    ("kun_hpc.merge", "kun_hpc.train"),
    ("kun_hpc.quality", "kun_hpc.inspect_run"),
    ("kun_hpc.report",),
    ("kun_hpc.run", "kun_hpc.iterate"),
    ("kun_hpc.cli",),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body (``from a import b`` counts ``a.b``
    when ``b`` is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def layer(name: str) -> int:
    best, where = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, where = len(p), i
    return where


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer(m) < 0] == []


def test_no_import_cycle_even_inside_functions():
    assert cycles(graph()) == []


def test_imports_go_down_the_layers():
    g = graph()
    upward = sorted(f"{a} -> {b}" for a, targets in g.items() for b in targets if layer(b) > layer(a))
    assert upward == []


@pytest.mark.parametrize(
    "g, want",
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(g, want):
    assert cycles(g) == want


def test_imports_inside_functions_are_counted(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from kun_hpc.run import run\n    import kun_hpc.cli\n")
    assert imports("kun_hpc.x", mod, {"kun_hpc.run", "kun_hpc.cli"}) == {"kun_hpc.run", "kun_hpc.cli"}
