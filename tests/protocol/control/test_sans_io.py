"""The control protocol package does no I/O: no asyncio, socket or similar imports."""

from __future__ import annotations

import ast
from pathlib import Path

import mailmux.protocol.control as package

FORBIDDEN = {"asyncio", "socket", "selectors", "ssl", "threading", "subprocess"}


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_control_protocol_imports_no_io_modules() -> None:
    files = sorted(Path(package.__file__).parent.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        assert not _imported_modules(path) & FORBIDDEN, path.name
