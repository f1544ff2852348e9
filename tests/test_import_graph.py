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
    assert "mi_probe._core.runner.context" in graph["mi_probe._core.runner.worker"]


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
        if not name.startswith(("mi_probe.builtin", "mi_probe._core.plugins", "mi_probe.testing")):
            # the core reaches built-ins only through the registry
            assert not any(t.startswith("mi_probe.builtin") for t in targets), \
                f"{name} imports {sorted(t for t in targets if 'builtin' in t)}"
        if name.startswith("mi_probe.builtin"):
            assert not any(t.startswith(("mi_probe._core.runner", "mi_probe.cli")) for t in targets), \
                f"built-in {name} imports {targets}"


# ------------------------------------------------------------------ the plugin surface
#: what a plugin may import of mi-probe (besides its own modules)
SURFACE = ("mi_probe.plugin", "mi_probe.functional", "mi_probe.testing")
REPO = PACKAGE.parent


def surface_violations(source: str, module: str) -> list[str]:
    """Imports of ``source`` (the module ``module`` of a plugin) that break the rule: a
    plugin imports mi-probe only through ``mi_probe.plugin``, ``mi_probe.functional``
    and ``mi_probe.testing``; a built-in may also import another built-in's public
    names, and its own kind's private helper modules (``mi_probe.builtin.<kind>._x``);
    nobody imports another module's private (``_``) names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            pairs = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            pairs = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for target, name in pairs:
            if not target.startswith("mi_probe") or target.startswith("mi_probe_"):
                continue
            helper = target.rpartition(".")[2].startswith("_")
            if target == "mi_probe" and name not in (None, "plugin", "functional", "testing"):
                found.append(f"{module}: from mi_probe import {name}")
            elif target.startswith(SURFACE) or target == "mi_probe":
                continue
            elif target.startswith("mi_probe.builtin") and module.startswith("mi_probe.builtin"):
                if name and name.startswith("_") and not helper:
                    found.append(f"{module}: private {name} from {target}")
            else:
                found.append(f"{module}: imports {target}" + (f".{name}" if name else ""))
    return found


def plugin_sources() -> dict[str, str]:
    """Every built-in plugin module, the plugin distributions' modules and the worked
    examples in docs/examples, by module name."""
    out = {}
    for path in sorted((PACKAGE / "builtin").rglob("*.py")):
        out[module_name(path)] = path.read_text()
    for pattern in ("plugins/*/mi_probe_*/*.py", "docs/examples/*.py"):
        for path in sorted(REPO.glob(pattern)):
            out[str(path.relative_to(REPO))] = path.read_text()
    return out


def test_plugins_import_only_the_surface():
    sources = plugin_sources()
    assert len(sources) > 40  # the built-ins, three plugin distributions, the examples
    problems = [p for module, source in sources.items()
                for p in surface_violations(source, module)]
    assert not problems, "\n".join(problems)


def test_the_surface_rule_fails_on_the_old_imports():
    """What built-ins imported before the surface existed breaks the rule."""
    old = {
        "mi_probe.builtin.experiments.semantic_knockout":
            "from mi_probe.analysis import ChannelMassParams\n"
            "from mi_probe.builtin.experiments.knockout import _FitParams, _mean, _rows\n",
        "mi_probe.builtin.datasets.digits":
            "from mi_probe.data import CropScale, _tensor_train_transform\n",
        "mi_probe.builtin.experiments.layer_mi": "from mi_probe import report\n",
        "mi_probe.builtin.adapters.blocks": "from mi_probe._core.sites.trace import trace_blocks\n",
    }
    found = {m: surface_violations(s, m) for m, s in old.items()}
    assert found["mi_probe.builtin.experiments.semantic_knockout"] == [
        "mi_probe.builtin.experiments.semantic_knockout: imports mi_probe.analysis.ChannelMassParams",
        "mi_probe.builtin.experiments.semantic_knockout: private _FitParams from "
        "mi_probe.builtin.experiments.knockout",
        "mi_probe.builtin.experiments.semantic_knockout: private _mean from "
        "mi_probe.builtin.experiments.knockout",
        "mi_probe.builtin.experiments.semantic_knockout: private _rows from "
        "mi_probe.builtin.experiments.knockout"]
    assert all(found.values()), found


def test_at_most_ten_public_top_level_modules():
    public = sorted(p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                    if not p.name.startswith(("_", ".")) and (p.suffix == ".py" or p.is_dir())
                    and p.name != "__pycache__")
    assert len(public) <= 10, public
    assert "plugin" in public and "_core" not in public


def test_the_surface_exports_what_it_lists():
    import mi_probe.plugin as surface

    assert all(hasattr(surface, name) for name in surface.__all__)
