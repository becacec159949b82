"""The demo's moving parts: control plane, an agent and the daemon, in one trio run.

:func:`embedded_demo` starts them on loopback with temporary state, makes one MCP tool
call through the daemon's HTTP endpoint and yields a :class:`Demo` to report on; on
exit everything stops and the temporary directory is removed.
"""

from __future__ import annotations

import errno
import functools
import importlib.metadata
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from tunneld._mcp_client import McpClientError, McpHttpClient
from tunneld.agent import AgentServices
from tunneld.config import AgentConfig, DaemonConfig, Duration, HostPort, McpConfig, PluginsConfig
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    ServerInfo,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.control._tokens import hash_password
from tunneld.daemon import Daemon, Notifier, StaticTokenAuthenticator, open_api_listener
from tunneld.keys import generate_private_key
from tunneld.log import get_logger
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import (
    LinkState,
    Overlay,
    OverlayConfig,
    PeerStatus,
    StreamHandler,
    TokenProvider,
)
from tunneld.plugins import ENTRY_POINT_GROUP, PluginManager

__all__ = [
    "AGENT",
    "DAEMON",
    "USER",
    "Demo",
    "DemoError",
    "DemoInfo",
    "DemoOptions",
    "DemoStatus",
    "ToolCall",
    "embedded_demo",
    "loopback_overlay",
    "wait_joined",
]

log = get_logger(__name__)

USER: Final = "demo"
AGENT: Final = "demo-agent"
DAEMON: Final = "demo-laptop"
WORKSPACE_PLUGIN: Final = "workspace"
DEMO_FILE: Final = "README.txt"
DEMO_TEXT: Final = (
    "This file lives on the demo agent's host; the daemon read it through the overlay.\n"
)
STEP_TIMEOUT: Final = 30.0
_STOP_TIMEOUT: Final = 5.0


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``tunneld demo``'s flags choose.

    ``auth``: the MCP TCP endpoint needs the printed bearer token (``--no-auth`` turns
    that off). ``plugins``: opt-in plugins to enable too. ``calls``: warm tool calls to
    time after the first. Ports 0 pick free ones.
    """

    auth: bool = True
    plugins: tuple[str, ...] = ()
    calls: int = 20
    mcp_port: int = 0
    control_port: int = 0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The demo's first tool call: what was called, what came back, how long it took."""

    tool: str
    arguments: dict[str, Any]
    text: str
    is_error: bool
    ms: float
    tools_listed: int


@dataclass(slots=True)
class DemoInfo:
    """Everything a person or a script needs to use the running demo."""

    root: Path
    control_url: str
    mcp_url: str
    token: str | None
    socket_path: Path
    agents: list[str]
    user: str
    password: str
    workspace: Path
    plugins: list[str]
    tools: list[str]
    first_call: ToolCall | None = None
    warm_ms: list[float] = field(default_factory=list)

    @property
    def warm_p50_ms(self) -> float | None:
        return statistics.median(self.warm_ms) if self.warm_ms else None

    def as_json(self) -> dict[str, object]:
        call = self.first_call
        return {
            "mcp_url": self.mcp_url,
            "token": self.token,
            "control_url": self.control_url,
            "socket_path": str(self.socket_path),
            "agents": list(self.agents),
            "user": self.user,
            "password": self.password,
            "workspace": str(self.workspace),
            "plugins": list(self.plugins),
            "tools": list(self.tools),
            "tool_call": None
            if call is None
            else {
                "tool": call.tool,
                "arguments": call.arguments,
                "ok": not call.is_error,
                "text": call.text,
                "ms": round(call.ms, 3),
            },
            "warm_calls": len(self.warm_ms),
            "warm_p50_ms": None if self.warm_p50_ms is None else round(self.warm_p50_ms, 3),
        }


