"""``tunneld demo``: the embedded default — the system on loopback, nothing to configure."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from tunneld.cli._common import CliError, Subparsers

NOT_BUILT_YET = (
    "Not built yet: the MCP server with its tool plugins, and OAuth; the next demo will "
    "make its calls as MCP tool calls through `tunneld run`."
)


def register(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the system on loopback with temporary state and show it working",
        description=(
            "Start a real control plane (coordinator, DERP relay, STUN) on loopback with "
            "temporary state, an agent with a temporary workspace and a laptop node; "
            "drive the agent from the laptop through the overlay (relay first, then "
            "direct UDP), every call a stream on one shared tunnel; then clean up. "
            "Exits 0 only if every step worked."
        ),
    )
    demo.add_argument(
        "--calls", type=int, default=20, help="calls on the warm tunnel to time (default: 20)"
    )
    demo.add_argument(
        "--json", action="store_true", help="print one JSON object with the results instead"
    )
    from tunneld.cli._daemon import add_plugin_option

    add_plugin_option(demo)
    # Teardown makes the nodes log lost sessions; a failed step is reported as an error.
    demo.set_defaults(func=_demo, default_log_level="error")


def _demo(args: argparse.Namespace) -> int:
    from tunneld.demo import DemoError, run_demo

    def progress(line: str) -> None:
        if not args.json:
            print(f"  {line}", flush=True)

    if args.plugin:
        import importlib.metadata

        from tunneld.plugins import ENTRY_POINT_GROUP

        installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        missing = [name for name in args.plugin if name not in installed]
        if missing:
            raise CliError(
                f"--plugin {', '.join(missing)}: not installed (installed plugins:"
                f" {', '.join(sorted(installed)) or 'none'})"
            )
    if not args.json:
        print("tunneld demo — control plane, an agent and a laptop node on loopback\n")
    try:
        result = trio.run(
            lambda: run_demo(calls=args.calls, progress=progress, plugins=tuple(args.plugin))
        )
    except (DemoError, OSError) as exc:
        raise CliError(f"demo failed: {exc}") from None
    if args.json:
        print(json.dumps({"ok": True, **result.as_dict()}))
    else:
        print(f"\n{NOT_BUILT_YET}")
    sys.stdout.flush()
    return 0
