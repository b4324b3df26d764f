"""The package keeps its shape: thin command modules, short functions, layers that import only downwards, no
import cycles at module level, and a docstring on every subpackage saying what it owns. Reads the source
only (AST); imports nothing from ``dlrm_cli``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dlrm_cli"
ROOT = "dlrm_cli"

MAX_COMMAND_LINES = 120
MAX_FUNCTION_LINES = 80

# The layers, bottom up: what each may import besides itself. A module's layer is its subpackage (or
# ``config``, ``errors``, ``api``, ``__main__`` for the modules at the root; ``root`` for dlrm_cli/__init__).
_BELOW_STORE = {"config", "errors", "runtime", "data", "model", "retrieval"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": set(),
    "root": {"api"},  # ``from dlrm_cli import load``: the Python API, imported on first use
    "runtime": {"config", "errors"},
    "data": {"config", "errors"},
    "model": {"config", "errors", "runtime", "data"},
    "retrieval": {"config", "errors", "runtime", "data", "model"},
    "store": _BELOW_STORE | {"root"},  # the root holds __version__ and CHECKPOINT_FORMAT
    "scoring": _BELOW_STORE | {"root", "store"},
    "training": _BELOW_STORE | {"root", "store", "scoring"},
    "api": _BELOW_STORE | {"store", "scoring", "training"},  # train() runs the training core
    "serving": _BELOW_STORE | {"root", "store", "scoring", "api"},
    "tools": _BELOW_STORE | {"root", "store", "scoring", "training"},
}
ANYTHING = {"cli", "__main__"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not ``.__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = (ROOT, *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


TREES = _trees()


def layer(module: str) -> str:
    parts = module.split(".")
    return "root" if len(parts) == 1 else parts[1]


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dlrm_cli modules an import statement in ``module`` names (``from a import b``: ``a.b`` if that is a
    module, else ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == ROOT]
    base = node.module or ""
    if node.level:  # relative: counted from the importing module's package
        package = module.split(".") if _is_package(module) else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != ROOT:
        return []
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not inside functions, not under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append(child)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for statement in child.orelse:
                found += _top_level_imports(ast.Module(body=[statement], type_ignores=[]))
        else:
            found += _top_level_imports(child)
    return found


def _edges(module_level: bool) -> set[tuple[str, str, int]]:
    """(importer, imported, line) for every import of a dlrm_cli module by a dlrm_cli module."""
    edges = set()
    for module, tree in TREES.items():
        statements = (
            _top_level_imports(tree)
            if module_level
            else [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
        )
        for node in statements:
            for target in _targets(module, node):
                assert target in MODULES, f"{module}:{node.lineno} imports {target}, which is not a module here"
                if target != module:
                    edges.add((module, target, node.lineno))
    return edges


def test_command_modules_and_functions_are_short():
    too_long = []
    for module, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        if module.startswith(f"{ROOT}.cli.commands.") and lines > MAX_COMMAND_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines (most {MAX_COMMAND_LINES})")
        for node in ast.walk(TREES[module]):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    too_long.append(f"{where}: {node.name} is {length} lines (most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_every_module_has_a_layer():
    unknown = {layer(module) for module in MODULES} - set(ALLOWED) - ANYTHING
    assert not unknown, f"modules outside the layer table: {sorted(unknown)}"


def test_imports_go_down_the_layers():
    wrong = []
    for importer, imported, line in sorted(_edges(module_level=False)):
        source, target = layer(importer), layer(imported)
        if source in ANYTHING or source == target or target in ALLOWED[source]:
            continue
        wrong.append(f"{importer} (line {line}) imports {imported}: {source} may import {sorted(ALLOWED[source])}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for importer, imported, _ in _edges(module_level=True):
        graph[importer].add(imported)
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            found = cycle_from(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = cycle_from(module, [])
        assert found is None, "import cycle at module level: " + " -> ".join(found)


def test_every_subpackage_says_what_it_owns():
    folders = {path.parent for path in MODULES.values()}
    for folder in sorted(folders):
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder.relative_to(PACKAGE.parent)} has no __init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.relative_to(PACKAGE.parent)} has no docstring"


def test_nothing_imports_typer_private_click():
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]
            assert not any(name.startswith("typer._click") for name in names), f"{module}:{node.lineno}"
