"""Imports point down the layers, no import closes a circle, and the package shows its layout.

The layers, lowest first (``MAY_IMPORT`` says exactly what each may use)::

    leaf       errors, clock, logs, schedule, metrics, collector (and syncd/__init__)
    core       pure values and rules                      -> leaf
    config                                                -> leaf
    store      tables, transactions, migrations           -> core, config, leaf
    providers  adapters and their registry                -> core, config, leaf
    local      ingest, inbox, outbox, export              -> store and below
    engine     one cycle for one target                   -> store, providers and below
    emulators  (kit: their server and shared parts)       -> emulators and kit only
    commands   the library behind each command, schemas   -> all of the above
    daemon                                                -> commands and below
    cli        cli, __main__                              -> anything

Every module under ``syncd/`` is parsed (never imported) and EVERY import is read: at module
level, inside functions and methods, and under ``if TYPE_CHECKING:``. An import that only a type
checker runs still ties the two modules together for a reader, and it is usually the first step
of a circle. How a statement is read:

- ``import a.b.c`` imports ``a.b.c``;
- ``from a.b import c`` imports ``a.b.c`` when that is a module, and ``a.b`` itself in any case:
  the statement runs ``a/b/__init__.py`` first and looks the names up in its namespace (so a step
  of ``syncd.engine`` that wrote ``from syncd.engine import records`` would close a circle with
  the package, which imports the step);
- relative imports are resolved against the importing module's package.

The parent packages Python imports on the way to a module are not counted: every module would
otherwise depend on its own package's ``__init__``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "syncd"

#: The modules allowed at the package root: the cross-cutting ones and the entry points.
ROOT_MODULES = {
    "__init__",
    "__main__",
    "cli",
    "collector",
    "config",
    "errors",
    "logs",
    "metrics",
    "clock",
    "schemas",
    "schedule",
}

#: Which layer each module belongs to: the longest matching prefix wins.
LAYER_OF_PREFIX = {
    "syncd": "leaf",  # the package's own __init__ holds only the version and imports nothing
    "syncd.errors": "leaf",
    "syncd.clock": "leaf",
    "syncd.logs": "leaf",
    "syncd.schedule": "leaf",
    "syncd.metrics": "leaf",
    "syncd.collector": "leaf",
    "syncd.core": "core",
    "syncd.config": "config",
    "syncd.store": "store",
    "syncd.providers": "providers",
    "syncd.local": "local",
    "syncd.engine": "engine",
    "syncd.emulators": "emulators",
    "syncd.emulators.kit": "kit",
    "syncd.commands": "commands",
    "syncd.schemas": "commands",
    "syncd.daemon": "daemon",
    "syncd.cli": "cli",
    "syncd.__main__": "cli",
}

#: Everything the library layers are built from, which commands and the daemon may use.
LIBRARY = {"leaf", "core", "config", "store", "providers", "local", "engine", "emulators", "kit"}

#: What each layer may import (its own layer included where listed).
MAY_IMPORT: dict[str, set[str]] = {
    "leaf": {"leaf"},
    "core": {"leaf", "core"},
    "config": {"leaf", "config"},
    "store": {"leaf", "core", "config", "store"},
    "providers": {"leaf", "core", "config", "providers"},
    "local": {"leaf", "core", "config", "store", "local"},
    "engine": {"leaf", "core", "config", "store", "providers", "engine"},
    # The emulators are a second, independent reading of the providers' rules.
    "emulators": {"emulators", "kit"},
    "kit": {"kit"},
    # The demo runs emulators; a listener is served by the kit's server.
    "commands": LIBRARY | {"commands"},
    "daemon": LIBRARY | {"commands", "daemon"},
    "cli": LIBRARY | {"commands", "daemon", "cli"},
}


@dataclass(frozen=True, order=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()


def _base_of(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        package = package[: -(node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """Every syncd module that ``name`` imports, wherever the statement sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(node, name, is_package)
            yield Import(name, base, node.lineno)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield Import(name, f"{base}.{alias.name}", node.lineno)


def syncd_imports() -> list[Import]:
    found = {
        imp
        for name, path in MODULES.items()
        for imp in imports_of(name, path)
        if imp.imported in MODULES and imp.imported != imp.importer
    }
    return sorted(found)


def layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYER_OF_PREFIX:
            return LAYER_OF_PREFIX[prefix]
    raise AssertionError(f"{module} belongs to no layer: add it to LAYER_OF_PREFIX")


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# -- the tests ----------------------------------------------------------------------------


def test_every_module_belongs_to_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_imports_point_down_the_layers() -> None:
    wrong = [
        imp for imp in syncd_imports() if layer(imp.imported) not in MAY_IMPORT[layer(imp.importer)]
    ]
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(
        f"  {imp}  [{layer(imp.importer)} may not import {layer(imp.imported)}]" for imp in wrong
    )


def test_no_import_closes_a_circle() -> None:
    edges = [(imp.importer, imp.imported) for imp in syncd_imports()]
    found = cycles(edges)
    assert not found, "import circles:\n" + "\n".join(f"  {' <-> '.join(c)}" for c in found)


def test_the_package_root_holds_only_the_cross_cutting_modules() -> None:
    at_root = {p.stem for p in PACKAGE.glob("*.py")}
    assert at_root <= ROOT_MODULES, f"unexpected at the root: {sorted(at_root - ROOT_MODULES)}"


@pytest.mark.parametrize(
    "init",
    sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")),
)
def test_each_package_says_what_it_owns(init: str) -> None:
    tree = ast.parse((ROOT / init).read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{init} needs a docstring: what the folder owns and may import"


def drawn_layers() -> dict[str, set[str]]:
    """The README's Architecture picture: for each layer, every layer below it along arrows."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Architecture\n", 1)[1]
    block = section.split("```mermaid\n", 1)[1].split("```", 1)[0]
    arrows: dict[str, set[str]] = {}
    for line in block.splitlines():
        if "-->" not in line:
            continue
        source, targets = (part.strip() for part in line.split("-->", 1))
        arrows.setdefault(source, set()).update(t.strip() for t in targets.split("&"))
    below: dict[str, set[str]] = {}
    for layer in MAY_IMPORT:
        seen: set[str] = set()
        todo = list(arrows.get(layer, ()))
        while todo:
            step = todo.pop()
            if step not in seen:
                seen.add(step)
                todo.extend(arrows.get(step, ()))
        below[layer] = seen
    return below


def test_the_readme_picture_draws_exactly_the_layers_rules() -> None:
    drawn = drawn_layers()
    for layer, allowed in MAY_IMPORT.items():
        assert drawn[layer] == allowed - {layer}, f"README's picture of {layer!r} is out of date"
