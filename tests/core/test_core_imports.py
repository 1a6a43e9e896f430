"""The core imports nothing outside itself: the standard library and lane.core only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "lane" / "core"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    outside = {
        f"{path.name}: {name}"
        for path in sorted(CORE.glob("*.py"))
        for name in imported(path)
        if not name.startswith("lane.core") and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert outside == set()
    assert imported(CORE / "actions.py")  # the parse sees imports at all
