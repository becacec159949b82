"""HttpServer: h11 on trio, one task per connection.

Each connection task drives one ``h11.Connection``: read a request head under a
deadline, route it, read the (bounded) body, call the handler, write the response,
repeat while keep-alive holds. WebSocket and raw upgrades take the connection over
after the head: the bytes h11 already consumed are replayed into the new protocol.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio
import trio_websocket

from tunneld.http._headers import Headers
from tunneld.http._messages import Handler, HttpError, Request, Response
from tunneld.http._router import Router, UpgradeRoute, WebSocketRoute
from tunneld.http._streams import replay_stream
from tunneld.http._unix import peer_credentials
from tunneld.log import get_logger

__all__ = ["HttpLimits", "HttpServer"]

log = get_logger(__name__)

_RECEIVE_SIZE: Final = 64 * 1024
# Bytes drained after an error response before closing, so the client reads the
# response instead of a TCP reset (RFC 9112 §9.6, "tear-down").
_LINGER_BYTES: Final = 256 * 1024
_LINGER_SECONDS: Final = 1.0
_CLOSE_SECONDS: Final = 1.0
_WEBSOCKET_CLOSE_SECONDS: Final = 5.0
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_FRAMING_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding"})


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one client may make the server hold or wait for.

    Sizes in bytes, times in seconds. ``head_timeout`` covers the whole request head
    from its first byte (slowloris); ``keepalive_timeout`` is how long an idle
    connection may wait for its next request; ``body_timeout`` covers the whole body;
    ``write_timeout`` each write to a client that stopped reading.
    """

    max_request_head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    max_connections: int = 1024
    write_timeout: float = 30.0


class _Abort(Exception):
    """End the connection now, without writing anything more."""


def _http_date() -> str:
    return formatdate(time.time(), usegmt=True)


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


def _peer_info(stream: trio.abc.Stream) -> tuple[object, object | None]:
    sock = _socket_of(stream)
    if sock is None:
        return None, None
    try:
        if sock.family == socket.AF_UNIX:
            return sock.getpeername() or sock.getsockname(), peer_credentials(sock)
        return sock.getpeername(), None
    except OSError:
        return None, None


