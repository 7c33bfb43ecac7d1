"""The floor plan of the tests themselves (docs/architecture.md): shared helpers live in
``harness/``, conftest files hold fixtures, and no test module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_test_module_imports_another_or_a_conftest() -> None:
    offenders = {
        str(path.relative_to(TESTS)): sorted(m for m in modules if m.split(".")[0] == "tests")
        for path in TESTS.rglob("*.py")
        if (modules := _imported_modules(path)) and any(m.split(".")[0] == "tests" for m in modules)
    }
    assert not offenders, f"import shared helpers from harness/ instead: {offenders}"
