"""Protocol code is sans-IO: nothing under mailmux/protocol imports an I/O or threading module."""

from __future__ import annotations

import ast
from pathlib import Path

import mailmux.protocol

FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "threading", "subprocess"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_io_imports_under_protocol() -> None:
    root = Path(mailmux.protocol.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) >= 10
    offenders = {str(m.relative_to(root)): _imports(m) & FORBIDDEN for m in modules}
    assert {k: v for k, v in offenders.items() if v} == {}
