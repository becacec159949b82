"""``tunneld control`` as a service: HTTP routes, the coordinator, relay, STUN, metrics.

Routes:

* ``GET /api/v1/coordinate`` — WebSocket coordinator session (``Authorization: Bearer``,
  checked before the upgrade: 401 without a valid token).
* ``GET /api/v1/nodes`` — JSON list of the nodes the caller may see (bearer auth).
* ``POST /api/v1/tasks``, ``GET /api/v1/tasks`` — task reports (bearer auth; see
  ``tunneld/control/_tasks.py``).
* ``GET /api/v1/access?subject=S&agent=A`` — may user S reach agent A through the
  asking daemon (per-caller authorization, ``tunneld.control._access``).
* ``GET /derp`` — the DERP relay, when wired: ``Upgrade: DERP`` (raw frames, as
  Tailscale's derper) or WebSocket (subprotocol ``derp``).
* ``GET /`` — the dashboard (after a browser login; ``tunneld/control/_dashboard.py``),
  with ``/dashboard/state`` (JSON), ``/dashboard/app.js`` and ``/dashboard/app.css``.
* ``GET /healthz`` — ``200`` ``{"status": "ok", …}``.
* ``GET /metrics`` — Prometheus text from this server's own registry.
* ``GET/POST /login``, ``POST /logout`` — browser login sessions (``tunneld.oauth``),
  when the store is the SQLite one; so is the OAuth 2.1 authorization server
  (``/oauth2/*`` and its ``/.well-known`` metadata, docs/oauth.md).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio
import trio_websocket

from tunneld._address import format_host_port, websocket_base
from tunneld._files import write_file_atomic
from tunneld.config._sections import ControlConfig
from tunneld.control._access import ACCESS_MAX_AGE, check_access
from tunneld.control._coordinator import (
    OAUTH_PRINCIPAL_PREFIX,
    Coordinator,
    CoordinatorSettings,
    Principal,
)
from tunneld.control._dashboard import Dashboard
from tunneld.control._metrics import CONTENT_TYPE, RelayStatsLike, make_registry, render
from tunneld.control._store import SqliteStore, Store
from tunneld.control._stun import StunStats
from tunneld.control._tasks import TaskApi
from tunneld.http import HttpServer, Request, Response, Router
from tunneld.keys import BadKeyError, load_or_create_key_file
from tunneld.log import get_logger
from tunneld.proto.coord import CloseCode, HomeRelay

if TYPE_CHECKING:
    from tunneld.oauth import AuthorizationServer, BrowserSessions

__all__ = [
    "ControlServer",
    "ControlSetupError",
    "RelayLike",
    "ServerInfo",
    "load_or_create_key",
    "write_ready_file",
]

log = get_logger(__name__)

_UNAUTHORIZED_HEADERS = [("WWW-Authenticate", 'Bearer realm="tunneld"')]
# How long the relay waits for the coordinator to register a connecting node key.
_RELAY_AUTHORIZE_GRACE = 2.0


class ControlSetupError(Exception):
    """The server cannot start as configured; the message names the config key."""


class RelayLike(Protocol):
    """The part of the DERP relay the control server drives."""

    @property
    def public_key(self) -> bytes: ...
    @property
    def stats(self) -> RelayStatsLike: ...
    async def handle_websocket(
        self, request: Request, ws: trio_websocket.WebSocketConnection
    ) -> None: ...
    async def handle_stream(self, request: Request, stream: trio.abc.Stream) -> None: ...
    def close_peer(self, key: bytes) -> None: ...
    def is_connected(self, key: bytes) -> bool: ...
    async def announce_restart(self, reconnect_in: float, try_for: float) -> None: ...


RelayFactory = Callable[[bytes, Callable[[bytes], Awaitable[bool]]], RelayLike]
StunServe = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What a running server bound; also the ``--ready-file`` JSON."""

    url: str
    coordinate_url: str
    derp_url: str
    stun: str | None
    derp_public_key: str | None
    pid: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def write_ready_file(path: Path, info: ServerInfo) -> None:
    """Write ``info`` as JSON to ``path`` atomically (temp file + rename)."""
    write_file_atomic(path, info.to_json())


