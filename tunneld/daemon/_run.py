"""The daemon: one overlay, the tunnel table, the local API, MCP, plugins and systemd."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

import trio

from tunneld import __version__
from tunneld.config import Config, DaemonConfig, McpConfig, PluginsConfig, parse_host_port
from tunneld.daemon._agents import AccessCheck, DaemonAgents
from tunneld.daemon._directory import AgentDirectory
from tunneld.daemon._events import EventHub
from tunneld.daemon._local_api import LocalApi
from tunneld.daemon._mcp_auth import SCOPE_READ, SCOPE_WRITE
from tunneld.daemon._overlay_backend import OverlayTunnels
from tunneld.daemon._rpc_pool import RpcStreamPool
from tunneld.daemon._systemd import Notifier
from tunneld.daemon._tunnels import TunnelTable
from tunneld.http import HttpError, HttpServer, Request, Router
from tunneld.log import get_logger
from tunneld.mcp import Caller, McpServer
from tunneld.net.overlay import Overlay, PeerStatus
from tunneld.plugins import PluginError, PluginManager

__all__ = ["Daemon"]

log = get_logger(__name__)

DEFAULT_SHUTDOWN_GRACE: Final = 5.0
_WILDCARD_HOSTS: Final = ("", "0.0.0.0", "::", "*")


class Daemon:
    """``tunneld run``: serve an :class:`Overlay` to local programs and MCP hosts.

    ``reload_settings`` re-reads the config (SIGHUP and ``POST /v0/reload``): a
    :class:`Config` (or only its ``[daemon]`` table); it may raise to refuse a bad
    file, and the daemon keeps running with the old settings. On reload
    ``idle_timeout``, ``connect_timeout``, ``[plugins]`` and ``[mcp] allowed_tools``
    take effect (the tool list changes are pushed to MCP sessions); sockets, the
    listener and the node identity need a restart.

    MCP is served at ``/mcp`` on the local API socket, and on TCP at ``mcp.listen``
    (``""``, the default here, for none; ``tunneld run`` passes ``[mcp]``). On the
    socket, a caller who may use the write endpoints (root, the daemon's user, the
    socket group) gets the MCP write scope, anyone else read-only tools only. On TCP,
    ``mcp_authenticate`` (e.g. a :class:`StaticTokenAuthenticator` for ``[mcp]
    token_file``, or an OAuth resource server) decides; without it the TCP listener
    has no authentication: keep it on loopback. ``mcp_routes`` adds routes next to
    ``/mcp`` on TCP (RFC 9728 metadata); ``agent_access_check`` is asked, for every TCP
    caller, which agents it may reach (per-caller authorization, docs/oauth.md).

    ``plugins`` defaults to a manager with the default ``[plugins]`` settings.
    """

    def __init__(
        self,
        overlay: Overlay,
        settings: DaemonConfig,
        *,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], DaemonConfig | Config] | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        mcp: McpConfig | None = None,
        plugins: PluginManager | None = None,
        mcp_authenticate: Callable[[Request], Awaitable[Caller]] | None = None,
        mcp_resource_metadata_url: str | None = None,
        mcp_routes: Callable[[Router], None] | None = None,
        agent_access_check: AccessCheck | None = None,
    ) -> None:
        self.overlay = overlay
        self.settings = settings
        self.notifier = notifier if notifier is not None else Notifier({})
        self._reload_settings = reload_settings
        self.shutdown_grace = shutdown_grace
        self.events = EventHub()
        self.tunnels = TunnelTable(
            OverlayTunnels(overlay),
            idle_timeout=settings.idle_timeout.seconds,
            connect_timeout=settings.connect_timeout.seconds,
            on_event=self.events.publish,
        )
        # Idle agent rpc streams MCP tool calls reuse (one pool for every caller: the
        # streams are the daemon's, each call still checks the caller's access).
        self.rpc_pool = RpcStreamPool()
        self.directory = AgentDirectory(
            overlay.list_agents, self._peer_statuses, self.tunnels.tunnels, wall=time.time
        )
        self.api = LocalApi(
            tunnels=self.tunnels,
            open_stream=overlay.open_stream,
            status=self._status,
            agents=self._agents_body,
            events=self.events.subscribe,
            reload=self._reload_endpoint,
            write_group=settings.socket_group or None,
        )
        self.mcp_settings = mcp if mcp is not None else McpConfig(listen="")
        self.plugins = (
            plugins
            if plugins is not None
            else PluginManager(PluginsConfig(), allowed_tools=self.mcp_settings.allowed_tools)
        )
        self.mcp_url: str | None = None
        self._agent_access_check = agent_access_check
        # One MCP server per transport: they serve the same registry but authenticate
        # differently (SO_PEERCRED on the socket; the TCP side is where OAuth goes).
        self.mcp_unix = self._mcp_server(self._authenticate_unix)
        self.mcp_unix.mount(self.api.router, "/mcp")
        self.mcp_tcp: McpServer | None = None
        self._mcp_http: HttpServer | None = None
        if self.mcp_settings.listen:
            self.mcp_tcp = self._mcp_server(mcp_authenticate, mcp_resource_metadata_url)
            router = Router()
            self.mcp_tcp.mount(router, "/mcp")
            if mcp_routes is not None:
                mcp_routes(router)  # e.g. RFC 9728 metadata next to /mcp
            # Plain TCP connections on DirectSocketStream: a request's socket calls the
            # kernel completes at once take no scheduler round (TLS is not served here).
            self._mcp_http = HttpServer(router, direct_streams=True)
        self._stopping = False
        self._reloading = trio.Lock()  # SIGHUP and POST /v0/reload may overlap

    def _mcp_server(
        self,
        authenticate: Callable[[Request], Awaitable[Caller]] | None,
        resource_metadata_url: str | None = None,
    ) -> McpServer:
        settings = self.mcp_settings
        host = parse_host_port(settings.listen).host if settings.listen else ""
        return McpServer(
            self.plugins.registry,
            self._agents_for,
            instructions=settings.instructions,
            authenticate=authenticate,
            resource_metadata_url=resource_metadata_url,
            allowed_origins=settings.allowed_origins,
            allowed_hosts=() if host in _WILDCARD_HOSTS else (host,),
            max_request_bytes=settings.max_request_size.bytes,
            session_idle_timeout=settings.session_idle_timeout.seconds,
            plugin_configs=self.plugins.configs,
        )

    def _agents_for(self, caller: Caller) -> DaemonAgents:
        # Only remote (TCP) callers are narrowed: socket callers are local users the
        # daemon already serves as its own user.
        check = self._agent_access_check if caller.transport == "http" else None
        return DaemonAgents(
            self.tunnels, self.overlay.open_stream, self._agents, caller, check, self.rpc_pool
        )

    async def _authenticate_unix(self, request: Request) -> Caller:
        """The socket's caller: read scope for anyone who can connect, write per the API."""
        await trio.lowlevel.checkpoint()
        self.api.refuse_browsers(request)
        creds = request.peer_credentials
        scopes = {SCOPE_READ}
        if self.api.can_write(creds):
            scopes.add(SCOPE_WRITE)
        return Caller(
            subject="",
            scopes=frozenset(scopes),
            transport="unix",
            uid=creds.uid if creds is not None else None,
        )

    def _mcp_servers(self) -> list[McpServer]:
        return [s for s in (self.mcp_unix, self.mcp_tcp) if s is not None]

    async def _open_mcp_listeners(self) -> list[trio.SocketListener]:
        listen = self.mcp_settings.listen
        if not listen:
            return []
        address = parse_host_port(listen)
        try:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        except OSError as exc:
            raise OSError(exc.errno, f"[mcp] listen {listen}: {exc.strerror or exc}") from None
        if address.port == 0 and len(listeners) > 1:
            # Every address family would get its own random port: serve one, truthfully.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        return listeners

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until SIGTERM/SIGINT (with ``handle_signals``), :meth:`stop` or cancellation.

        Loads the plugins first and calls their ``startup`` hooks; ``shutdown`` hooks
        run (shielded, bounded) when the daemon stops. Reports the local API's
        addresses, then the MCP URL (``http://HOST:PORT/mcp``) if MCP listens on TCP,
        once everything is up, which is also when ``READY=1`` goes to systemd.

        Raises:
            PluginError: ``[plugins] strict`` and a plugin failed.
            OSError: the MCP TCP address cannot be bound (the message names it).
        """
        self.plugins.load()
        self._serve_registry()
        mcp_listeners = await self._open_mcp_listeners()
        try:
            await self.plugins.startup()
            self._serve_registry()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.overlay.serve)
                await nursery.start(self.tunnels.run)
                await nursery.start(self.rpc_pool.run)
                for server in self._mcp_servers():
                    await nursery.start(server.run)
                # MCP's listener first: once the local API answers, /v0/status shows
                # the MCP URL and it serves (a script starting the daemon and asking its
                # status at once got no URL now and then).
                url: str | None = None
                if self._mcp_http is not None and mcp_listeners:
                    url = self._url(mcp_listeners[0])
                    served, mcp_listeners = mcp_listeners, []  # the server owns them now
                    await nursery.start(self._mcp_http.serve, served)
                    self.mcp_url = url
                addresses = await nursery.start(self._serve_api, listeners, nursery.cancel_scope)
                if url is not None:
                    addresses = [*addresses, url]
                await nursery.start(self.notifier.run_watchdog)
                if handle_signals:
                    await nursery.start(self._signals)
                self.notifier.ready(f"serving the local API on {len(listeners)} socket(s)")
                log.info("daemon.ready", name=self.overlay.config.name, mcp=self.mcp_url)
                task_status.started(addresses)
        finally:
            with trio.CancelScope(shield=True):
                for listener in mcp_listeners:
                    await listener.aclose()
                await self.plugins.shutdown()

    def _serve_registry(self) -> None:
        for server in self._mcp_servers():
            server.set_registry(self.plugins.registry, self.plugins.configs)

    @staticmethod
    def _url(listener: trio.SocketListener) -> str:
        host, port = listener.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/mcp"

    async def _serve_api(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self.api.serve(listeners, task_status=task_status)
            # Graceful: tell the coordinator our tunnels are gone while it still hears us.
            await self.rpc_pool.aclose()
            await self.tunnels.aclose()
        finally:
            # The API finished its shutdown: the rest goes with it.
            scope.cancel()

    def stop(self) -> None:
        """Begin a graceful shutdown: refuse new requests, give open ones the grace."""
        if not self._stopping:
            self._stopping = True
            self.notifier.stopping()
            log.info("daemon.stopping", grace=self.shutdown_grace)
        self.api.shutdown(self.shutdown_grace)
        if self._mcp_http is not None:
            self._mcp_http.shutdown(self.shutdown_grace)

    async def _signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    self.stop()

    async def reload(self) -> Mapping[str, object]:
        """Re-read the settings that can change at run time; says what happened.

        The plugins are reloaded too and every MCP session hears
        ``notifications/tools/list_changed``. A bad file or a strict plugin failure
        refuses the reload and keeps the running settings and plugins.
        """
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> Mapping[str, object]:
        self.notifier.reloading()
        try:
            if self._reload_settings is None:
                return {"reloaded": False, "reason": "no config file to reload"}
            try:
                loaded = self._reload_settings()
            except Exception as exc:
                log.warning("daemon.reload_failed", error=str(exc))
                return {"reloaded": False, "reason": str(exc)}
            settings = loaded.daemon if isinstance(loaded, Config) else loaded
            if isinstance(loaded, Config):
                try:
                    await self.plugins.reload(
                        loaded.plugins, allowed_tools=loaded.mcp.allowed_tools
                    )
                except PluginError as exc:
                    log.warning("daemon.reload_failed", error=str(exc))
                    return {"reloaded": False, "reason": str(exc)}
                finally:
                    self._serve_registry()
            else:
                await trio.lowlevel.checkpoint()
            self.settings = settings
            self.tunnels.idle_timeout = settings.idle_timeout.seconds
            self.tunnels.connect_timeout = settings.connect_timeout.seconds
            log.info(
                "daemon.reloaded",
                idle_timeout=settings.idle_timeout.seconds,
                tools=len(self.plugins.registry.tools),
            )
            if isinstance(loaded, Config):
                return {"reloaded": True, "tools": sorted(self.plugins.registry.tools)}
            return {"reloaded": True}
        finally:
            self.notifier.ready("reloaded")

    async def _reload_endpoint(self) -> Mapping[str, object]:
        result = await self.reload()
        if not result.get("reloaded"):
            raise HttpError(422, str(result.get("reason")), code="reload_failed")
        return result

    def _peers(self) -> list[dict[str, object]]:
        peers = self.overlay.status().get("peers")
        return [
            dataclasses.asdict(peer)
            for peer in (peers if isinstance(peers, list) else [])
            if isinstance(peer, PeerStatus)
        ]

    def _status(self) -> Mapping[str, object]:
        node = dict(self.overlay.status())
        node["peers"] = self._peers()
        return {
            "version": __version__,
            "node": node,
            "watchers": self.events.subscribers,
            "plugins": self.plugins.status(),
            "mcp": {
                "url": self.mcp_url,
                "socket_path": "/mcp",
                "tools": sorted(self.plugins.registry.tools),
                "sessions": sum(s.sessions for s in self._mcp_servers()),
                "calls": sum(s.calls for s in self._mcp_servers()),
            },
        }

    def _peer_statuses(self) -> list[PeerStatus]:
        peers = self.overlay.status().get("peers")
        return [
            peer
            for peer in (peers if isinstance(peers, list) else [])
            if isinstance(peer, PeerStatus)
        ]

    async def _agents(self) -> list[dict[str, object]]:
        return (await self.directory.listing()).agents

    async def _agents_body(self) -> Mapping[str, object]:
        # The socket's callers see everything this node may reach (no per-caller
        # filter there); MCP callers go through DaemonAgents.list_agents.
        return (await self.directory.listing()).to_json()
