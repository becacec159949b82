"""HttpServer: accept connections on trio listeners and serve each in its own task."""

from __future__ import annotations

import secrets
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Final

import trio
import trio_websocket

from tunneld.http._connection import Connection, legal_field_value
from tunneld.http._limits import HttpLimits
from tunneld.http._router import Router
from tunneld.http._socket_stream import DirectSocketStream
from tunneld.http._unix import PeerCredentials, peer_credentials
from tunneld.http._upgrade import WEBSOCKET_CLOSE_SECONDS
from tunneld.http._util import is_disconnect
from tunneld.log import get_logger

__all__ = ["HttpServer"]

log = get_logger(__name__)

_CLOSE_SECONDS: Final = 1.0
_ACCEPT_BACKOFF_SECONDS: Final = 0.1


def _listener_address(listener: trio.abc.Listener[trio.abc.Stream]) -> object:
    sock = getattr(listener, "socket", None)
    if sock is None:
        return None
    try:
        return sock.getsockname()
    except OSError:
        return None


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    return None


def _peer_info(stream: trio.abc.Stream) -> tuple[object, PeerCredentials | None]:
    """``(peer, peer_credentials)``: the address, and SO_PEERCRED on Unix sockets."""
    sock = _socket_of(stream)
    if sock is None:
        return None, None
    try:
        if sock.family == socket.AF_UNIX:
            # Clients rarely bind a name, so fall back to the path they connected to.
            return sock.getpeername() or sock.getsockname(), peer_credentials(sock)
        return sock.getpeername(), None
    except OSError:
        return None, None