@dataclass(frozen=True, slots=True)
class DemoStatus:
    """The live status line's numbers."""

    peers_online: int
    peers: int
    path: str
    tunnels: int
    leases: int
    calls: int

    def line(self) -> str:
        return (
            f"peers {self.peers_online}/{self.peers} online · path {self.path} · "
            f"tunnels {self.tunnels} ({self.leases} leases) · calls {self.calls}"
        )


class Demo:
    """A running demo: its :class:`DemoInfo` and the daemon to take status from."""

    def __init__(self, info: DemoInfo, daemon: Daemon) -> None:
        self.info = info
        self.daemon = daemon

    def status(self) -> DemoStatus:
        peers = [
            p
            for p in (self.daemon.overlay.status().get("peers") or [])  # type: ignore[attr-defined]
            if isinstance(p, PeerStatus)
        ]
        agent = next((p for p in peers if p.name == AGENT), None)
        if agent is None or not agent.handshake:
            path = "-"
        elif agent.path == "direct" and agent.direct_endpoint:
            path = f"direct {agent.direct_endpoint}"
        else:
            path = agent.path
        tunnels = self.daemon.tunnels.tunnels()
        servers = [s for s in (self.daemon.mcp_tcp, self.daemon.mcp_unix) if s is not None]
        return DemoStatus(
            peers_online=sum(1 for p in peers if p.online),
            peers=len(peers),
            path=path,
            tunnels=len(tunnels),
            leases=sum(t.leases for t in tunnels),
            calls=sum(s.calls for s in servers),
        )


def check_plugins(wanted: Sequence[str]) -> None:
    """Fail early, with the fix, when the workspace plugin or a ``--plugin`` is missing.

    Raises:
        DemoError: names what is missing and how to install it.
    """
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if WORKSPACE_PLUGIN not in installed:
        raise DemoError(
            "the workspace tools plugin is not installed; the demo calls its read_file tool."
            " Install it: pip install -e plugins/tunneld-workspace"
        )
    missing = [name for name in wanted if name not in installed]
    if missing:
        raise DemoError(
            f"--plugin {', '.join(missing)}: not installed (installed plugins:"
            f" {', '.join(sorted(installed))})"
        )


@asynccontextmanager
async def embedded_demo(
    options: DemoOptions, progress: Callable[[str], None]
) -> AsyncIterator[Demo]:
    """Start control, an agent and the daemon on loopback; make the first tool call.

    ``progress`` gets one line per step. Yields once the tool call succeeded; the
    caller decides how long the demo runs. On exit (cancellation included) every
    component stops and the temporary directory is removed.

    Raises:
        DemoError: a step failed, a port is busy or a plugin is missing (the
            message says which and what to do).
    """
    check_plugins(options.plugins)
    root = Path(tempfile.mkdtemp(prefix="tunneld-demo-"))
    try:
        (root / "control").mkdir()
        store = await SqliteStore.open(root / "control" / "control.db")
        try:
            async with _running(options, root, store, progress) as demo:
                yield demo
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def _running(
    options: DemoOptions, root: Path, store: SqliteStore, progress: Callable[[str], None]
) -> AsyncIterator[Demo]:
    now = time.time()
    password = secrets.token_urlsafe(12)
    await store.add_user(USER, await trio.to_thread.run_sync(hash_password, password), now)
    tokens: dict[str, str] = {}
    for name, agent in ((DAEMON, None), (AGENT, AGENT)):
        token = new_token()
        await store.add_token(token.id, USER, agent, token.secret_hash, now, None)
        tokens[name] = token.value
    server = ControlServer(
        ControlConfig(
            listen=HostPort("127.0.0.1", options.control_port),
            stun_listen=HostPort("127.0.0.1", 0),
            data_dir=root / "control",
        ),
        store,
        relay_factory=default_relay_factory(),
        stun_serve=default_stun_serve(),
    )
    async with trio.open_nursery() as nursery:
        try:
            info: ServerInfo = await nursery.start(server.serve)
        except OSError as exc:
            raise _port_error(
                exc, "control plane", options.control_port, "--control-port"
            ) from None
        progress(f"control plane   {info.url} (coordinator, DERP relay, STUN {info.stun})")
        progress(f"user            {USER} (password {password}, for the dashboard login)")
        try:
            async with _nodes(options, root, info, tokens, password, progress) as demo:
                yield demo
        finally:
            server.shutdown()
            with trio.move_on_after(_STOP_TIMEOUT):
                await server.stopped.wait()
            nursery.cancel_scope.cancel()


