"""One HTTP/1.1 connection: an ``h11.Connection`` driven over a trio stream.

The request loop: read a head under a deadline, route it, read the (bounded) body,
call the handler, write the response, repeat while keep-alive holds (h11 keeps
pipelined requests in order). Errors the client caused become 4xx responses and a
close; errors of ours become a logged 500 and the loop goes on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from tunneld._address import format_address
from tunneld._http_grammar import TOKEN
from tunneld.http._headers import Headers
from tunneld.http._limits import HttpLimits
from tunneld.http._messages import Handler, HttpError, LastChunk, Request, Response
from tunneld.http._router import Dispatch, Router, dispatch
from tunneld.http._simple_head import parse_simple_head
from tunneld.http._unix import PeerCredentials
from tunneld.http._upgrade import serve_upgrade, serve_websocket
from tunneld.http._util import Abort, close_body, http_date, internal_error
from tunneld.log import get_logger

if TYPE_CHECKING:
    from tunneld.http._server import HttpServer

__all__ = ["RECEIVE_SIZE", "Connection", "legal_field_value"]

log = get_logger(__name__)
_access_logger = logging.getLogger(__name__)  # the stdlib logger behind ``log``

RECEIVE_SIZE: Final = 64 * 1024
# After an error response the connection is half-closed and drained for a moment, so
# the client reads the response instead of a TCP reset (RFC 9112 §9.6, tear-down).
_LINGER_BYTES: Final = 256 * 1024
_LINGER_SECONDS: Final = 1.0
_CLOSE_SECONDS: Final = 1.0
_MAX_QUERY_FIELDS: Final = 1000
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
# RFC 9110 §5.1 field-name (a TOKEN) and §5.5 field-value (no CR, LF or NUL, inner
# spaces and tabs only), exactly as h11 checks them (its field_vchar is "not NUL, not
# ASCII whitespace"), within latin-1: a handler's header cannot inject fields or
# split the response.
_VCHAR: Final = r"[\x01-\x08\x0e-\x1f\x21-\xff]"
_FIELD_VALUE: Final = re.compile(rf"(?:{_VCHAR}+(?:[ \t]+{_VCHAR}+)*)?")


def legal_field_value(value: str) -> bool:
    """Whether ``value`` may be written as a field value (as h11 would allow it)."""
    return _FIELD_VALUE.fullmatch(value) is not None


def _header_lines(headers: Sequence[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
    """A handler's header fields as ``name: value`` lines, and its ``Connection`` fields.

    Framing fields (``Content-Length``, ``Transfer-Encoding``) are dropped: the server
    frames the body. ``Connection`` is returned apart, for h11 (keep-alive is its job).

    Raises:
        ValueError: an illegal name or value (the name is quoted, never the value,
            which may be a credential).
    """
    lines: list[str] = []
    connection: list[tuple[str, str]] = []
    for name, value in headers:
        if not TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"illegal response header field {name[:64]!r}")
        lowered = name.lower()
        if lowered in _FRAMING_HEADERS:
            continue
        if lowered == "connection":
            connection.append((name, value))
        else:
            lines.append(f"{name}: {value}\r\n")
    # latin-1 is HTTP's historical field encoding (RFC 9110 §5.5); the patterns above
    # admit nothing beyond it.
    return "".join(lines).encode("latin-1"), connection


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


@dataclass(frozen=True, slots=True)
class _Head:
    """A request head that passed the server's checks, with its routing decision."""

    target: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    route: Dispatch


@dataclass(frozen=True, slots=True)
class _BadHead:
    """The error to answer a request head with (``path`` is what the access log shows)."""

    status: int
    message: str
    path: str