class HttpServer:
    """The one HTTP/1.1 server of tunneld (h11 on trio).

    Serves a :class:`Router` on any trio listeners (TCP, Unix sockets), optionally
    with TLS (``ssl_context``; each connection's handshake runs in its own task under
    ``head_timeout``). Keep-alive and pipelining, ``Expect: 100-continue``,
    ``Content-Length`` and chunked bodies, streamed responses, WebSocket and raw
    upgrades. Errors become JSON error responses; a handler exception is a logged
    500 and the server keeps serving. ``server_header=None`` omits ``Server``.
    ``direct_streams``: serve plain (not TLS) socket connections, Unix or TCP, on a
    :class:`DirectSocketStream` (socket calls the kernel completes at once take no
    scheduler round; the local API's dials are latency-bound on those rounds).
    """

    def __init__(
        self,
        router: Router,
        *,
        limits: HttpLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_header: str | None = "tunneld",
        direct_streams: bool = False,
    ) -> None:
        self.router = router
        self.direct_streams = direct_streams
        self.limits = limits if limits is not None else HttpLimits()
        self.ssl_context = ssl_context
        self._server_header = server_header
        # Checked once, not per connection or response: the fast path writes the value
        # into its 101 and responses write it past h11's checks.
        self._server_header_legal = not server_header or legal_field_value(server_header)
        self._slots = trio.Semaphore(self.limits.max_connections)
        self._accept_scopes: list[trio.CancelScope] = []
        self._connection_scopes: list[trio.CancelScope] = []
        self._connections: set[Connection] = set()
        self._websockets: set[trio_websocket.WebSocketConnection] = set()
        self._shutdown_deadline: float | None = None
        self._nurseries: list[trio.Nursery] = []
        self._id_prefix = secrets.token_hex(3)
        self._next_id = 0

    @property
    def server_header(self) -> str | None:
        """The ``Server`` field value sent with every response (``None``: not sent)."""
        return self._server_header

    @property
    def server_header_legal(self) -> bool:
        """Whether :attr:`server_header` may be written as it is: absent, or a legal field
        value (an illegal one makes each response fail as h11 would refuse it)."""
        return self._server_header_legal

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._shutdown_deadline is not None

    @property
    def connection_count(self) -> int:
        """Connections being served right now (WebSockets and upgrades included)."""
        return len(self._connections)

    def new_request_id(self) -> str:
        """A fresh id for a request: logged with it and quoted in 500 responses."""
        self._next_id += 1
        return f"{self._id_prefix}-{self._next_id:x}"

    def websocket_opened(self, websocket: trio_websocket.WebSocketConnection) -> None:
        """Track an open WebSocket so :meth:`shutdown` can close it with 1001."""
        self._websockets.add(websocket)
        if self.shutting_down and self._nurseries:
            self._nurseries[-1].start_soon(self._close_websocket, websocket)

    def websocket_closed(self, websocket: trio_websocket.WebSocketConnection) -> None:
        """Stop tracking a WebSocket whose handler has finished."""
        self._websockets.discard(websocket)

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections on ``listeners`` until :meth:`shutdown`.

        Reports the listeners' bound addresses (``getsockname()``: a tuple for TCP, the
        path for Unix sockets, ``None`` for a listener without a socket) through
        ``task_status.started``. Takes ownership of the listeners: they are closed as
        soon as accepting stops. Returns after a shutdown once every connection has
        finished (or the grace deadline cancelled it). Cancelling it closes everything.
        """

        def started() -> None:
            task_status.started([_listener_address(listener) for listener in listeners])

        await self._serve(listeners, started)

    async def serve_tcp(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` (0 picks a free port) and :meth:`serve`.

        Reports ``(host, actual_port)`` through ``task_status.started``. A host that
        resolves to several addresses is served on all of them, except with port 0,
        where only the first is used (one port to report).

        Raises:
            OSError: the address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and len(listeners) > 1:
            # Each address family would get its own random port; report one truthfully
            # by serving only the first (e.g. "localhost" -> ::1 and 127.0.0.1).
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound_port = int(listeners[0].socket.getsockname()[1])
        await self._serve(listeners, lambda: task_status.started((host, bound_port)))

    async def _serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        started: Callable[[], None],
    ) -> None:
        async with trio.open_nursery() as connections:
            self._nurseries.append(connections)
            self._connection_scopes.append(connections.cancel_scope)
            if self._shutdown_deadline is not None:
                connections.cancel_scope.deadline = self._shutdown_deadline
            try:
                with trio.CancelScope() as accept_scope:
                    self._accept_scopes.append(accept_scope)
                    if self._shutdown_deadline is not None:
                        accept_scope.cancel()
                    async with trio.open_nursery() as accepting:
                        for listener in listeners:
                            accepting.start_soon(self._accept_loop, listener, connections)
                        started()
                        log.info(
                            "http.serving",
                            listeners=len(listeners),
                            tls=self.ssl_context is not None,
                        )
            finally:
                # Closed as soon as accepting stops, so new connections are refused
                # while in-flight requests finish.
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
                self._accept_scopes.remove(accept_scope)
        self._nurseries.remove(connections)
        self._connection_scopes.remove(connections.cancel_scope)

    def shutdown(self, grace: float) -> None:
        """Stop accepting; let in-flight requests finish for up to ``grace`` seconds.

        Listeners close at once, idle keep-alive connections too; responses still in
        progress carry ``Connection: close``; open WebSockets are closed with 1001
        (going away). At the deadline whatever is left is cancelled. Must be called from
        a trio task of the server's run; it does not wait (``serve`` returns when done).
        Calling it again can only move the deadline earlier.
        """
        deadline = trio.current_time() + grace
        if self._shutdown_deadline is None or deadline < self._shutdown_deadline:
            self._shutdown_deadline = deadline
        log.info("http.shutdown", grace=grace, connections=len(self._connections))
        for scope in self._accept_scopes:
            scope.cancel()
        for scope in self._connection_scopes:
            scope.deadline = min(scope.deadline, deadline)
        for connection in list(self._connections):
            connection.cancel_if_idle()
        if self._nurseries:
            for websocket in list(self._websockets):
                self._nurseries[-1].start_soon(self._close_websocket, websocket)

    async def _close_websocket(self, websocket: trio_websocket.WebSocketConnection) -> None:
        with trio.move_on_after(WEBSOCKET_CLOSE_SECONDS):
            await websocket.aclose(1001, "server shutting down")

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        while True:
            # Take the connection slot before accepting: over the limit, clients wait
            # in the kernel's backlog instead of costing us a task each. A free slot
            # is taken without a schedule point (the accept below is one when it
            # waits; a scheduler round per connection for nothing, otherwise).
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._slots.acquire()
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                self._slots.release()
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: back off instead of spinning, as
                # trio.serve_listeners does.
                self._slots.release()
                log.warning("http.accept_failed", error=str(exc))
                await trio.sleep(_ACCEPT_BACKOFF_SECONDS)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.abc.Stream) -> None:
        connection: Connection | None = None
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                with trio.move_on_after(self.limits.head_timeout) as handshake:
                    await stream.do_handshake()
                if handshake.cancelled_caught:
                    return
            peer, credentials = _peer_info(stream)
            if self.direct_streams and isinstance(stream, trio.SocketStream):
                # trio set TCP_NODELAY on it already; the options stay with the socket.
                stream = DirectSocketStream.take_over(stream)
            connection = Connection(self, stream, peer, credentials)
            self._connections.add(connection)
            await connection.run()
        except Exception as exc:
            if not is_disconnect(exc):
                log.exception("http.connection_crashed")
        finally:
            if connection is not None:
                self._connections.discard(connection)
            # One scope, shielded and with its own deadline (cheaper than two).
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_SECONDS):
                # aclose closes the transport even when cancelled (trio's contract).
                await stream.aclose()
            self._slots.release()