def loopback_overlay(
    info: ServerInfo,
    name: str,
    token: str | TokenProvider,
    on_stream: StreamHandler | None = None,
    **changes: Any,
) -> Overlay:
    """An overlay node on loopback with a fresh key, joining the control plane ``info``
    with ``token`` (a fixed token or a provider); ``on_stream`` serves peers' streams
    (agents); ``changes`` replace further ``OverlayConfig`` fields."""
    provide: TokenProvider
    if isinstance(token, str):
        fixed = token

        async def fixed_token() -> str:
            return fixed

        provide = fixed_token
    else:
        provide = token
    config = OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=info.coordinate_url,
        derp_url=info.derp_url,
        udp_host="127.0.0.1",
    )
    return Overlay(replace(config, **changes), provide, on_stream=on_stream)


@asynccontextmanager
async def _nodes(
    options: DemoOptions,
    root: Path,
    info: ServerInfo,
    tokens: dict[str, str],
    password: str,
    progress: Callable[[str], None],
) -> AsyncIterator[Demo]:
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / DEMO_FILE).write_text(DEMO_TEXT)
    services = AgentServices(AgentConfig(roots=(workspace,), allow_exec=True, allow_write=True))

    async def serve_agent(peer_id: str, service: str, stream: MuxStream) -> None:
        await services.dispatch(service, stream)

    agent = loopback_overlay(info, AGENT, tokens[AGENT], serve_agent)
    token = secrets.token_urlsafe(32) if options.auth else None
    socket_path = root / "tunneld.sock"
    daemon = Daemon(
        loopback_overlay(info, DAEMON, tokens[DAEMON]),
        # The demo is one user's: the socket is 0600 and needs no group.
        DaemonConfig(socket_group="", socket_mode=0o600, idle_timeout=Duration(3600.0)),
        notifier=Notifier({}),
        shutdown_grace=1.0,
        mcp=McpConfig(listen=f"127.0.0.1:{options.mcp_port}"),
        plugins=PluginManager(PluginsConfig(), extra_enable=options.plugins),
        mcp_authenticate=None if token is None else StaticTokenAuthenticator.single(token, USER),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(services.serve)
        await nursery.start(agent.serve)
        progress(f"agent           {AGENT} serves exec and files in {workspace}")
        listener = await open_api_listener(socket_path, mode=0o600)
        try:
            addresses = await nursery.start(
                functools.partial(daemon.run, [listener], handle_signals=False)
            )
        except OSError as exc:
            raise _port_error(exc, "MCP", options.mcp_port, "--mcp-port") from None
        mcp_url = str(addresses[-1])
        await wait_joined(agent, daemon.overlay)
        demo = Demo(
            DemoInfo(
                root=root,
                control_url=info.url,
                mcp_url=mcp_url,
                token=token,
                socket_path=socket_path,
                agents=[AGENT],
                user=USER,
                password=password,
                workspace=workspace,
                plugins=daemon.plugins.plugins,
                tools=sorted(daemon.plugins.registry.tools),
            ),
            daemon,
        )
        progress(
            f"daemon          {DAEMON}: MCP {mcp_url}"
            f"{'' if token else ' (no auth)'} and the socket {socket_path}"
        )
        progress(f"plugins         {', '.join(demo.info.plugins)} ({len(demo.info.tools)} tools)")
        try:
            await _first_calls(demo, options, progress)
            yield demo
        finally:
            daemon.stop()
            nursery.cancel_scope.cancel()


async def _first_calls(demo: Demo, options: DemoOptions, progress: Callable[[str], None]) -> None:
    info = demo.info
    arguments = {"agent": AGENT, "path": str(info.workspace / DEMO_FILE)}
    started = trio.current_time()
    try:
        with trio.fail_after(STEP_TIMEOUT):
            async with McpHttpClient(info.mcp_url, token=info.token) as client:
                tools = await client.list_tools()
                names = {t.get("name") for t in tools}
                if "read_file" not in names:
                    offered = ", ".join(sorted(map(str, names)))
                    raise DemoError(
                        f"the daemon offers no read_file tool (tools: {offered});"
                        " is the workspace plugin disabled?"
                    )
                result = await client.call_tool("read_file", arguments)
                elapsed = (trio.current_time() - started) * 1000
                text = "".join(
                    str(c.get("text", ""))
                    for c in result.get("content") or []
                    if isinstance(c, dict) and c.get("type") == "text"
                )
                info.first_call = ToolCall(
                    "read_file", arguments, text, bool(result.get("isError")), elapsed, len(tools)
                )
                if info.first_call.is_error:
                    raise DemoError(f"read_file on {AGENT} failed: {text}")
                progress(
                    f"tool call       read_file {DEMO_FILE} on {AGENT} over MCP (initialize,"
                    f" tools/list: {len(tools)} tools, tools/call) through the overlay"
                    f" in {elapsed:.0f} ms:"
                )
                progress(f"                {text.strip()!r}")
                for _ in range(options.calls):
                    began = trio.current_time()
                    warm = await client.call_tool("read_file", arguments)
                    if warm.get("isError"):
                        raise DemoError(f"a warm read_file call failed: {warm.get('content')}")
                    info.warm_ms.append((trio.current_time() - began) * 1000)
    except trio.TooSlowError:
        raise DemoError(
            f"the first tool call did not finish within {STEP_TIMEOUT:g}s; status: "
            f"{demo.status().line()}"
        ) from None
    except (McpClientError, OSError) as exc:
        raise DemoError(f"the MCP tool call failed: {exc}") from None
    if info.warm_p50_ms is not None:
        progress(
            f"warm calls      {len(info.warm_ms)} more read_file calls, each a stream on the one"
            f" shared tunnel: p50 {info.warm_p50_ms:.2f} ms per tools/call"
        )


async def wait_joined(*nodes: Overlay) -> None:
    """Wait until every node has its coordinator session and relay connection.

    Raises:
        DemoError: not within ``STEP_TIMEOUT`` (the message gives each node's state).

    A first tool call sent while the daemon's own coordinator session is still being
    set up can wait out the whole connect timeout; the demo starts when all is up.
    """
    # The overlay has no public "joined" event; its state is cheap to poll.
    deadline = trio.current_time() + STEP_TIMEOUT
    while trio.current_time() < deadline:
        if all(
            node.coordinator_state is LinkState.CONNECTED
            and node.relay_state is LinkState.CONNECTED
            for node in nodes
        ):
            return
        await trio.sleep(0.02)
    states = ", ".join(
        f"{n.config.name}: coordinator {n.coordinator_state.value}, relay {n.relay_state.value}"
        for n in nodes
    )
    raise DemoError(f"the nodes did not join the overlay within {STEP_TIMEOUT:g}s ({states})")


def _port_error(exc: OSError, what: str, port: int, flag: str) -> DemoError:
    if exc.errno == errno.EADDRINUSE or "in use" in str(exc):
        return DemoError(
            f"the {what} port 127.0.0.1:{port} is in use (another tunneld?);"
            f" choose another with {flag} PORT, or 0 for any free port"
        )
    return DemoError(f"the {what} listener could not start: {os.strerror(exc.errno or 0)}: {exc}")
