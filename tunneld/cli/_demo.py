"""``tunneld demo``: the embedded default — the system on loopback, nothing to configure."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from tunneld.cli._common import CliError, Subparsers

NOT_BUILT_YET = (
    "Built, not yet in this demo: the overlay node's direct paths and mux streams, "
    "`tunneld agent` and the daemon (`tunneld run`). Not built yet: MCP tools and OAuth."
)


def register(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the system on loopback with temporary state and show it working",
        description=(
            "Start a real control plane (coordinator, DERP relay, STUN) on loopback with "
            "temporary state, let two nodes find each other, complete a WireGuard "
            "handshake over the relay and ping through the tunnel; then clean up. "
            "Exits 0 only if every step worked."
        ),
    )
    demo.add_argument("--pings", type=int, default=5, help="echo requests to send (default: 5)")
    demo.add_argument(
        "--json", action="store_true", help="print one JSON object with the results instead"
    )
    demo.set_defaults(func=_demo, default_log_level="warning")


def _demo(args: argparse.Namespace) -> int:
    from tunneld.demo import DemoError, run_demo

    def progress(line: str) -> None:
        if not args.json:
            print(f"  {line}", flush=True)

    if not args.json:
        print("tunneld demo — the pieces built so far, on loopback, with temporary state\n")
    try:
        result = trio.run(lambda: run_demo(pings=args.pings, progress=progress))
    except (DemoError, OSError) as exc:
        raise CliError(f"demo failed: {exc}") from None
    if args.json:
        print(json.dumps({"ok": True, **result.as_dict()}))
    else:
        print(f"\n{NOT_BUILT_YET}")
    sys.stdout.flush()
    return 0