class HttpServer:
    """The one HTTP/1.1 server of tunneld (h11 on trio).

    Serves a :class:`Router` on any trio listeners (TCP, Unix sockets), optionally
    with TLS. Keep-alive and pipelining, ``Expect: 100-continue``, ``Content-Length``
    and chunked bodies, streamed responses, WebSocket and raw upgrades. Limits come
    from :class:`HttpLimits`; errors become JSON error responses; a handler exception
    is a 500 and the server keeps serving.
    """

    def __init__(
        self,
        router: Router,
        *,
        limits: HttpLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_header: str | None = "tunneld",
    ) -> None:
        self.router = router
        self.limits = limits if limits is not None else HttpLimits()
        self.ssl_context = ssl_context
        self.server_header = server_header
        self._slots = trio.Semaphore(self.limits.max_connections)
        self._accept_scopes: list[trio.CancelScope] = []
        self._connection_scopes: list[trio.CancelScope] = []
        self._connections: set[_Connection] = set()
        self._websockets: set[trio_websocket.WebSocketConnection] = set()
        self._shutdown_deadline: float | None = None
        self._nursery: trio.Nursery | None = None
        self._id_prefix = secrets.token_hex(3)
        self._next_id = 0

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._shutdown_deadline is not None

    def _new_request_id(self) -> str:
        self._next_id += 1
        return f"{self._id_prefix}-{self._next_id:x}"

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections on ``listeners`` until :meth:`shutdown`.

        Reports the listeners' bound addresses (``getsockname()``, ``None`` where a
        listener has no socket) through ``task_status.started``. Returns after a
        shutdown once every connection has finished (or the grace deadline cancelled
        it); the listeners are closed on the way out. Cancelling it closes everything.
        """
        await self._serve(
            listeners,
            lambda: task_status.started([_listener_address(listener) for listener in listeners]),
        )

    async def serve_tcp(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` (0 picks a free port) and :meth:`serve`.

        Reports ``(host, actual_port)`` through ``task_status.started``.
        Raises OSError if the address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound_port = listeners[0].socket.getsockname()[1]
        await self._serve(listeners, lambda: task_status.started((host, bound_port)))

    async def _serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        started: Callable[[], None],
    ) -> None:
        try:
            async with trio.open_nursery() as connections:
                self._nursery = connections
                self._connection_scopes.append(connections.cancel_scope)
                if self._shutdown_deadline is not None:
                    connections.cancel_scope.deadline = self._shutdown_deadline
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
            self._nursery = None
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await trio.aclose_forcefully(listener)

    def shutdown(self, grace: float) -> None:
        """Stop accepting; let in-flight requests finish for up to ``grace`` seconds.

        Idle keep-alive connections are closed at once, responses in progress get
        ``Connection: close``, open WebSockets are closed with 1001 (going away). At the
        deadline whatever is left is cancelled. Must be called from a trio task; it
        does not wait (``serve`` returns when everything is done).
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
        if self._nursery is not None:
            for websocket in list(self._websockets):
                self._nursery.start_soon(self._close_websocket, websocket)

    async def _close_websocket(self, websocket: trio_websocket.WebSocketConnection) -> None:
        with trio.move_on_after(_WEBSOCKET_CLOSE_SECONDS):
            await websocket.aclose(1001, "server shutting down")

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                self._slots.release()
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: back off instead of spinning (as
                # trio.serve_listeners does); other errors end this listener.
                self._slots.release()
                log.warning("http.accept_failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.abc.Stream) -> None:
        connection: _Connection | None = None
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                with trio.move_on_after(self.limits.head_timeout) as handshake:
                    await stream.do_handshake()
                if handshake.cancelled_caught:
                    return
            peer, credentials = _peer_info(stream)
            connection = _Connection(self, stream, peer, credentials)
            self._connections.add(connection)
            await connection.run()
        except (_Abort, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("http.connection_crashed")
        finally:
            if connection is not None:
                self._connections.discard(connection)
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_SECONDS):
                # aclose closes the transport even when cancelled (trio's contract).
                await stream.aclose()
            self._slots.release()


def _encode_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    # latin-1 is HTTP's historical field encoding (RFC 9110 §5.5); anything else in a
    # handler's header is a bug that becomes a 500, not a garbled header.
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _parse_target(target: str) -> tuple[str, str] | None:
    """``(raw_path, raw_query)`` of a request-target (RFC 9112 §3.2), or None."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    if target == "*":
        return "*", ""
    if "://" in target:
        try:
            parts = urlsplit(target)
        except ValueError:
            return None
        return parts.path or "/", parts.query
    return None


def _offered_subprotocols(headers: Headers) -> list[str]:
    # Subprotocol names are case-sensitive tokens (RFC 6455 §4.1), so no lower-casing.
    offered: list[str] = []
    for value in headers.get_all("sec-websocket-protocol"):
        offered.extend(token.strip() for token in value.split(",") if token.strip())
    return offered


class _Connection:
    """One client connection: the h11 state machine plus the request loop."""

    def __init__(
        self, server: HttpServer, stream: trio.abc.Stream, peer: object, credentials: object | None
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.peer = peer
        self.credentials = credentials
        self.tls = isinstance(stream, trio.SSLStream)
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_request_head_bytes
        )
        self._idle_scope: trio.CancelScope | None = None
        self._declared_length: int | None = None
        self._error_status = 0

    def cancel_if_idle(self) -> None:
        """Called on shutdown: stop waiting for a next request that has not begun."""
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    # --- I/O helpers -------------------------------------------------------------

    async def _receive(self) -> None:
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        self.h11.receive_data(bytes(data))

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self._send_bytes(data)

    async def _send_bytes(self, data: bytes) -> None:
        with trio.move_on_after(self.limits.write_timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            log.info("http.write_timeout", peer=str(self.peer))
            raise _Abort("write timeout")

    async def _linger_close(self) -> None:
        """Half-close and drain briefly so the peer sees our last response."""
        try:
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            drained = 0
            with trio.move_on_after(_LINGER_SECONDS):
                while drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _send_error_and_close(self, status: int, message: str) -> None:
        """Answer a request we will not serve further (bad head, limits, timeouts)."""
        self._error_status = status
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = Response.error(status, message, headers=[("Connection", "close")])
            try:
                await self._write_response("GET", response)
            except h11.LocalProtocolError:
                pass
        await self._linger_close()

    # --- request loop ------------------------------------------------------------

    async def run(self) -> None:
        first = True
        while True:
            event = await self._read_head(first)
            if event is None:
                return
            first = False
            keep_alive = await self._handle(event)
            if not keep_alive or self.server.shutting_down:
                return
            if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                self.h11.start_next_cycle()
            else:
                return

    async def _read_head(self, first: bool) -> h11.Request | None:
        """The next request head, or None when the connection should just end."""
        now = trio.current_time()
        idle_deadline = now + (self.limits.head_timeout if first else self.limits.keepalive_timeout)
        head_deadline: float | None = now + self.limits.head_timeout if first else None
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error_and_close(exc.error_status_hint, f"malformed request: {exc}")
                return None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                # ConnectionClosed (the client is done) or anything unexpected.
                return None
            pending = bool(self.h11.trailing_data[0])
            if pending and head_deadline is None:
                head_deadline = trio.current_time() + self.limits.head_timeout
            if not pending and self.server.shutting_down:
                return None
            deadline = head_deadline if head_deadline is not None else idle_deadline
            with trio.CancelScope(deadline=deadline) as scope:
                self._idle_scope = None if pending else scope
                await self._receive()
            self._idle_scope = None
            if scope.cancelled_caught:
                if self.h11.trailing_data[0]:
                    log.info("http.head_timeout", peer=str(self.peer))
                    await self._send_error_and_close(408, "request head not received in time")
                return None

    async def _read_body(self) -> bytes | None:
        """The whole request body; None if an error response was sent instead.

        Raises _Abort when the client disconnects mid-body.
        """
        limit = self.limits.max_body_bytes
        if self._declared_length is not None and self._declared_length > limit:
            # Refuse before reading (or inviting, with 100-continue) a body that is too big.
            await self._send_error_and_close(413, f"request body exceeds {limit} bytes")
            return None
        deadline = trio.current_time() + self.limits.body_timeout
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error_and_close(exc.error_status_hint, f"malformed body: {exc}")
                return None
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    # RFC 9110 §10.1.1: the client waits for this before sending the body.
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                with trio.move_on_at(deadline) as scope:
                    await self._receive()
                if scope.cancelled_caught:
                    await self._send_error_and_close(408, "request body not received in time")
                    return None
            elif isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    await self._send_error_and_close(413, f"request body exceeds {limit} bytes")
                    return None
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise _Abort("connection closed during the request body")

    async def _handle(self, event: h11.Request) -> bool:
        """Serve one request; True if the connection may carry another."""
        started = trio.current_time()
        server = self.server
        request_id = server._new_request_id()
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("latin-1")
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in event.headers.raw_items()
        )
        head_size = (
            len(event.method)
            + len(event.target)
            + sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
        )
        # h11 bounds heads that arrive in pieces; a head delivered whole is checked here.
        if len(headers) > self.limits.max_headers or head_size > self.limits.max_request_head_bytes:
            await self._send_error_and_close(431, "request header fields too large")
            self._access_log(request_id, method, "-", 431, 0, started)
            return False
        parsed = _parse_target(target)
        if parsed is None:
            await self._send_error_and_close(400, "malformed request target")
            self._access_log(request_id, method, "-", 400, 0, started)
            return False
        raw_path, raw_query = parsed
        path = unquote(raw_path, errors="replace")
        try:
            query = parse_qs(raw_query, keep_blank_values=True, max_num_fields=1000)
        except ValueError:
            query = None

        def make_request(body: bytes, path_params: dict[str, str]) -> Request:
            return Request(
                method=method,
                target=target,
                path=path,
                query=query or {},
                headers=headers,
                body=body,
                peer=self.peer,
                tls=self.tls,
                path_params=path_params,
                peer_credentials=self.credentials,
                request_id=request_id,
                http_version=event.http_version.decode("ascii", "replace"),
            )

        response: Response | None = None
        handler: Handler | None = None
        path_params: dict[str, str] = {}
        if query is None:
            response = Response.error(400, "too many query parameters")
        elif method not in _KNOWN_METHODS:
            response = Response.error(501, f"method {method} is not implemented")
        else:
            match = server.router.match(raw_path) if raw_path != "*" else None
            upgrade_tokens = headers.get_tokens("upgrade")
            wants_upgrade = "upgrade" in headers.get_tokens("connection") and bool(upgrade_tokens)
            if match is None:
                if server.router.fallback is not None and raw_path != "*":
                    handler = server.router.fallback
                elif method == "OPTIONS" and raw_path == "*":
                    response = Response(204, [("Allow", ", ".join(sorted(_KNOWN_METHODS)))])
                else:
                    response = Response.error(404, f"no route for {path}")
            else:
                entry = match.entry
                path_params = match.path_params
                if entry.websocket is not None and method == "GET":
                    if wants_upgrade and "websocket" in upgrade_tokens:
                        return await self._serve_websocket(
                            make_request, path_params, entry.websocket, started
                        )
                    response = Response.error(
                        426,
                        "this endpoint only speaks WebSocket",
                        headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                    )
                elif entry.upgrades and any(r.method == method for r in entry.upgrades.values()):
                    route = next(
                        (
                            entry.upgrades[token]
                            for token in upgrade_tokens
                            if token in entry.upgrades and entry.upgrades[token].method == method
                        ),
                        None,
                    )
                    if wants_upgrade and route is not None:
                        return await self._serve_upgrade(make_request, path_params, route, started)
                    protocols = ", ".join(
                        r.protocol for r in entry.upgrades.values() if r.method == method
                    )
                    response = Response.error(
                        426,
                        f"this endpoint needs Upgrade: {protocols}",
                        headers=[("Upgrade", protocols), ("Connection", "Upgrade")],
                    )
                else:
                    handler = entry.handlers.get(method)
                    if handler is None and method == "HEAD":
                        handler = entry.handlers.get("GET")
                    if handler is None:
                        allow = ", ".join(entry.allowed_methods())
                        if method == "OPTIONS":
                            response = Response(204, [("Allow", allow)])
                        else:
                            response = Response.error(
                                405,
                                f"method {method} not allowed for {path}",
                                headers=[("Allow", allow)],
                            )

        body = await self._read_body()
        if body is None:
            self._access_log(request_id, method, path, self._error_status, 0, started)
            return False
        if response is None:
            assert handler is not None
            response = await self._call_handler(handler, make_request(body, path_params))
        sent = await self._write_response(method, response, request_id=request_id)
        self._access_log(request_id, method, path, response.status, sent, started)
        return True

    async def _call_handler(self, handler: Handler, request: Request) -> Response:
        try:
            response = await handler(request)
        except HttpError as exc:
            return exc.to_response()
        except Exception:
            log.exception("http.handler_failed", request_id=request.request_id, path=request.path)
            return self._internal_error(request.request_id)
        if not isinstance(response, Response):
            log.error(
                "http.handler_bad_return",
                request_id=request.request_id,
                path=request.path,
                type=type(response).__name__,
            )
            return self._internal_error(request.request_id)
        return response

    @staticmethod
    def _internal_error(request_id: str) -> Response:
        return Response.error(500, f"internal server error (request id {request_id})")

    def _access_log(
        self, request_id: str, method: str, path: str, status: int, sent: int, started: float
    ) -> None:
        # The path only: query strings may carry tokens.
        log.info(
            "http.request",
            request_id=request_id,
            method=method,
            path=path,
            status=status,
            bytes=sent,
            duration_ms=round((trio.current_time() - started) * 1000, 3),
            peer=str(self.peer),
        )

    def _response_head(
        self, response: Response, streamed: bool, body_length: int, close: bool
    ) -> h11.Response:
        headers = [
            (name, value)
            for name, value in _encode_headers(response.headers)
            if name.lower() not in _FRAMING_HEADERS
        ]
        names = {name.lower() for name, _ in headers}
        if b"date" not in names:
            headers.append((b"Date", _http_date().encode()))
        if self.server.server_header and b"server" not in names:
            headers.append((b"Server", self.server.server_header.encode("latin-1")))
        no_body = response.status in (204, 304) or 100 <= response.status < 200
        if not streamed and not no_body:
            headers.append((b"Content-Length", str(body_length).encode()))
        if close:
            headers.append((b"Connection", b"close"))
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        return h11.Response(status_code=response.status, headers=headers, reason=reason)

    async def _write_response(
        self, method: str, response: Response, *, request_id: str = ""
    ) -> int:
        """Send ``response``; returns the body bytes written. Raises _Abort on failure."""
        body = response.body
        close = self.server.shutting_down
        try:
            length = len(body) if isinstance(body, bytes | bytearray) else None
            head = self._response_head(response, length is None, length or 0, close)
        except (h11.LocalProtocolError, UnicodeEncodeError, ValueError) as exc:
            # A handler bug (e.g. a newline in a header value): answer 500 instead.
            log.error("http.bad_response", request_id=request_id, error=str(exc))
            await _close_body(body)
            response = self._internal_error(request_id)
            body = response.body
            head = self._response_head(response, False, len(response.body), close)  # type: ignore[arg-type]
        await self._send(head)
        skip_body = method == "HEAD" or response.status in (204, 304)
        if isinstance(body, bytes | bytearray):
            if body and not skip_body:
                await self._send(h11.Data(data=bytes(body)))
            await self._send(h11.EndOfMessage())
            return 0 if skip_body else len(body)
        if skip_body:
            await _close_body(body)
            await self._send(h11.EndOfMessage())
            return 0
        return await self._stream_body(body, request_id)

    async def _stream_body(self, chunks: AsyncIterator[bytes], request_id: str) -> int:
        sent = 0
        disconnected = False

        async def watch_for_disconnect(scope: trio.CancelScope) -> None:
            # The request is complete, so anything the client sends now is the next
            # pipelined request (kept in h11's buffer, bounded) or EOF: the client
            # went away and the producer should stop (e.g. an SSE subscription).
            nonlocal disconnected
            buffered = 0
            while True:
                try:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    disconnected = True
                    scope.cancel()
                    return
                self.h11.receive_data(bytes(data))
                buffered += len(data)
                if buffered > self.limits.max_request_head_bytes:
                    await trio.sleep_forever()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_for_disconnect, nursery.cancel_scope)
                try:
                    async for chunk in chunks:
                        if chunk:
                            await self._send(h11.Data(data=chunk))
                            sent += len(chunk)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_SECONDS):
                        await _close_body(chunks)
                nursery.cancel_scope.cancel()
        except (_Abort, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("http.stream_failed", request_id=request_id)
            raise _Abort("response stream failed") from None
        if disconnected:
            raise _Abort("client went away during a streamed response")
        await self._send(h11.EndOfMessage())
        return sent

    # --- upgrades ----------------------------------------------------------------

    async def _finish_upgrade_request(self) -> bytes | None:
        """After the body: h11 pauses at the proposed switch; the bytes after the head."""
        event = self.h11.next_event()
        if event is not h11.PAUSED:
            return None
        return self.h11.trailing_data[0]

    async def _refuse(self, method: str, response: Response, request_id: str) -> bool:
        await self._write_response(method, response, request_id=request_id)
        return True

    async def _serve_websocket(
        self,
        make_request: Callable[[bytes, dict[str, str]], Request],
        path_params: dict[str, str],
        route: WebSocketRoute,
        started: float,
    ) -> bool:
        body = await self._read_body()
        if body is None:
            return False
        request = make_request(body, path_params)
        refusal = self._check_websocket_handshake(request)
        offered = _offered_subprotocols(request.headers)
        chosen = next((name for name in route.subprotocols if name in offered), None)
        if refusal is None and chosen is None and route.require_subprotocol:
            refusal = Response.error(
                400,
                "websocket subprotocol required: one of " + ", ".join(route.subprotocols),
                code="subprotocol_required",
            )
        if refusal is None and route.authorize is not None:
            refusal = await self._authorize(route.authorize, request)
        if refusal is not None:
            await self._refuse(request.method, refusal, request.request_id)
            self._access_log(
                request.request_id, request.method, request.path, refusal.status, 0, started
            )
            return True
        trailing = await self._finish_upgrade_request()
        if trailing is None:
            return False
        # Replay the head h11 consumed so wsproto parses the same request (DESIGN.md).
        head = b"".join(
            [
                b"GET " + request.target.encode("latin-1") + b" HTTP/1.1\r\n",
                *(
                    name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
                    for name, value in request.headers
                ),
                b"\r\n",
            ]
        )
        self._access_log(request.request_id, request.method, request.path, 101, 0, started)
        stream = replay_stream(self.stream, head + trailing)
        async with trio.open_nursery() as nursery:
            ws_request: trio_websocket.WebSocketRequest | None = None
            with trio.move_on_after(self.limits.head_timeout):
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, stream, max_message_size=route.max_message_size
                )
            if ws_request is None:
                nursery.cancel_scope.cancel()
                return False
            websocket = await ws_request.accept(subprotocol=chosen)
            self.server._websockets.add(websocket)
            try:
                await route.handler(request, websocket)
            except trio_websocket.ConnectionClosed:
                pass
            except Exception:
                log.exception("http.websocket_handler_failed", request_id=request.request_id)
                with trio.move_on_after(_WEBSOCKET_CLOSE_SECONDS):
                    await websocket.aclose(1011, "internal error")
            finally:
                self.server._websockets.discard(websocket)
                with trio.CancelScope(shield=True), trio.move_on_after(_WEBSOCKET_CLOSE_SECONDS):
                    await websocket.aclose()
                nursery.cancel_scope.cancel()
        return False

    @staticmethod
    def _check_websocket_handshake(request: Request) -> Response | None:
        """RFC 6455 §4.2.1 checks, done here so wsproto never rejects what we handed it."""
        headers = request.headers
        if request.http_version != "1.1":
            return Response.error(400, "websocket needs HTTP/1.1")
        if (headers.get("upgrade") or "").strip().lower() != "websocket":
            return Response.error(400, "missing header 'Upgrade: websocket'")
        if headers.get("sec-websocket-version") != "13":
            return Response.error(
                426 if "sec-websocket-version" in headers else 400,
                "websocket version 13 required",
                headers=[("Sec-WebSocket-Version", "13")],
            )
        keys = headers.get_all("sec-websocket-key")
        if len(keys) != 1 or not keys[0].strip():
            return Response.error(400, "missing header 'Sec-WebSocket-Key'")
        hosts = headers.get_all("host")
        try:
            for host in hosts:
                host.encode("latin-1").decode("idna")
        except UnicodeError:
            return Response.error(400, "malformed Host header")
        if len(hosts) != 1:
            return Response.error(400, "exactly one Host header required")
        return None

    @staticmethod
    async def _authorize(
        authorize: Callable[[Request], object], request: Request
    ) -> Response | None:
        try:
            result = await authorize(request)  # type: ignore[misc]
        except HttpError as exc:
            return exc.to_response()
        except Exception:
            log.exception("http.authorize_failed", request_id=request.request_id)
            return _Connection._internal_error(request.request_id)
        return result if isinstance(result, Response) else None

    async def _serve_upgrade(
        self,
        make_request: Callable[[bytes, dict[str, str]], Request],
        path_params: dict[str, str],
        route: UpgradeRoute,
        started: float,
    ) -> bool:
        body = await self._read_body()
        if body is None:
            return False
        request = make_request(body, path_params)
        if route.authorize is not None:
            refusal = await self._authorize(route.authorize, request)
            if refusal is not None:
                await self._refuse(request.method, refusal, request.request_id)
                self._access_log(
                    request.request_id, request.method, request.path, refusal.status, 0, started
                )
                return True
        trailing = await self._finish_upgrade_request()
        if trailing is None:
            return False
        headers = [(b"Connection", b"Upgrade"), (b"Upgrade", route.protocol.encode("latin-1"))]
        headers.append((b"Date", _http_date().encode()))
        if self.server.server_header:
            headers.append((b"Server", self.server.server_header.encode("latin-1")))
        # RFC 9110 §15.2.2: after 101 the connection speaks the new protocol.
        await self._send(h11.InformationalResponse(status_code=101, headers=headers))
        self._access_log(request.request_id, request.method, request.path, 101, 0, started)
        stream = replay_stream(self.stream, trailing)
        try:
            await route.handler(request, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("http.upgrade_handler_failed", request_id=request.request_id)
        return False


async def _close_body(body: object) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("http.stream_close_failed")
