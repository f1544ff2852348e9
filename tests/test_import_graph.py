"""The import graph of ``mi_probe`` has no cycle, and its layers import one way.

Edges are read from the source (``import`` and ``from ... import`` statements anywhere
in a module, lazy imports inside functions included), so a cycle hidden behind a
function-level import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mi_probe

PACKAGE = Path(mi_probe.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports pkg.mod when it is a module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name in a.b
                    target = target.rpartition(".")[0]
                if target.startswith("mi_probe") and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # runner.worker imports the context inside a function; the edge still counts
    assert "mi_probe.runner.context" in graph["mi_probe.runner.worker"]


def test_mi_probe_has_no_import_cycle():
    # packages' __init__ modules that only re-export lazily add no edge
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_one_way():
    graph = import_graph()
    for name, targets in graph.items():
        if name == "mi_probe.interfaces":
            assert not targets - {"mi_probe"}, f"interfaces imports {targets}"
        if name.startswith("mi_probe.functional"):
            assert all(t.startswith("mi_probe.functional") or t == "mi_probe.errors"
                       for t in targets), f"{name} imports {targets}"
        if not name.startswith(("mi_probe.builtin", "mi_probe.plugins", "mi_probe.testing")):
            # the core reaches built-ins only through the registry
            assert not any(t.startswith("mi_probe.builtin") for t in targets), \
                f"{name} imports {sorted(t for t in targets if 'builtin' in t)}"
        if name.startswith("mi_probe.builtin"):
            assert not any(t.startswith(("mi_probe.runner", "mi_probe.cli")) for t in targets), \
                f"built-in {name} imports {targets}"
