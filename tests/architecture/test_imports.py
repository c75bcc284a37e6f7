"""The layering of src/: every import walked from the source (module level and inside functions),
no cycle anywhere, and each layer importing only what is below it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = ("axon", "mlos_core")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (SRC / pkg).rglob("*.py")}


def imported_names(path: Path, name: str) -> Iterator[str]:
    """Every project module *path* imports, wherever the import statement is (TYPE_CHECKING
    blocks included: a cycle there still ties the modules together for a reader)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # `from axon.store import fastio` imports a module
                yield f"{target}.{alias.name}"


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target in imported_names(path, name):
            while target and target not in modules:  # a name inside a module: the module itself
                target = target.rpartition(".")[0]
            if target and target != name and target.split(".")[0] in PACKAGES:
                deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as the modules on it, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue  # a package and its own submodules (``__init__`` importing a child)
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_walked() -> None:
    graph = import_graph()
    assert "mlos_core.app" in graph and "axon.store.fastio" in graph
    assert "mlos_core.service" in graph["mlos_core.app"]
    assert "axon.store.manifest" in graph["axon.store.integrity"]


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_src() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def allowed(importer: str, imported: str) -> bool:
    """The layers, bottom up: axon.errors; axon.store; axon.model; the rest of axon and mlos_core."""
    if imported == "axon.errors" or imported == "axon" or imported == "mlos_core":
        return True
    if importer.startswith("axon.store"):
        return imported.startswith("axon.store")
    if importer.startswith("axon.model"):
        return imported.startswith(("axon.store", "axon.model"))
    if importer.startswith("mlos_core"):
        return imported.startswith(("axon.store", "axon.model", "mlos_core"))
    if importer.startswith("axon"):
        return not imported.startswith("mlos_core")  # axon talks to the server over HTTP only
    return True


@pytest.mark.parametrize("layer", ["axon.store", "axon.model", "mlos_core", "axon"])
def test_layers_import_only_downward(layer: str) -> None:
    wrong = sorted(f"{a} imports {b}" for a, deps in import_graph().items() if a == layer or a.startswith(layer + ".")
                   for b in deps if not allowed(a, b))
    assert not wrong, "\n".join(wrong)


def test_the_layering_rule_refuses_what_it_should() -> None:
    assert not allowed("axon.store.manifest", "axon.model.inference")
    assert not allowed("axon.store.layout", "axon.settings")
    assert not allowed("axon.model.inference", "axon.publish")
    assert not allowed("mlos_core.registry", "axon.publish")
    assert not allowed("axon.cli.publish", "mlos_core.app")
    assert allowed("mlos_core.registry", "axon.store.manifest")
