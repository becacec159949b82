"""``tunneld status``, ``tunneld agents``, ``tunneld dial``: clients of the daemon's local API."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from contextlib import aclosing
from pathlib import Path

import trio

from tunneld.cli._common import CliError, Subparsers, lazy_handler
from tunneld.cli._status_watch import MAX_INTERVAL, MIN_INTERVAL, watch_status
from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient
from tunneld.daemon._local_api import default_socket_path

__all__ = ["register"]


def _add_socket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=None,
        help=(
            "the daemon's local API socket (default: $TUNNELD_SOCKET, else"
            " /run/tunneld/tunneld.sock as root, $XDG_RUNTIME_DIR/tunneld.sock otherwise)"
        ),
    )
    parser.set_defaults(default_log_level="warning")


def register(sub: Subparsers) -> None:
    run = sub.add_parser(
        "run",
        help="run the daemon: the overlay node, its local API and MCP server",
        description=(
            "Run this machine's overlay node and serve the local API on a Unix socket"
            " (socket-activated under systemd) and MCP (Streamable HTTP) at /mcp on that"
            " socket and on [mcp] listen (default 127.0.0.1:7421), with the tools of the"
            " installed plugins. SIGHUP reloads [daemon] timeouts, [plugins] and [mcp]"
            " allowed_tools; SIGTERM stops gracefully."
        ),
    )
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    run.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=None,
        help="local API socket (default: [daemon].socket, else the per-user default)",
    )
    add_plugin_option(run)
    # The daemon's stack (overlay, MCP, OAuth, plugins) loads only for `tunneld run`.
    run.set_defaults(func=lazy_handler("tunneld.cli._daemon_run", "run"))
    status = sub.add_parser(
        "status",
        help="show the daemon's state and its tunnels",
        description=(
            "Ask the running daemon (`tunneld run`) for its state and tunnels; with --watch,"
            " keep a live view (peers, paths, RTT, tunnels, leases, idle deadlines, events)."
        ),
    )
    _add_socket(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON answer")
    status.add_argument(
        "--watch",
        action="store_true",
        help="keep watching: redraw in place on a terminal, else print a line per change;"
        " Ctrl-C quits",
    )
    status.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_watch_interval,
        default=2.0,
        help="with --watch: re-read the status at least this often"
        f" ({MIN_INTERVAL:g}-{MAX_INTERVAL:g}, default 2)",
    )
    status.set_defaults(func=_status)
    agents = sub.add_parser(
        "agents",
        help="list the agents this node may reach, online or not",
        description=(
            "List every agent this node may reach (its user's agents and agents granted to"
            " it), online or not, as the control plane says (cached a few seconds), with"
            " path, RTT and tunnel state for those the daemon has a tunnel to. When the"
            " control plane cannot answer, lists what the daemon already knew and warns"
            ' on stderr (--json: "stale": true).'
        ),
    )
    _add_socket(agents)
    agents.add_argument("--json", action="store_true", help="print the raw JSON answer")
    agents.set_defaults(func=_agents)
    watch = sub.add_parser(
        "watch",
        help="print the daemon's events as JSON lines",
        description="Print the daemon's events (tunnels up, idle, removed, failed) as they happen.",
    )
    _add_socket(watch)
    watch.set_defaults(func=_watch)
    dial = sub.add_parser(
        "dial",
        help="connect stdin/stdout to a service on an agent",
        description=(
            "Open a stream to PORT on AGENT through the daemon and copy stdin to it and it"
            " to stdout, e.g. ssh -o ProxyCommand='tunneld dial %h 22' HOST."
        ),
    )
    _add_socket(dial)
    dial.add_argument("agent", metavar="AGENT", help="agent name")
    dial.add_argument("port", metavar="PORT", help="service port (or name) on the agent")
    dial.set_defaults(func=_dial)
    mcp = sub.add_parser(
        "mcp",
        help="a stdio MCP server that forwards to the daemon (for stdio-only MCP hosts)",
        description=(
            "Speak MCP over stdin/stdout (newline-delimited JSON-RPC) and forward every"
            " message to the running daemon's /mcp endpoint over its Unix socket, in one"
            " MCP session, so the host's tool calls share the daemon's overlay. Exits when"
            " stdin ends. Configure a host with the command `tunneld mcp`."
        ),
    )
    _add_socket(mcp)
    mcp.set_defaults(func=_mcp)


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    """``--plugin NAME`` (repeatable): enable an installed plugin for this run."""
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            "enable the installed plugin NAME (its entry-point name, e.g. example) for this"
            " run, on top of [plugins] enable; repeatable"
        ),
    )


def _client(args: argparse.Namespace) -> LocalApiClient:
    path = args.socket or os.environ.get("TUNNELD_SOCKET") or default_socket_path()
    return LocalApiClient(path)


def _call(client: LocalApiClient, method: str, target: str) -> object:
    try:
        return trio.run(client.request, method, target)
    except DaemonUnavailableError as exc:
        raise CliError(str(exc)) from None
    except ApiError as exc:
        raise CliError(_api_message(exc)) from None


def _api_message(exc: ApiError) -> str:
    if exc.code == "read_only":
        return f"permission denied: {exc.message}"
    return f"{exc.message} ({exc.code})"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _watch_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"expected {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, got {text}"
        )
    return value


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        if args.json:
            raise CliError("--watch and --json do not mix; `tunneld watch` prints JSON events", 2)
        try:
            trio.run(
                functools.partial(
                    watch_status,
                    _client(args),
                    sys.stdout,
                    interval=args.interval,
                    tty=sys.stdout.isatty(),
                )
            )
        except DaemonUnavailableError as exc:
            raise CliError(str(exc)) from None
        except ApiError as exc:
            raise CliError(_api_message(exc)) from None
        return 0
    answer = _call(_client(args), "GET", "/v0/status")
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0
    if not isinstance(answer, dict):
        raise CliError("the daemon sent a malformed status")
    tunnels = answer.get("tunnels") or []
    node = answer.get("node")
    for key, value in sorted(answer.items()):
        if key not in ("tunnels", "node", "plugins", "mcp"):
            print(f"{key}: {value}")
    _print_mcp(answer.get("mcp"), answer.get("plugins"))
    if node is not None and not isinstance(node, dict):
        print(f"node: {node}")
    if isinstance(node, dict):
        for key in ("name", "udp", "coordinator", "coordinator_error", "relay", "relay_error"):
            if node.get(key) is not None:
                print(f"{key}: {node[key]}")
        peers = node.get("peers") or []
        if peers:
            rows = [["PEER", "ONLINE", "HANDSHAKE", "PATH", "RTT"]]
            for peer in peers:
                rtt = peer.get("rtt")
                rows.append(
                    [
                        f"{peer.get('owner')}/{peer.get('name')}",
                        str(peer.get("online")),
                        str(peer.get("handshake")),
                        str(peer.get("direct_endpoint") or peer.get("path")),
                        "-" if not isinstance(rtt, int | float) else f"{rtt * 1000:.1f}ms",
                    ]
                )
            print(_table(rows))
    if not tunnels:
        print("tunnels: none")
        return 0
    rows = [["AGENT", "STATE", "LEASES", "IDLE", "PEER"]]
    for tunnel in tunnels:
        idle = tunnel.get("idle_seconds")
        rows.append(
            [
                str(tunnel.get("agent")),
                str(tunnel.get("state")),
                str(tunnel.get("leases")),
                "-" if idle is None else f"{idle:.0f}s",
                str(tunnel.get("peer") or "-"),
            ]
        )
    print(_table(rows))
    return 0


def _print_mcp(mcp: object, plugins: object) -> None:
    if isinstance(mcp, dict):
        tools = mcp.get("tools") or []
        where = mcp.get("url") or "the socket only"
        print(
            f"mcp: {where} ({len(tools)} tools, {mcp.get('sessions')} sessions,"
            f" {mcp.get('calls')} calls)"
        )
    if not isinstance(plugins, dict):
        return
    loaded = [p for p in plugins.get("loaded") or [] if isinstance(p, dict)]
    names = ", ".join(f"{p.get('name')} {p.get('version') or ''}".strip() for p in loaded)
    print(f"plugins: {names or 'none'}")
    for failed in plugins.get("failed") or []:
        if isinstance(failed, dict):
            print(
                f"plugin failed: {failed.get('plugin')} ({failed.get('stage')}):"
                f" {failed.get('error')}"
            )


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f}s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _agent_row(agent: dict[str, object], now: float) -> list[str]:
    online = agent.get("online") is True
    last_seen = agent.get("last_seen")
    if online:
        seen = "now"
    elif isinstance(last_seen, (int, float)):
        seen = _ago(now - last_seen)
    else:
        seen = "-"
    rtt = agent.get("rtt")
    tunnel = agent.get("tunnel")
    tunnel_text = "-"
    if isinstance(tunnel, dict):
        leases = tunnel.get("leases")
        tunnel_text = f"{tunnel.get('state')}, {leases} lease{'' if leases == 1 else 's'}"
    return [
        str(agent.get("name")),
        str(agent.get("owner") or "-"),
        "yes" if online else "no",
        seen,
        str(agent.get("path") or "-"),
        f"{rtt * 1000:.1f}ms" if isinstance(rtt, (int, float)) else "-",
        tunnel_text,
    ]


def _agents(args: argparse.Namespace) -> int:
    answer = _call(_client(args), "GET", "/v0/agents")
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0
    agents = answer.get("agents") if isinstance(answer, dict) else None
    if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
        raise CliError("the daemon sent a malformed agent list")
    assert isinstance(answer, dict)
    if answer.get("stale"):
        # stderr: the table on stdout stays a table.
        print(
            f"warning: {answer.get('error') or 'the control plane did not answer'};"
            " showing what this node already knew",
            file=sys.stderr,
        )
    if not agents:
        print("no agents")
        return 0
    now = time.time()
    rows = [["NAME", "OWNER", "ONLINE", "LAST SEEN", "PATH", "RTT", "TUNNEL"]]
    rows.extend(_agent_row(agent, now) for agent in agents)
    print(_table(rows))
    return 0


def _watch(args: argparse.Namespace) -> int:
    client = _client(args)

    async def main() -> None:
        async with aclosing(client.watch()) as events:
            async for event in events:
                print(json.dumps(event, sort_keys=True), flush=True)

    try:
        trio.run(main)
    except DaemonUnavailableError as exc:
        raise CliError(str(exc)) from None
    except ApiError as exc:
        raise CliError(_api_message(exc)) from None
    return 0


def _dial(args: argparse.Namespace) -> int:
    client = _client(args)
    # A bare port number names the agent's TCP forward service (``tcp:PORT``), so
    # ``ProxyCommand='tunneld dial %h 22'`` reaches the agent host's sshd.
    service = f"tcp:{args.port}" if args.port.isascii() and args.port.isdigit() else args.port
    try:
        trio.run(_dial_async, client, args.agent, service)
    except DaemonUnavailableError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:  # an agent or port that cannot go in a request header
        raise CliError(f"dial: {exc}") from None
    except ApiError as exc:
        raise CliError(f"dial {args.agent}:{args.port}: {_api_message(exc)}") from None
    return 0


async def _dial_async(client: LocalApiClient, agent: str, port: str) -> None:
    remote = await client.dial(agent, port)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    async with remote, stdin, stdout, trio.open_nursery() as nursery:

        async def upload() -> None:
            try:
                while data := await stdin.receive_some(65536):
                    await remote.send_all(data)
                await remote.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                nursery.cancel_scope.cancel()

        nursery.start_soon(upload)
        try:
            while data := await remote.receive_some(65536):
                await stdout.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The service closed its side: we are done, whatever stdin still holds.
        nursery.cancel_scope.cancel()


def _mcp(args: argparse.Namespace) -> int:
    from tunneld.daemon._mcp_bridge import McpBridge

    path = args.socket or os.environ.get("TUNNELD_SOCKET") or default_socket_path()
    bridge = McpBridge(path)

    async def main() -> None:
        await bridge.check()
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            await bridge.run(stdin)

    try:
        trio.run(main)
    except DaemonUnavailableError as exc:
        raise CliError(str(exc)) from None
    return 0
