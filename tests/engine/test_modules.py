"""The engine's modules import in one direction: the whole-tensor initializers (structured.py) and
value conversion (values.py) do not import the elementwise registry (initializers.py), which imports
them; no import hidden inside a function works around a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "server" / "engine"


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, inside a function?) for each relative import of the engine's package."""
    found = []
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            found += [(name, id(node) in nested) for name in names]
    return found


def test_structured_and_values_do_not_import_the_registry():
    for module in ("structured.py", "values.py"):
        assert "initializers" not in {name for name, _ in imports(ENGINE / module)}, module
    inside = [name for name, nested in imports(ENGINE / "initializers.py") if nested]
    assert inside == [], f"initializers.py imports {inside} inside a function"
