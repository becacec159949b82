"""tunneld/proto is sans-IO: no trio, no sockets, no clock reads (DESIGN.md, layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parent.parent / "tunneld" / "proto"

# Modules whose import would let a core do I/O or read the time on its own.
FORBIDDEN_MODULES = {"trio", "trio_websocket", "socket", "asyncio", "selectors", "time", "datetime"}
# Calls that read a clock or sleep even when reached through another name.
FORBIDDEN_ATTRS = {"monotonic", "perf_counter", "time_ns", "monotonic_ns", "sleep", "now", "utcnow"}


def _proto_files() -> list[Path]:
    return sorted(PROTO.rglob("*.py"))


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            if name.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{path.name}:{node.lineno}: imports {name}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in FORBIDDEN_ATTRS
        ):
            found.append(f"{path.name}:{node.lineno}: calls .{node.func.attr}()")
    return found


def test_proto_package_has_modules() -> None:
    assert _proto_files(), "tunneld/proto has no modules to check"


@pytest.mark.parametrize("path", _proto_files(), ids=lambda p: str(p.relative_to(PROTO)))
def test_proto_module_never_imports_trio_or_reads_a_clock(path: Path) -> None:
    assert _violations(path) == []


def test_purity_check_catches_a_clock_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom trio import sleep\nx = time.monotonic()\n")
    assert _violations(bad) == [
        "bad.py:1: imports time",
        "bad.py:2: imports trio",
        "bad.py:3: calls .monotonic()",
    ]
