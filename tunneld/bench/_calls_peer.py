"""One process of ``tunneld bench calls`` pair 1: the agent, or the daemon side.

``python -m tunneld.bench._calls_peer agent|daemon`` runs one party in its own process,
as deployments do (an agent runs on its own host, the daemon is its own process, the
MCP host is a third; the control plane is ``tunneld.bench._overlay_peer control``):

* ``agent`` — the agent ``bench-agent``: :class:`~tunneld.agent.AgentServices` over an
  overlay node, with one root, a temporary directory holding ``small.txt`` (the
  ``text`` setting); prints ``{"path": PATH}`` (the file) once it serves.
* ``daemon`` — :class:`~tunneld.daemon.Daemon` with the installed plugins and its MCP
  endpoint (``shared``), and beside it ``per_call``'s MCP server: the same
  :class:`~tunneld.mcp.McpServer` code and registry, whose agent access builds a fresh
  overlay node for every stream. Before it reports, it makes one warm call through its
  own endpoint (``path`` setting: the file to read) and waits (up to 10 s) for the
  daemon's tunnel to the agent to go direct, as a daemon's long-lived tunnel is; then
  prints ``{"shared_url", "per_call_url", "path"}`` (``path``: direct or relay).

Both read their settings as one JSON line on stdin (``coordinate_url``, ``derp_url``,
``token``, and ``text`` or ``path``): tokens never go on a command line. Each exits
when its stdin closes (the benchmark holds the pipe), or after ``--max-seconds``.
``--log-level`` is the benchmark's own, so the daemon logs (one access-log line per
request at ``info``) exactly as it would in the benchmark's process.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import trio

from tunneld._mcp_client import McpHttpClient
from tunneld.agent import AgentServices
from tunneld.bench._control import peer_path
from tunneld.bench._overlay_peer import _say, _settings, _stdin_closed
from tunneld.config import AgentConfig, DaemonConfig, Duration, McpConfig, PluginsConfig
from tunneld.control import ServerInfo
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.demo import loopback_overlay, wait_joined
from tunneld.http import HttpServer, Router
from tunneld.log import setup_logging
from tunneld.mcp import McpServer
from tunneld.net.mux import MuxStream
from tunneld.plugins import PluginManager

__all__ = ["AGENT", "ROLES", "FreshOverlayAgents", "main"]

AGENT: Final = "bench-agent"
ROLES: Final = ("agent", "daemon")
_STEP_TIMEOUT: Final = 60.0
# How long the daemon's warm-up waits for its tunnel to go direct.
_DIRECT_TIMEOUT: Final = 10.0


def _info(settings: Mapping[str, object]) -> ServerInfo:
    # loopback_overlay needs only the two URLs of the control plane.
    return ServerInfo(
        url="",
        coordinate_url=str(settings["coordinate_url"]),
        derp_url=str(settings["derp_url"]),
        stun=None,
        derp_public_key=None,
        pid=0,
    )


class FreshOverlayAgents:
    """AgentAccess that builds a new overlay node for every stream (per-call tunnels)."""

    def __init__(self, info: ServerInfo, token: str) -> None:
        self._info = info
        self._token = token
        self._count = 0

    @asynccontextmanager
    async def open_stream(
        self, agent: str, service: str
    ) -> AsyncIterator[trio.abc.HalfCloseableStream]:
        self._count += 1
        node = loopback_overlay(self._info, f"oneshot-{self._count}", self._token)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.serve)
            await node.add_tunnel(agent)
            with trio.fail_after(_STEP_TIMEOUT):
                stream = await node.open_stream(agent, service)
            try:
                yield stream
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await stream.aclose()
                nursery.cancel_scope.cancel()

    async def list_agents(self) -> list[Mapping[str, object]]:
        await trio.lowlevel.checkpoint()
        return [{"name": AGENT}]


async def _agent() -> None:
    settings = await _settings()
    with tempfile.TemporaryDirectory(prefix="tunneld-bench-agent-") as tmp:
        workspace = Path(tmp)
        small = workspace / "small.txt"
        small.write_text(str(settings["text"]))
        services = AgentServices(AgentConfig(roots=(workspace,)))

        async def serve(peer_id: str, service: str, stream: MuxStream) -> None:
            await services.dispatch(service, stream)

        node = loopback_overlay(_info(settings), AGENT, str(settings["token"]), serve)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.serve)
            await nursery.start(node.serve)
            await wait_joined(node)
            _say({"path": str(small)})
            await _stdin_closed()
            nursery.cancel_scope.cancel()


async def _daemon() -> None:
    settings = await _settings()
    info, token = _info(settings), str(settings["token"])
    plugins = PluginManager(PluginsConfig())
    daemon = Daemon(
        loopback_overlay(info, "bench-laptop", token),
        DaemonConfig(socket_group="", idle_timeout=Duration(3600.0)),
        notifier=Notifier({}),
        mcp=McpConfig(listen="127.0.0.1:0"),
        plugins=plugins,
    )
    with tempfile.TemporaryDirectory(prefix="tunneld-bench-daemon-") as tmp:
        async with trio.open_nursery() as nursery:
            listener = await open_api_listener(Path(tmp) / "api.sock", mode=0o600)
            addresses = await nursery.start(
                functools.partial(daemon.run, [listener], handle_signals=False)
            )
            await wait_joined(daemon.overlay)
            if "read_file" not in plugins.registry.tools:
                raise SystemExit(
                    "the workspace plugin is not installed:"
                    " pip install -e plugins/tunneld-workspace"
                )
            fresh = McpServer(
                plugins.registry,
                lambda caller: FreshOverlayAgents(info, token),
                plugin_configs=plugins.configs,
            )
            router = Router()
            fresh.mount(router, "/mcp")
            await nursery.start(fresh.run)
            bound = await nursery.start(
                HttpServer(router, direct_streams=True).serve_tcp, "127.0.0.1", 0
            )
            shared_url = str(addresses[-1])
            # Warm the daemon's tunnel and let it go direct first, as a daemon's
            # long-lived tunnel is: measured straight after the join, the first rows
            # ran partly over the DERP relay.
            with trio.fail_after(_STEP_TIMEOUT):
                async with McpHttpClient(shared_url) as warm:
                    result = await warm.call_tool(
                        "read_file", {"agent": AGENT, "path": str(settings["path"])}
                    )
            if result.get("isError"):
                raise SystemExit(f"the warm-up read_file failed: {result.get('content')}")
            with trio.move_on_after(_DIRECT_TIMEOUT):
                await daemon.overlay.wait_direct(AGENT)
            _say(
                {
                    "shared_url": shared_url,
                    "per_call_url": f"http://127.0.0.1:{bound[1]}/mcp",
                    "path": peer_path(daemon.overlay, AGENT),
                }
            )
            await _stdin_closed()
            daemon.stop()
            nursery.cancel_scope.cancel()


async def _bounded(args: argparse.Namespace) -> None:
    with trio.move_on_after(args.max_seconds) as scope:
        await (_agent() if args.role == "agent" else _daemon())
    if scope.cancelled_caught:
        raise SystemExit(f"gave up after {args.max_seconds} s")


def main(argv: list[str]) -> int:
    """Run one role until stdin closes or ``--max-seconds`` pass."""
    parser = argparse.ArgumentParser(prog="python -m tunneld.bench._calls_peer")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    trio.run(_bounded, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