def _check_head(
    router: Router,
    limits: HttpLimits,
    method: bytes,
    target: bytes,
    raw_headers: Sequence[tuple[bytes, bytes]],
) -> _Head | _BadHead:
    """Check and route one request head (whoever parsed it); no I/O, no side effects."""
    headers = Headers(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers
    )
    head_size = len(method) + len(target)
    head_size += sum(len(name) + len(value) + 4 for name, value in raw_headers)
    # h11 bounds a head that arrives in pieces; one delivered whole is checked here.
    if len(headers) > limits.max_headers or head_size > limits.max_request_head_bytes:
        return _BadHead(431, "request header fields too large", "-")
    if "transfer-encoding" in headers and "content-length" in headers:
        # RFC 9112 §6.3: both framings at once "ought to be handled as an error"; it
        # is the classic request-smuggling shape, so refuse and close.
        return _BadHead(400, "both Transfer-Encoding and Content-Length in one request", "-")
    decoded_target = target.decode("latin-1")
    parsed = _parse_target(decoded_target)
    if parsed is None:
        return _BadHead(400, "malformed request target", "-")
    raw_path, raw_query = parsed
    path = unquote(raw_path, errors="replace")
    try:
        query = (
            parse_qs(raw_query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
            if raw_query
            else {}
        )
    except ValueError:
        return _BadHead(400, "too many query parameters", path)
    route = dispatch(
        router,
        method.decode("ascii", "replace"),
        raw_path,
        headers.get_tokens("connection"),
        headers.get_tokens("upgrade"),
    )
    return _Head(decoded_target, path, query, headers, route)


@dataclass(frozen=True, slots=True)
class _SimpleUpgrade:
    """A raw-upgrade request taken by the fast path: its head and the connection's
    first read (the head and whatever the client sent after it)."""

    head: _Head
    method: str
    first_read: bytes
    head_end: int


class Connection:
    """One client connection of an :class:`HttpServer`."""

    def __init__(
        self,
        server: HttpServer,
        stream: trio.abc.Stream,
        peer: object,
        credentials: PeerCredentials | None,
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
        """On shutdown: stop waiting for a next request that has not begun to arrive."""
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    # --- I/O helpers -------------------------------------------------------------

    async def _receive(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.h11.receive_data(bytes(data))

    async def send(self, *events: h11.Event | bytes) -> None:
        """Serialize ``events`` with h11 and write them in one go; Abort after
        ``write_timeout``. (One write per response keeps small responses to a syscall.)
        ``bytes`` are already serialized (a response head) and go out as they are."""
        data = b"".join(
            event if isinstance(event, bytes) else self.h11.send(event) or b"" for event in events
        )
        if data:
            with trio.move_on_after(self.limits.write_timeout) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                log.info("http.write_timeout", peer=format_address(self.peer))
                raise Abort("write timeout")

    async def _linger_close(self) -> None:
        try:
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            drained = 0
            with trio.move_on_after(_LINGER_SECONDS):
                while drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
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
                await self.write_response("GET", response)
            except h11.LocalProtocolError:
                pass
        await self._linger_close()

    # --- request loop ------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the client, a limit, an upgrade or shutdown ends it.

        Raises Abort / trio.BrokenResourceError when the peer goes away mid-exchange;
        the caller closes the stream either way.
        """
        first = True
        while True:
            event = await self._read_head(first)
            if event is None:
                return
            if isinstance(event, _SimpleUpgrade):
                if not await self._handle_simple_upgrade(event):
                    return
            else:
                keep_alive = await self._handle(event)
                if not keep_alive:
                    return
            first = False
            if self.server.shutting_down:
                return
            if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                self.h11.start_next_cycle()
            else:
                return

    async def _read_head(self, first: bool) -> h11.Request | _SimpleUpgrade | None:
        """The next request head, or None when the connection should just end.

        The first request must arrive whole within ``head_timeout``; later ones may
        idle ``keepalive_timeout`` before their first byte, then get ``head_timeout``.
        A connection's first read is offered to the raw-upgrade fast path first
        (:meth:`_simple_upgrade`); whatever it does not take goes to h11.
        """
        now = trio.current_time()
        idle_deadline = now + (self.limits.head_timeout if first else self.limits.keepalive_timeout)
        head_deadline: float | None = now + self.limits.head_timeout if first else None
        first_read = first
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error_and_close(exc.error_status_hint, f"malformed request: {exc}")
                return None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed: the client is done
            pending = bool(self.h11.trailing_data[0])
            if pending and head_deadline is None:
                head_deadline = trio.current_time() + self.limits.head_timeout
            if not pending and self.server.shutting_down:
                return None
            deadline = head_deadline if head_deadline is not None else idle_deadline
            with trio.CancelScope(deadline=deadline) as scope:
                self._idle_scope = None if pending else scope
                data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            self._idle_scope = None
            if scope.cancelled_caught:
                if self.h11.trailing_data[0]:
                    log.info("http.head_timeout", peer=format_address(self.peer))
                    await self._send_error_and_close(408, "request head not received in time")
                return None
            if first_read:
                first_read = False
                simple = self._simple_upgrade(data)
                if simple is not None:
                    return simple
            self.h11.receive_data(data)

    def _simple_upgrade(self, data: bytes) -> _SimpleUpgrade | None:
        """The fast path's take on a connection's first read: a plain, whole raw-upgrade
        request (``tunneld dial``), checked and routed exactly as :meth:`_handle` would;
        None for anything else, which h11 then parses as usual."""
        server = self.server
        prefixes = server.router.upgrade_prefixes()
        if not prefixes or not data.startswith(prefixes):
            return None
        if not server.server_header_legal:
            return None  # h11 would refuse to write it in the 101: let that path fail
        simple = parse_simple_head(data, self.limits.max_request_head_bytes)
        if simple is None:
            return None
        head = _check_head(server.router, self.limits, simple.method, simple.target, simple.headers)
        if isinstance(head, _BadHead) or head.route.upgrade is None:
            return None
        return _SimpleUpgrade(head, simple.method.decode("ascii"), data, simple.end)

    async def _handle_simple_upgrade(self, simple: _SimpleUpgrade) -> bool:
        """Serve a request the fast path took, as :meth:`_handle` would have.

        True if the connection may carry another (the upgrade was refused).
        """
        started = trio.current_time()
        head = simple.head
        request = Request(
            method=simple.method,
            target=head.target,
            path=head.path,
            query=head.query,
            headers=head.headers,
            body=b"",
            peer=self.peer,
            tls=self.tls,
            path_params=head.route.path_params,
            peer_credentials=self.credentials,
            request_id=self.server.new_request_id(),
            http_version="1.1",
        )
        assert head.route.upgrade is not None
        return await serve_upgrade(
            self, request, head.route.upgrade, started, simple.first_read, simple.head_end
        )

    def take_over_head(self, first_read: bytes) -> bool:
        """Give h11 a request the fast path took, so the connection can answer it and
        go on as if h11 had read it (its body is empty). False if h11 did not agree
        (never expected: the fast path takes only what h11 parses the same way)."""
        self.h11.receive_data(first_read)
        try:
            events = (self.h11.next_event(), self.h11.next_event())
        except h11.RemoteProtocolError as exc:
            log.error("http.simple_head_refused", error=str(exc))
            return False
        if not (isinstance(events[0], h11.Request) and isinstance(events[1], h11.EndOfMessage)):
            log.error("http.simple_head_refused", error=f"h11 read {events!r}")
            return False
        return True

    async def _read_body(self, limit: int) -> bytes | None:
        """The whole request body; None if an error response was sent instead.

        Raises Abort when the client disconnects mid-body.
        """
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
                    await self.send(h11.InformationalResponse(status_code=100, headers=[]))
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
                raise Abort("connection closed during the request body")

    async def _handle(self, event: h11.Request) -> bool:
        """Serve one request; True if the connection may carry another."""
        started = trio.current_time()
        request_id = self.server.new_request_id()
        method = event.method.decode("ascii", "replace")
        head = _check_head(
            self.server.router, self.limits, event.method, event.target, event.headers.raw_items()
        )
        if isinstance(head, _BadHead):
            await self._send_error_and_close(head.status, head.message)
            self.access_log(request_id, method, head.path, head.status, 0, started)
            return False
        declared = head.headers.get("content-length")
        self._declared_length = int(declared) if declared and declared.isdigit() else None
        self._error_status = 0
        route = head.route
        limit = route.max_body_bytes
        body = await self._read_body(self.limits.max_body_bytes if limit is None else limit)
        if body is None:
            self.access_log(request_id, method, head.path, self._error_status, 0, started)
            return False
        request = Request(
            method=method,
            target=head.target,
            path=head.path,
            query=head.query,
            headers=head.headers,
            body=body,
            peer=self.peer,
            tls=self.tls,
            path_params=route.path_params,
            peer_credentials=self.credentials,
            request_id=request_id,
            http_version=event.http_version.decode("ascii", "replace"),
        )
        if route.websocket is not None:
            return await serve_websocket(self, request, route.websocket, started)
        if route.upgrade is not None:
            return await serve_upgrade(self, request, route.upgrade, started)
        response = route.response
        if response is None:
            assert route.handler is not None
            response = await self._call_handler(route.handler, request)
        await self.respond(request, response, started)
        return True

    async def respond(self, request: Request, response: Response, started: float) -> None:
        """Write ``response`` to ``request`` and log the access line (also when aborted)."""
        try:
            sent = await self.write_response(
                request.method, response, request_id=request.request_id
            )
        except BaseException:
            self.access_log(
                request.request_id, request.method, request.path, response.status, -1, started,
                aborted=True,
            )  # fmt: skip
            raise
        self.access_log(
            request.request_id, request.method, request.path, response.status, sent, started
        )

    async def _call_handler(self, handler: Handler, request: Request) -> Response:
        try:
            response = await handler(request)
        except HttpError as exc:
            return exc.to_response()
        except Exception:
            log.exception("http.handler_failed", request_id=request.request_id, path=request.path)
            return internal_error(request.request_id)
        if not isinstance(response, Response) or not (
            isinstance(response.body, bytes | bytearray) or hasattr(response.body, "__aiter__")
        ):
            log.error(
                "http.handler_bad_return",
                request_id=request.request_id,
                path=request.path,
                type=type(getattr(response, "body", response)).__name__,
            )
            return internal_error(request.request_id)
        return response

    def access_log(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        sent: int,
        started: float,
        *,
        aborted: bool = False,
    ) -> None:
        """One structured line per request; the path only, as queries may carry tokens."""
        if not _access_logger.isEnabledFor(logging.INFO):
            return  # skip formatting the peer and duration for a line nobody keeps
        log.info(
            "http.request",
            request_id=request_id,
            method=method,
            path=path,
            status=status,
            bytes=sent,
            duration_ms=round((trio.current_time() - started) * 1000, 3),
            peer=format_address(self.peer),
            aborted=aborted,
        )

    # --- responses ---------------------------------------------------------------

    def _response_head(
        self, response: Response, streamed: bool, body_length: int, close: bool
    ) -> bytes:
        """The serialized head of ``response`` (h11's state moves to sending the body).

        h11 gets only the fields it acts on (framing, ``Connection``) and writes the
        status line and those; the handler's other fields are checked and written by
        us. h11 would re-validate every field three or four times per response (its
        header clean-up rebuilds the list per framing field), a good share of the
        server's time per small request.

        Raises:
            ValueError, UnicodeEncodeError: an illegal header field (h11 not touched).
        """
        lines, fields = _header_lines(response.headers)
        names = {name.lower() for name, _ in response.headers}
        if "date" not in names:
            lines += b"Date: " + http_date().encode() + b"\r\n"
        server = self.server.server_header
        if server and "server" not in names:
            if not self.server.server_header_legal:
                raise ValueError("illegal Server header value")
            lines += b"Server: " + server.encode("latin-1") + b"\r\n"
        # RFC 9110 §8.6: no Content-Length on 1xx/204; 304 would describe another body.
        no_body = response.status in (204, 304) or 100 <= response.status < 200
        if not streamed and not no_body:
            fields.append(("Content-Length", str(body_length)))
        if close:
            fields.append(("Connection", "close"))
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        data = self.h11.send(
            h11.Response(status_code=response.status, headers=fields, reason=reason)
        )
        # h11 ends a head with the blank line; our fields go just before it.
        assert data is not None
        assert data.endswith(b"\r\n\r\n")
        return data[:-2] + lines + b"\r\n"

    async def write_response(self, method: str, response: Response, *, request_id: str = "") -> int:
        """Send ``response`` (no body for HEAD/204/304); returns body bytes written.

        Raises Abort or trio.BrokenResourceError when the client is gone or too slow.
        """
        body = response.body
        close = self.server.shutting_down
        try:
            length = len(body) if isinstance(body, bytes | bytearray) else None
            head = self._response_head(response, length is None, length or 0, close)
        except (h11.LocalProtocolError, UnicodeEncodeError, ValueError) as exc:
            # A handler bug (e.g. a line break in a header value): answer 500 instead.
            log.error("http.bad_response", request_id=request_id, error=str(exc))
            await close_body(body)
            response = internal_error(request_id)
            body = response.body
            assert isinstance(body, bytes)
            head = self._response_head(response, False, len(body), close)
        skip_body = method == "HEAD" or response.status in (204, 304)
        if isinstance(body, bytes | bytearray):
            if body and not skip_body:
                await self.send(head, h11.Data(data=bytes(body)), h11.EndOfMessage())
                return len(body)
            await self.send(head, h11.EndOfMessage())
            return 0
        if skip_body:
            await self.send(head)
            await close_body(body)
            await self.send(h11.EndOfMessage())
            return 0
        # The head and the bytes known up front share a write: fewer syscalls, and the
        # client wakes once, not twice.
        if response.first:
            await self.send(head, h11.Data(data=response.first))
        else:
            await self.send(head)
        return await self._stream_body(
            body, request_id, len(response.first), response.watch_disconnect
        )

    async def _stream_body(
        self, chunks: AsyncIterator[bytes], request_id: str, sent: int, watch: bool
    ) -> int:
        disconnected = False
        failure: BaseException | None = None
        last = b""

        async def watch_for_disconnect(scope: trio.CancelScope) -> None:
            # The request is complete, so anything the client sends now is the next
            # pipelined request (kept in h11's buffer, bounded) or EOF: the client
            # went away and the producer should stop (e.g. an SSE subscription).
            nonlocal disconnected
            buffered = 0
            while True:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
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

        async def pump() -> None:
            nonlocal sent, last, failure
            try:
                async for chunk in chunks:
                    if isinstance(chunk, LastChunk):
                        last = bytes(chunk)  # written with the end of the body, below
                        break
                    if chunk:
                        await self.send(h11.Data(data=chunk))
                        sent += len(chunk)
            except (Abort, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure = exc
            except Exception:
                log.exception("http.stream_failed", request_id=request_id)
                failure = Abort("response stream failed")
            finally:
                # One scope, shielded and with its own deadline (cheaper than two).
                with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_SECONDS):
                    await close_body(chunks)

        if watch:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_for_disconnect, nursery.cancel_scope)
                await pump()
                nursery.cancel_scope.cancel()
        else:
            # No watcher task (a good share of a small response's cost): a client that
            # went away is noticed at the next write instead.
            await pump()
        if failure is not None:
            raise failure
        if disconnected:
            raise Abort("client went away during a streamed response")
        if last:
            await self.send(h11.Data(data=last), h11.EndOfMessage())
            return sent + len(last)
        await self.send(h11.EndOfMessage())
        return sent

    def finish_upgrade_request(self) -> bytes | None:
        """After an upgrade request's body: the bytes the client sent after it.

        h11 pauses at a proposed protocol switch (RFC 9110 §7.8); None if it did not.
        """
        if self.h11.next_event() is not h11.PAUSED:
            return None
        return self.h11.trailing_data[0]
