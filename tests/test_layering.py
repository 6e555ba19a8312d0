"""The package's layering points one way, read from its source (no import is executed).

Bottom to top: the configuration and arrays; the readers and the writer; the format conversions
(pure numpy <-> torch-named dicts); the file dispatcher; the math; the modules; porting and the
command line. A layer imports only from layers below it, the imports form no cycle — not even
through imports deferred into functions — and nothing on the reading side builds or imports a
module at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxlstm"

# What reading and converting a file may import when its modules are imported.
READING_SIDE = ("jaxlstm.config", "jaxlstm.arrays", "jaxlstm.readers", "jaxlstm.writing",
                "jaxlstm.formats", "jaxlstm.files")
ABOVE_READING = ("jaxlstm.nnx", "jaxlstm.linen", "jaxlstm.porting", "jaxlstm.discovery",
                 "jaxlstm.checkpoint", "jaxlstm.testing", "jaxlstm.cli", "jaxlstm.functional",
                 "jaxlstm.data")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(path: Path, *, deferred: bool) -> set[str]:
    """The jaxlstm modules ``path`` imports: at module level, or anywhere with ``deferred``
    (imports inside functions); never those under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (top or deferred):
                names = ([a.name for a in child.names] if isinstance(child, ast.Import)
                         else [child.module or ""])
                if isinstance(child, ast.ImportFrom) and child.module == "jaxlstm":
                    names = [f"jaxlstm.{a.name}" for a in child.names]
                for name in names:
                    target = _resolve(name)
                    if target:
                        found.add(target)
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    # Importing a.b.c imports the packages a.b and a first.
    found |= {parent for target in found for parent in _parents(target)}
    found.discard(_module_name(path))
    found -= set(_parents(_module_name(path)))
    return found


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _resolve(name: str) -> str | None:
    """The module of the package that ``import name`` loads (a name inside a module: that
    module)."""
    while name.startswith("jaxlstm"):
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (the package root excluded: it only re-exports), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target == "jaxlstm":
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "with-deferred"])
def test_the_imports_form_no_cycle(deferred):
    graph = {name: _imports(path, deferred=deferred) for name, path in MODULES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(READING_SIDE)))
def test_the_reading_side_imports_nothing_above_it(name):
    above = sorted(t for t in _imports(MODULES[name], deferred=False)
                   if t.startswith(ABOVE_READING))
    assert not above, f"{name} imports {above} when it is imported"


def test_readers_and_the_writer_stand_alone():
    for name, path in MODULES.items():
        if name.startswith(("jaxlstm.readers", "jaxlstm.writing")):
            allowed = ("jaxlstm.readers", "jaxlstm.arrays", "jaxlstm.config")
            outside = sorted(t for t in _imports(path, deferred=True)
                             if not t.startswith(allowed))
            assert not outside, f"{name} imports {outside}"