def load_or_create_key(path: Path) -> bytes:
    """The private key in ``path``, generating one (mode 0600) on first use.

    Raises:
        BadKeyError: the file exists but is unreadable, too open or malformed.
    """
    key, created = load_or_create_key_file(path, what="DERP relay private key")
    if created:
        log.info("control.derp_key_created", path=str(path))
    return key


def _ssl_context(config: ControlConfig) -> ssl.SSLContext | None:
    if bool(config.tls_cert) != bool(config.tls_key):
        missing = "tls_key" if config.tls_cert else "tls_cert"
        raise ControlSetupError(f"[control].{missing}: required when the other TLS file is set")
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ControlSetupError(
            f"[control].tls_cert/tls_key: cannot load {config.tls_cert}, {config.tls_key}: {exc}"
        ) from None
    return context


class ControlServer:
    """One control-plane server over an open :class:`Store`.

    ``relay_factory(private_key, authorize)`` builds the DERP relay and ``stun_serve``
    is ``serve_stun(host, port, *, stats, task_status)``; either may be None (not
    served).
    The store stays open after :meth:`serve` returns; the caller closes it.
    """

    def __init__(
        self,
        config: ControlConfig,
        store: Store,
        *,
        relay_factory: RelayFactory | None = None,
        stun_serve: StunServe | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.coordinator = Coordinator(
            store,
            CoordinatorSettings(
                lost_grace=config.lost_grace.seconds,
                revocation_poll=config.revocation_poll.seconds,
                rate=config.update_rate,
                burst=config.update_burst,
            ),
            wall_clock=wall_clock,
        )
        self._wall = wall_clock
        self._relay_factory = relay_factory
        self._stun_serve = stun_serve
        self.stun_stats = StunStats()
        self.relay: RelayLike | None = None
        self.info: ServerInfo | None = None
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._started_at = 0.0
        self._registry = make_registry(self.coordinator, None)
        self.tasks = TaskApi(self.coordinator, store, wall_clock=wall_clock)
        # Browser sessions (and the OAuth server built on them) keep their rows in the
        # SQLite file; another Store backend serves without them.
        self.sessions: BrowserSessions | None = None
        self.oauth: AuthorizationServer | None = None
        if isinstance(store, SqliteStore):
            # Imported here: tunneld.oauth builds on tunneld.control's store, so a
            # module-level import would be circular.
            from tunneld.oauth import AuthorizationServer, BrowserSessions, OAuthSettings

            self.sessions = BrowserSessions(
                store,
                base_url=self.base_url,
                ttl=config.session_ttl.seconds,
                wall_clock=wall_clock,
            )
            self.oauth = AuthorizationServer(
                store,
                self.sessions,
                issuer=self.base_url,
                settings=OAuthSettings(
                    access_token_ttl=config.oauth_access_token_ttl.seconds,
                    refresh_token_ttl=config.oauth_refresh_token_ttl.seconds,
                    resources=config.oauth_resources,
                    registrations_per_hour=config.oauth_registrations_per_hour,
                ),
                wall_clock=wall_clock,
            )
            self.coordinator.oauth_authenticate = self._oauth_principal

    async def _oauth_principal(self, value: str) -> Principal | None:
        # A client node logged in with `tunneld login`: an access token with scope
        # "node" for this control URL. OAuth tokens never carry an agent name, so an
        # agent cannot use one (agents keep their `tnd_` agent tokens).
        if self.oauth is None:
            return None
        grant = await self.oauth.node_grant(value)
        if grant is None:
            return None
        return Principal(OAUTH_PRINCIPAL_PREFIX + grant.family, grant.user_id, grant.user, None)

    def base_url(self) -> str:
        """This server's public base URL: ``[control].public_url``, else the bound address."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return "" if self.info is None else self.info.url

    def shutdown(self) -> None:
        """Begin a graceful shutdown; :meth:`serve` returns when it is done."""
        self._stop.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown` (or cancellation); reports a :class:`ServerInfo`.

        Raises:
            ControlSetupError: bad TLS settings or DERP key file.
            OSError: a listen address cannot be bound.
        """
        try:
            await self._serve(task_status)
        finally:
            self.stopped.set()

    async def _serve(self, task_status: trio.TaskStatus[ServerInfo]) -> None:
        config = self.config
        # Reads the certificate and key files: off the trio thread like the DERP key below.
        ssl_context = await trio.to_thread.run_sync(_ssl_context, config)
        if self._relay_factory is not None:
            key_path = (
                Path(config.derp_key_file) if config.derp_key_file else config.data_dir / "derp.key"
            )
            try:
                private = await trio.to_thread.run_sync(load_or_create_key, key_path)
            except (BadKeyError, OSError) as exc:
                raise ControlSetupError(f"[control].derp_key_file: {exc}") from None
            self.relay = self._relay_factory(private, self._relay_authorize)
            self.coordinator.on_revoked = self.relay.close_peer
        self._registry = make_registry(
            self.coordinator,
            None if self.relay is None else self.relay.stats,
            self.stun_stats if self._stun_serve is not None and config.stun else None,
        )
        router = self._router()
        # Plain connections on DirectSocketStream: a relayed packet's read and write
        # then take no scheduler round each when the kernel is ready (DERP relay).
        http = HttpServer(router, ssl_context=ssl_context, direct_streams=True)
        self._started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.coordinator.run)
            stun_addr: str | None = None
            if self._stun_serve is not None and config.stun:
                bound = await nursery.start(
                    functools.partial(self._stun_serve, stats=self.stun_stats),
                    config.stun_listen.host,
                    config.stun_listen.port,
                )
                stun_addr = format_host_port(bound[0], bound[1])
            async with trio.open_nursery() as http_nursery:
                host, port = await http_nursery.start(
                    http.serve_tcp, config.listen.host, config.listen.port
                )
                self.info = self._info(host, port, ssl_context is not None, stun_addr)
                log.info(
                    "control.serving",
                    url=self.info.url,
                    stun=stun_addr,
                    relay=self.relay is not None,
                )
                task_status.started(self.info)
                await self._stop.wait()
                log.info("control.shutting_down", grace=config.shutdown_grace.seconds)
                await self._announce_restart()
                self.coordinator.close_all()
                http.shutdown(config.shutdown_grace.seconds)
            nursery.cancel_scope.cancel()

    async def _announce_restart(self) -> None:
        if self.relay is not None:
            # DERP Restarting frame: come back in a second, keep trying for 30 s.
            await self.relay.announce_restart(1.0, 30.0)

    def _info(self, host: str, port: int, tls: bool, stun: str | None) -> ServerInfo:
        if self.config.public_url:
            base = self.config.public_url.rstrip("/")
        else:
            base = f"{'https' if tls else 'http'}://{format_host_port(host, port)}"
        ws_base = websocket_base(base)
        key = None if self.relay is None else base64.b64encode(self.relay.public_key).decode()
        return ServerInfo(
            url=base,
            coordinate_url=f"{ws_base}/api/v1/coordinate",
            derp_url=f"{ws_base}/derp",
            stun=stun,
            derp_public_key=key,
            pid=os.getpid(),
        )

    async def _relay_authorize(self, node_key: bytes) -> bool:
        # A relay client must be a node the coordinator registered, whose token is
        # still valid (DERP itself proves the client holds the key's private half).
        # A starting node dials the coordinator and the relay at once, and its relay
        # handshake often arrives before its update_self is stored: give the
        # coordinator a moment (bounded, well inside the relay's handshake timeout)
        # rather than refuse the node its own relay and make it back off.
        deadline = trio.current_time() + _RELAY_AUTHORIZE_GRACE
        delay = 0.02
        while True:
            if await self.store.node_key_active(node_key, self._wall()):
                return True
            left = deadline - trio.current_time()
            if left <= 0:
                return False
            await trio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    # --- routes -----------------------------------------------------------------------

    def _router(self) -> Router:
        router = Router()
        router.websocket(
            "/api/v1/coordinate",
            self._coordinate,
            authorize=self._authorize,
            max_message_size=64 * 1024,
        )
        router.route("GET", "/api/v1/nodes", self._nodes)
        router.route("POST", "/api/v1/tasks", self.tasks.report, max_body_bytes=8 * 1024)
        router.route("GET", "/api/v1/tasks", self.tasks.list_tasks)
        router.route("GET", "/api/v1/access", self._access, max_body_bytes=0)
        router.route("GET", "/healthz", self._healthz)
        router.route("GET", "/metrics", self._metrics)
        if self.sessions is not None:
            self.sessions.mount(router)
            self._dashboard(self.sessions).mount(router)
        if self.oauth is not None:
            self.oauth.mount(router)
        if self.relay is not None:
            router.websocket(
                "/derp",
                self.relay.handle_websocket,
                subprotocols=["derp"],
                require_subprotocol=True,
            )
            # Tailscale's own transport on the same path: DERP on the raw stream.
            router.upgrade("/derp", "DERP", self.relay.handle_stream, method="GET")
        return router

    def _dashboard(self, sessions: BrowserSessions) -> Dashboard:
        return Dashboard(
            self.coordinator,
            self.store,
            current_user=sessions.current_user,
            login_redirect=sessions.login_redirect,
            relay=lambda: self.relay,
            stun=lambda: (
                self.stun_stats if self._stun_serve is not None and self.config.stun else None
            ),
            uptime=lambda: trio.current_time() - self._started_at,
            wall_clock=self._wall,
        )

    async def _authorize(self, request: Request) -> Response | None:
        principal = await self.coordinator.authenticate(request.headers.get("authorization"))
        if principal is None:
            return Response.error(
                401, "a valid bearer token is required", headers=_UNAUTHORIZED_HEADERS
            )
        return None

    async def _coordinate(self, request: Request, ws: trio_websocket.WebSocketConnection) -> None:
        # Checked again after the upgrade: the principal is not carried over from
        # _authorize, and a token revoked in between must not get a session.
        principal = await self.coordinator.authenticate(request.headers.get("authorization"))
        if principal is None:
            await ws.aclose(CloseCode.POLICY_VIOLATION, "token revoked or expired")
            return
        # ``?relay_map=1``: the client understands the ``relays`` message (newer nodes).
        relay_map = self._relay_map() if request.query.get("relay_map") == ["1"] else None
        await self.coordinator.handle_session(principal, ws, relay_map=relay_map)

    def _relay_map(self) -> tuple[HomeRelay, ...]:
        """Our own relay (when we run one) in region ``derp_region``, then
        ``[control].relays`` in regions numbered on from it."""
        relays = []
        if self.relay is not None and self.info is not None:
            relays.append(HomeRelay(self.config.derp_region, self.info.derp_url))
        for index, url in enumerate(self.config.relays):
            relays.append(HomeRelay((self.config.derp_region + 1 + index) % 2**31, url))
        return tuple(relays)

    async def _nodes(self, request: Request) -> Response:
        principal = await self.coordinator.authenticate(request.headers.get("authorization"))
        if principal is None:
            return Response.error(
                401, "a valid bearer token is required", headers=_UNAUTHORIZED_HEADERS
            )
        return Response.json({"nodes": await self.coordinator.visible_nodes(principal)})

    async def _access(self, request: Request) -> Response:
        principal = await self.coordinator.authenticate(request.headers.get("authorization"))
        if principal is None:
            return Response.error(
                401, "a valid bearer token is required", headers=_UNAUTHORIZED_HEADERS
            )
        if principal.agent is not None:
            return Response.error(403, "agent tokens cannot ask for access decisions")
        subject = request.query.get("subject", [])
        agent = request.query.get("agent", [])
        if len(subject) != 1 or len(agent) != 1 or not subject[0] or not agent[0]:
            return Response.error(
                400, "expected one subject and one agent query parameter", code="bad_request"
            )
        answer = await check_access(self.store, principal, subject[0], agent[0])
        log.info(
            "control.access",
            asker=principal.user,
            subject=subject[0][:64],
            agent=agent[0][:128],
            allowed=answer.allowed,
        )
        return Response.json(
            answer.to_json(subject[0], ACCESS_MAX_AGE), headers=[("Cache-Control", "no-store")]
        )

    async def _healthz(self, request: Request) -> Response:
        relay_clients = None if self.relay is None else self.relay.stats.clients_current
        return Response.json(
            {
                "status": "ok",
                "uptime": round(trio.current_time() - self._started_at, 3),
                "coordinator_sessions": self.coordinator.sessions_current,
                "nodes_online": self.coordinator.nodes_online,
                "relay": self.relay is not None,
                "relay_clients": relay_clients,
            }
        )

    async def _metrics(self, request: Request) -> Response:
        return Response(200, [("Content-Type", CONTENT_TYPE)], render(self._registry))
