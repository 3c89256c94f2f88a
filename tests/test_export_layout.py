"""The exporter's layout: its import graph has no circle, sources sit above the one writer,
and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = Path(ROOT, "export")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in module ``name``, at any depth (inside functions
    and ``if TYPE_CHECKING:`` too), relative imports resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            if node.level:
                module = f"{base}.{module}" if module else base
            found.append((module, [a.name for a in node.names]))
    return found


def edges(name: str) -> set[str]:
    """The exporter modules ``name`` imports (``from pkg import module`` counts as module)."""
    out = set()
    for module, names in imports(name):
        targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        out.update(targets or ([module] if module in MODULES else []))
    return out - {name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_cycle_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_exporter_has_no_import_circle():
    graph = {name: edges(name) for name in MODULES}
    assert sum(map(len, graph.values())) > 40  # the walk sees the imports
    assert cycle(graph) is None


def test_sources_import_the_writer_never_the_reverse():
    """export.artifact is the writer both sources use; a source never reads the other."""
    for name in MODULES:
        targets = edges(name)
        if name.startswith("export.artifact"):
            assert not [t for t in targets if t.startswith(("export.torch",
                                                            "export.graphfile"))], name
        if name.startswith("export.graphfile"):
            assert not [t for t in targets if t.startswith("export.torch")], name
        if name.startswith("export.torch"):
            assert not [t for t in targets if t.startswith("export.graphfile")], name


def test_no_private_name_is_imported_across_modules():
    for name in MODULES:
        for module, names in imports(name):
            if module.startswith("export") or module.startswith("reciprocam_ir"):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, (name, module, private)


def test_the_runtime_never_imports_the_exporter():
    for path in Path(ROOT, "reciprocam_ir").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else [])
            assert not [n for n in names if n.split(".")[0] == "export"], path
