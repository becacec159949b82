"""The daemon's local API: HTTP/1.1 on a Unix socket (DESIGN.md, "Local API").

Who may do what comes from the kernel: ``SO_PEERCRED`` gives the caller's uid/gid.
Root, the daemon's own uid and members of the configured write group may use write
endpoints (``POST /v0/dial``, ``POST /v0/reload``); anyone else who can connect is
read-only (403 ``read_only``). Requests carrying ``Origin`` or ``Referer`` come from a
browser and are refused (403 ``browser_request``): a web page must not reach the
daemon through a forwarded socket or a DNS-rebound proxy.

Endpoints:

- ``GET /v0/status``: the injected status plus the tunnel table.
- ``GET /v0/agents``: the injected agent list (a list, or a body with ``agents``).
- ``GET /v0/watch``: newline-delimited JSON events, streamed until the client leaves.
- ``POST /v0/dial`` with ``Upgrade: tunneld-stream``, ``Tunneld-Agent`` and
  ``Tunneld-Service``: a lease on the agent's tunnel and a stream to the service,
  then ``101`` and raw bytes both ways. Failures before the 101 are JSON errors whose
  ``code`` is the tunnel error's (``unknown_agent``, ``unreachable``, ...).
- ``POST /v0/reload``: the injected reload action.
"""

from __future__ import annotations

import errno
import grp
import inspect
import json
import math
import os
import pwd
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import trio

from tunneld.daemon._tunnels import Lease, TunnelError, TunnelTable
from tunneld.http import (
    HttpError,
    HttpLimits,
    HttpServer,
    PeerCredentials,
    Request,
    Response,
    Router,
    open_unix_listener,
)
from tunneld.log import get_logger

__all__ = [
    "DIAL_PROTOCOL",
    "DaemonRunningError",
    "LocalApi",
    "default_socket_path",
    "open_api_listener",
]

log = get_logger(__name__)

DIAL_PROTOCOL: Final = "tunneld-stream"
SYSTEM_SOCKET_PATH: Final = Path("/run/tunneld/tunneld.sock")
# How long a dial's opened stream waits for the 101 to be sent before it is dropped.
_CLAIM_SECONDS: Final = 10.0
_PIPE_CHUNK: Final = 65536

JsonObject = Mapping[str, object]
StatusProvider = Callable[[], JsonObject | Awaitable[JsonObject]]
# A list of agents, or a whole body with an "agents" key (plus source, stale, ...).
AgentsProvider = Callable[
    [], Sequence[JsonObject] | JsonObject | Awaitable[Sequence[JsonObject] | JsonObject]
]
EventSource = Callable[[], AsyncIterator[JsonObject]]
StreamOpener = Callable[[str, str], Awaitable[trio.abc.HalfCloseableStream]]
ReloadAction = Callable[[], Awaitable[JsonObject]]


class DaemonRunningError(OSError):
    """A live daemon already answers on the socket path."""


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """``/run/tunneld/tunneld.sock`` for root (the system instance), else
    ``$XDG_RUNTIME_DIR/tunneld.sock`` when set (a user instance)."""
    environ = os.environ if env is None else env
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.getuid() != 0 and runtime:
        return Path(runtime) / "tunneld.sock"
    return SYSTEM_SOCKET_PATH


async def open_api_listener(
    path: str | os.PathLike[str], *, mode: int = 0o660, group: str | int | None = None
) -> trio.SocketListener:
    """Listen on ``path``; a socket file left there is replaced only if nothing answers.

    Creates the parent directory (0755) when missing.

    Raises:
        DaemonRunningError: another daemon accepts connections on ``path``.
        FileExistsError: ``path`` exists and is not a socket.
        LookupError: ``group`` names no group.
        OSError: binding failed.
    """
    target = Path(path)
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISSOCK(existing.st_mode):
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await probe.connect(os.fspath(target))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            log.info("local_api.stale_socket_replaced", path=str(target))
        else:
            raise DaemonRunningError(
                errno.EADDRINUSE, f"a tunneld daemon is already serving on {target}"
            )
        finally:
            probe.close()
    os.makedirs(target.parent, mode=0o755, exist_ok=True)
    return await open_unix_listener(target, mode=mode, group=group)


