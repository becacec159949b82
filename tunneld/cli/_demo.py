"""``tunneld demo``: the embedded default — the system on loopback, nothing to configure."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, TypeVar

import trio

from tunneld.cli._common import CliError, Subparsers

if TYPE_CHECKING:
    from tunneld.demo import DemoOptions

_E = TypeVar("_E", bound=BaseException)


def register(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run control, an agent and the daemon on loopback and make an MCP tool call",
        description=(
            "Start a control plane (coordinator, DERP relay, STUN; SQLite in a temporary"
            " directory) with a user and a password, an agent serving a temporary"
            " workspace, and the daemon with its plugins and MCP server, all on loopback"
            " ports it picks. Make one MCP tool call over HTTP to the daemon (the workspace"
            " plugin's read_file on the agent, through the overlay), print the MCP URL, a"
            " token, the dashboard login and configs for Claude Desktop and the MCP"
            " Inspector, then keep running with a live status line until Ctrl-C, and clean"
            " up. Needs the workspace plugin (pip install -e plugins/tunneld-workspace)."
        ),
    )
    demo.add_argument(
        "--check",
        action="store_true",
        help="do everything, then stop; exit 0 only if the tool call succeeded (for CI)",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help=(
            "print one JSON line when ready (mcp_url, token, control_url, socket_path,"
            " agents, user, password, ...) and keep running"
        ),
    )
    demo.add_argument(
        "--no-auth",
        action="store_true",
        help=(
            "serve MCP on TCP without a token, for the MCP Inspector or the conformance"
            " suite (loopback only; anyone on this machine can call the tools)"
        ),
    )
    demo.add_argument(
        "--calls",
        type=int,
        default=20,
        metavar="N",
        help="warm tool calls to time after the first (default: 20)",
    )
    demo.add_argument(
        "--mcp-port",
        type=int,
        default=0,
        metavar="PORT",
        help="the daemon's MCP TCP port on 127.0.0.1 (default: any free port)",
    )
    demo.add_argument(
        "--control-port",
        type=int,
        default=0,
        metavar="PORT",
        help="the control plane's port on 127.0.0.1 (default: any free port)",
    )
    from tunneld.cli._daemon import add_plugin_option

    add_plugin_option(demo)
    # Teardown makes the nodes log lost sessions; a failed step is reported as an error.
    demo.set_defaults(func=_demo, default_log_level="error")


def _demo(args: argparse.Namespace) -> int:
    from tunneld.demo import DemoError, DemoOptions, check_plugins

    if args.calls < 0:
        raise CliError("--calls must be 0 or more")
    for flag, port in (("--mcp-port", args.mcp_port), ("--control-port", args.control_port)):
        if not 0 <= port <= 65535:
            raise CliError(f"{flag}: expected a port number 0..65535, got {port}")
    options = DemoOptions(
        auth=not args.no_auth,
        plugins=tuple(args.plugin),
        calls=args.calls,
        mcp_port=args.mcp_port,
        control_port=args.control_port,
    )
    try:
        check_plugins(options.plugins)
    except DemoError as exc:
        raise CliError(str(exc)) from None  # nothing started: not a failed demo
    try:
        trio.run(_main, args, options)
    except DemoError as exc:
        raise CliError(f"demo failed: {exc}") from None
    except KeyboardInterrupt:
        # Ctrl-C while starting: everything was unwound (temporary files included).
        return 130
    return 0


async def _main(args: argparse.Namespace, options: DemoOptions) -> None:
    from tunneld.demo import DemoError, connect_text, embedded_demo, show_status

    if not args.json:
        print("tunneld demo — control plane, an agent and the daemon on loopback\n", flush=True)
    if args.no_auth:
        print(
            "  warning: --no-auth: MCP on TCP needs no token; anyone on this machine"
            " can call the tools (it listens on 127.0.0.1 only)\n",
            file=sys.stderr,
            flush=True,
        )

    def progress(line: str) -> None:
        if not args.json:
            print(f"  {line}", flush=True)

    try:
        async with embedded_demo(options, progress) as demo:
            if args.json:
                print(json.dumps({"ok": True, **demo.info.as_json()}), flush=True)
            else:
                print(f"\n{connect_text(demo.info)}\n", flush=True)
            if args.check:
                return
            if not args.json:
                print("Running; Ctrl-C stops it and removes the temporary files.\n", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    if not args.json:
                        nursery.start_soon(
                            lambda: show_status(demo, sys.stdout, tty=sys.stdout.isatty())
                        )
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
    except BaseExceptionGroup as group:
        # Nurseries wrap what fails inside them: report the demo's own error plainly.
        failure = _first(group, DemoError) or _first(group, OSError)
        if failure is None:
            raise
        if isinstance(failure, DemoError):
            raise failure from None
        raise DemoError(str(failure)) from None
    if not args.json and not args.check:
        print("stopped; temporary files removed", flush=True)


def _first(group: BaseExceptionGroup[BaseException], kind: type[_E]) -> _E | None:
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kind)
            if found is not None:
                return found
    return None
