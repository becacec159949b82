"""``tunneld demo``: the embedded default — the whole system on loopback, nothing to configure."""

from __future__ import annotations

import argparse

from tunneld.cli._common import Subparsers


def register(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole system on loopback with temporary state",
        description="Run the whole system on loopback with temporary state and show it working.",
    )
    demo.set_defaults(func=_demo)


def _demo(_: argparse.Namespace) -> int:
    print("tunneld demo: not built yet")
    return 0
