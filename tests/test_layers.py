"""The package's layers import downwards only, with no cycles and no imports hidden inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_cli"
# Lower number = lower layer. A module may import its own layer or any lower one, never a higher one.
LAYERS = {"core": 0, "data": 1, "transforms": 1, "models": 1, "losses": 1, "selection": 1, "methods": 2, "engine": 3, "apps": 4}
TOP = 5  # ssl_cli/__init__.py and __main__.py: the public API on top of everything


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(path: Path, top_level_only: bool = False):
    """(module imported, line, inside a function?) for every import of ssl_cli in the file."""
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "ssl_cli" or name.startswith("ssl_cli."):
                yield name, node.lineno, id(node) in inner


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


MODULES = dict(modules())


def resolve(name: str):
    """The module a dotted import name refers to (the longest prefix that is a module of the package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages - {"configs"} <= set(LAYERS), subpackages - set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downwards_only(module):
    upward = []
    for name, line, _ in imports(MODULES[module]):
        target = resolve(name)
        if target and target != module and not module.startswith(target + ".") and layer(target) > layer(module):
            upward.append(f"{MODULES[module].name}:{line} imports {target}")
    assert not upward, upward


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_package_import_inside_a_function(module):
    hidden = [f"line {line}: {name}" for name, line, inner in imports(MODULES[module]) if inner]
    assert not hidden, hidden


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for name, _, _ in imports(path):
            target = resolve(name)
            if target and target != m and not m.startswith(target + "."):  # a module may import its package
                graph[m].add(target)
    # Depth-first search for a back edge; report the first cycle found.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    # The check itself can fail: two modules that import each other are reported.
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import ssl_cli.core.b\n")
    b.write_text("from ssl_cli.core.a import x\n")
    monkeypatch.setitem(MODULES, "ssl_cli.core.a", a)
    monkeypatch.setitem(MODULES, "ssl_cli.core.b", b)
    with pytest.raises(AssertionError, match="ssl_cli.core.a -> ssl_cli.core.b -> ssl_cli.core.a"):
        test_no_import_cycles()
