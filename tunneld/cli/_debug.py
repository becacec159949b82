"""``tunneld debug …``: operator diagnostics."""

from __future__ import annotations

from collections.abc import Callable

from tunneld.cli import _wg_probe
from tunneld.cli._common import Subparsers

# Each diagnostic module contributes a ``register(tools)`` here.
_TOOLS: tuple[Callable[[Subparsers], None], ...] = (_wg_probe.register,)


def register(sub: Subparsers) -> None:
    debug = sub.add_parser(
        "debug",
        help="operator diagnostics (wg-probe, …)",
        description="Diagnostics for operators.",
    )
    tools = debug.add_subparsers(dest="debug_command", metavar="TOOL", required=True)
    for register_tool in _TOOLS:
        register_tool(tools)