def _group_id(group: str | int | None) -> int | None:
    if group is None or group == "":
        return None
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"no such group: {group!r}") from None


def _process_groups(pid: int) -> set[int]:
    """The supplementary groups of ``pid`` (``/proc/PID/status``), empty if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _user_in_group(uid: int, gid: int) -> bool:
    try:
        name = pwd.getpwuid(uid).pw_name
        return name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def _json_line(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


_T = TypeVar("_T")


async def _maybe_await(value: _T | Awaitable[_T]) -> _T:
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass(slots=True)
class _Dial:
    """A dial's lease and opened stream, between its authorize step and its handler.

    Nothing runs for it meanwhile: the upgrade handler takes it (and from then on
    closes the stream and releases the lease itself); one the handler never takes
    (the client left before the 101) is dropped by the reaper at ``deadline``.
    """

    remote: trio.abc.HalfCloseableStream
    lease: Lease
    service: str
    deadline: float


class LocalApi:
    """The local API's routes over injected providers; serve it with :meth:`serve`.

    ``claim_timeout``: how long a dial's lease and stream wait for the 101 to go out
    (a client that left during the tunnel setup leaves nothing behind after it).

    ``write_group`` (name or gid, None for nobody extra) is the group whose members,
    besides root and ``daemon_uid`` (default: this process's uid), may use write
    endpoints. Membership counts the caller's primary gid, its process's
    supplementary groups and the group database.
    """

    def __init__(
        self,
        *,
        tunnels: TunnelTable,
        open_stream: StreamOpener,
        status: StatusProvider,
        agents: AgentsProvider,
        events: EventSource,
        reload: ReloadAction,
        write_group: str | int | None = None,
        daemon_uid: int | None = None,
        limits: HttpLimits | None = None,
        claim_timeout: float = _CLAIM_SECONDS,
    ) -> None:
        self.tunnels = tunnels
        self.claim_timeout = claim_timeout
        self._open_stream = open_stream
        self._status = status
        self._agents = agents
        self._events = events
        self._reload = reload
        self.write_gid = _group_id(write_group)
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
        # Insertion order is deadline order (one claim_timeout for all).
        self._dials: dict[str, _Dial] = {}
        self._reap_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.router = Router()
        self.router.route("GET", "/v0/status", self._get_status, max_body_bytes=0)
        self.router.route("GET", "/v0/agents", self._get_agents, max_body_bytes=0)
        self.router.route("GET", "/v0/watch", self._get_watch, max_body_bytes=0)
        self.router.route("POST", "/v0/reload", self._post_reload, max_body_bytes=4096)
        self.router.upgrade(
            "/v0/dial", DIAL_PROTOCOL, self._dial_stream, authorize=self._authorize_dial
        )
        self.server = HttpServer(self.router, limits=limits, direct_streams=True)

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ``listeners`` (Unix sockets) until cancelled or :meth:`shutdown`.

        Reports the listeners' addresses like :meth:`HttpServer.serve`. Dials' lease
        tasks run in a nursery of this call, so none outlives it.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reaper)
            try:
                await self.server.serve(listeners, task_status=task_status)
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def shutdown(self, grace: float) -> None:
        """Stop accepting; in-flight requests and dials get ``grace`` seconds."""
        self.server.shutdown(grace)

    # -- access -------------------------------------------------------------------

    def can_write(self, credentials: PeerCredentials | None) -> bool:
        """Whether the caller with these credentials may use write endpoints."""
        if credentials is None:
            return False
        if credentials.uid in (0, self.daemon_uid):
            return True
        gid = self.write_gid
        if gid is None:
            return False
        return (
            credentials.gid == gid
            or gid in _process_groups(credentials.pid)
            or _user_in_group(credentials.uid, gid)
        )

    @staticmethod
    def refuse_browsers(request: Request) -> None:
        """Refuse a request that carries ``Origin`` or ``Referer``: a browser's.

        Raises:
            HttpError: 403 ``browser_request``.
        """
        for header in ("origin", "referer"):
            if header in request.headers:
                raise HttpError(
                    403,
                    f"requests with a {header.title()} header are refused:"
                    " browsers may not use the local API",
                    code="browser_request",
                )

    def _check(self, request: Request, *, write: bool) -> None:
        self.refuse_browsers(request)
        if write and not self.can_write(request.peer_credentials):
            uid = request.peer_credentials.uid if request.peer_credentials else None
            raise HttpError(
                403,
                f"uid {uid} may only read: {request.method} {request.path} needs root,"
                " the daemon's user or membership in its group",
                code="read_only",
            )

    # -- read endpoints -----------------------------------------------------------

    async def _get_status(self, request: Request) -> Response:
        self._check(request, write=False)
        status = dict(await _maybe_await(self._status()))
        status["tunnels"] = [
            {
                "agent": t.agent,
                "peer": t.peer,
                "state": t.state.value,
                "leases": t.leases,
                "idle_seconds": None
                if t.idle_since is None
                else round(trio.current_time() - t.idle_since, 3),
                # Seconds until an idle tunnel is removed (unless a lease comes back).
                "idle_deadline_seconds": None
                if t.idle_since is None
                else round(
                    max(0.0, t.idle_since + self.tunnels.idle_timeout - trio.current_time()), 3
                ),
            }
            for t in self.tunnels.tunnels()
        ]
        return Response.json(status)

    async def _get_agents(self, request: Request) -> Response:
        self._check(request, write=False)
        answer: object = await _maybe_await(self._agents())
        if isinstance(answer, Mapping):
            return Response.json(dict(answer))
        assert isinstance(answer, Sequence)  # AgentsProvider has two shapes
        return Response.json({"agents": [dict(a) for a in answer]})

    async def _get_watch(self, request: Request) -> Response:
        self._check(request, write=False)
        source = self._events()

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for event in source:
                    yield _json_line(event)
            finally:
                closer = getattr(source, "aclose", None)
                if closer is not None:
                    await closer()

        return Response.stream(lines(), content_type="application/x-ndjson")

    # -- write endpoints ----------------------------------------------------------

    async def _post_reload(self, request: Request) -> Response:
        self._check(request, write=True)
        result = await self._reload()
        return Response.json(dict(result))

    async def _authorize_dial(self, request: Request) -> Response | None:
        self._check(request, write=True)
        agent = (request.headers.get("tunneld-agent") or "").strip()
        service = (request.headers.get("tunneld-service") or "").strip()
        missing = [
            name
            for name, value in (("Tunneld-Agent", agent), ("Tunneld-Service", service))
            if not value
        ]
        if missing:
            raise HttpError(
                400, "dial needs the header(s) " + ", ".join(missing), code="missing_header"
            )
        if self._nursery is None:
            raise HttpError(503, "the daemon is shutting down", code="shutting_down")
        try:
            lease = await self.tunnels.lease(agent)
        except TunnelError as exc:
            status = {"unknown_agent": 404, "not_permitted": 403}.get(exc.code, 502)
            if exc.code == "shutting_down":
                status = 503
            raise HttpError(status, exc.message, code=exc.code) from None
        try:
            remote = await self._open_stream(lease.peer, service)
        except BaseException as exc:
            self.tunnels.release(lease)
            if isinstance(exc, OSError):
                raise HttpError(
                    502,
                    f"agent {agent!r} refused service {service!r}: {exc}",
                    code="service_unavailable",
                ) from None
            raise
        # Held with no task of its own (a task per dial cost more than the rest of
        # the daemon's part of a dial): the handler takes it or the reaper drops it.
        deadline = trio.current_time() + self.claim_timeout
        self._dials[request.request_id] = _Dial(remote, lease, service, deadline)
        scope = self._reap_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        return None

    async def _reaper(self) -> None:
        """Drop dials whose 101 never went out (their client left), at their deadline;
        on shutdown, all that are left."""
        try:
            while True:
                with trio.CancelScope() as scope:
                    self._reap_scope = scope
                    first = next(iter(self._dials.values()), None)
                    scope.deadline = math.inf if first is None else first.deadline
                    await trio.sleep_forever()
                self._reap_scope = None
                now = trio.current_time()
                while self._dials:
                    request_id, dial = next(iter(self._dials.items()))
                    if dial.deadline > now:
                        break
                    del self._dials[request_id]
                    await self._finish(dial, None, dial.deadline - self.claim_timeout)
        finally:
            self._reap_scope = None
            while self._dials:
                _, dial = self._dials.popitem()
                await self._finish(dial, None, dial.deadline - self.claim_timeout)

    async def _finish(self, dial: _Dial, piped: _Piped | None, started: float) -> None:
        """Close a dial's stream (bounded, shielded), release its lease, log it."""
        try:
            close_nowait = getattr(dial.remote, "close_nowait", None)
            if close_nowait is not None:
                # The overlay's mux stream closes without waiting (it queues its
                # closing frames): no scope, no scheduler round.
                close_nowait()
            else:
                # One scope, shielded and with its own deadline (cheaper than two).
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
                    try:
                        await dial.remote.aclose()
                    except (trio.BrokenResourceError, OSError) as exc:
                        log.info(
                            "local_api.dial_close_failed", agent=dial.lease.agent, error=str(exc)
                        )
        finally:
            self.tunnels.release(dial.lease)
        # One line per dial, at its end (not one at each end of it).
        log.info(
            "local_api.dial",
            agent=dial.lease.agent,
            service=dial.service,
            claimed=piped is not None,
            sent=piped.to_remote if piped else 0,
            received=piped.to_client if piped else 0,
            duration_ms=round((trio.current_time() - started) * 1000, 3),
        )

    async def _dial_stream(self, request: Request, client: trio.abc.Stream) -> None:
        dial = self._dials.pop(request.request_id, None)
        if dial is None:
            return
        piped = _Piped()
        started = trio.current_time()
        try:
            await _pipe(client, dial.remote, piped)
        finally:
            await self._finish(dial, piped, started)


@dataclass(slots=True)
class _Piped:
    """Bytes a dial's pipe copied each way."""

    to_remote: int = 0
    to_client: int = 0


async def _pipe(
    client: trio.abc.Stream, remote: trio.abc.HalfCloseableStream, piped: _Piped
) -> None:
    """Copy both ways until both sides sent EOF, or either side breaks (then stop)."""

    async def copy(
        source: trio.abc.Stream, sink: trio.abc.Stream, cancel: trio.CancelScope, up: bool
    ) -> None:
        # The overlay's mux stream queues what its buffer takes without a schedule
        # point (the receive from the client right after is one when it waits): the
        # client's bytes and its EOF, read at once, then leave in one packet.
        send_nowait: Callable[[bytes | bytearray], int] | None = getattr(sink, "send_nowait", None)
        try:
            while data := await source.receive_some(_PIPE_CHUNK):
                taken = send_nowait(data) if send_nowait is not None else 0
                if taken < len(data):
                    await sink.send_all(data[taken:])
                if up:
                    piped.to_remote += len(data)
                else:
                    piped.to_client += len(data)
            if isinstance(sink, trio.abc.HalfCloseableStream):
                await sink.send_eof()
            else:
                cancel.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        # One task more, not two. This one copies the agent's bytes: that direction
        # ends last (the service answers the client's EOF), so the nursery has no
        # task left to wait for and closing takes no extra scheduler round.
        nursery.start_soon(copy, client, remote, nursery.cancel_scope, True)
        await copy(remote, client, nursery.cancel_scope, False)
