"""Taking a connection over after its request: WebSocket (RFC 6455) and raw upgrades.

Both run once the request body is read and the route's ``authorize`` agreed. A
WebSocket gets the request head h11 already consumed replayed into trio-websocket
(so wsproto parses the very same request and answers the handshake); a raw upgrade
gets ``101 Switching Protocols`` and the byte stream. Either way the connection ends
with the handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import h11
import trio
import trio_websocket

from tunneld.http._messages import HttpError, Request, Response
from tunneld.http._router import Authorizer, UpgradeRoute, WebSocketRoute
from tunneld.http._streams import replay_stream
from tunneld.http._util import http_date, internal_error, is_disconnect
from tunneld.log import get_logger

if TYPE_CHECKING:
    from tunneld.http._connection import Connection

__all__ = ["check_websocket_handshake", "serve_upgrade", "serve_websocket"]

log = get_logger(__name__)

WEBSOCKET_CLOSE_SECONDS: Final = 5.0


def check_websocket_handshake(request: Request) -> Response | None:
    """The 4xx for a request that is not a valid RFC 6455 §4.2.1 opening handshake.

    Checked here, before handing over, so wsproto never meets a request it would
    refuse on its own (it would close the stream without our JSON error).
    """
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
    if len(hosts) != 1:
        return Response.error(400, "exactly one Host header required")
    try:
        # wsproto decodes Host as IDNA and would crash its reader on a bad one.
        hosts[0].encode("latin-1").decode("idna")
    except UnicodeError:
        return Response.error(400, "malformed Host header")
    return None


def offered_subprotocols(request: Request) -> list[str]:
    """Subprotocols the client offers, in its order (names are case-sensitive, §4.1)."""
    offered: list[str] = []
    for value in request.headers.get_all("sec-websocket-protocol"):
        offered.extend(token.strip() for token in value.split(",") if token.strip())
    return offered


async def _authorize(authorize: Authorizer, request: Request) -> Response | None:
    try:
        result = await authorize(request)
    except HttpError as exc:
        return exc.to_response()
    except Exception:
        log.exception("http.authorize_failed", request_id=request.request_id)
        return internal_error(request.request_id)
    return result if isinstance(result, Response) else None


def _replayed_head(request: Request) -> bytes:
    lines = [f"GET {request.target} HTTP/1.1\r\n".encode("latin-1")]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in request.headers)
    lines.append(b"\r\n")
    return b"".join(lines)


async def serve_websocket(
    connection: Connection, request: Request, route: WebSocketRoute, started: float
) -> bool:
    """Handshake checks, ``authorize``, then the WebSocket handler on this connection.

    Returns True if the request was refused with a response (the connection may go
    on), False when the WebSocket ran (the connection is finished).
    """
    refusal = check_websocket_handshake(request)
    offered = offered_subprotocols(request)
    chosen = next((name for name in route.subprotocols if name in offered), None)
    if refusal is None and chosen is None and route.require_subprotocol:
        refusal = Response.error(
            400,
            "websocket subprotocol required: one of " + ", ".join(route.subprotocols),
            code="subprotocol_required",
        )
    if refusal is None and route.authorize is not None:
        refusal = await _authorize(route.authorize, request)
    if refusal is not None:
        await connection.respond(request, refusal, started)
        return True
    trailing = connection.finish_upgrade_request()
    if trailing is None:
        return False
    connection.access_log(request.request_id, request.method, request.path, 101, 0, started)
    # Replay the head h11 consumed, then whatever followed it (DESIGN.md, roles).
    stream = replay_stream(connection.stream, _replayed_head(request) + trailing)
    server = connection.server
    async with trio.open_nursery() as nursery:
        ws_request: trio_websocket.WebSocketRequest | None = None
        with trio.move_on_after(connection.limits.head_timeout):
            ws_request = await trio_websocket.wrap_server_stream(
                nursery,
                stream,
                max_message_size=route.max_message_size,
                # trio's 64 KiB reads, not the library's 4 KiB: every read is a
                # parser pass and an unmasking call, and a relay receives 48-64 KiB
                # packets (12 reads each at 4 KiB, most of the relay's CPU).
                receive_buffer_size=None,
            )
        if ws_request is None:
            nursery.cancel_scope.cancel()
            return False
        websocket = await ws_request.accept(subprotocol=chosen)
        server.websocket_opened(websocket)
        try:
            await route.handler(request, websocket)
        except Exception as exc:
            if not is_disconnect(exc):
                log.exception("http.websocket_handler_failed", request_id=request.request_id)
                with trio.move_on_after(WEBSOCKET_CLOSE_SECONDS):
                    await websocket.aclose(1011, "internal error")
        finally:
            server.websocket_closed(websocket)
            with trio.CancelScope(shield=True), trio.move_on_after(WEBSOCKET_CLOSE_SECONDS):
                await websocket.aclose()
            nursery.cancel_scope.cancel()
            reason = websocket.closed
            log.info(
                "http.websocket_closed",
                request_id=request.request_id,
                path=request.path,
                code=reason.code if reason is not None else None,
                duration_ms=round((trio.current_time() - started) * 1000, 3),
            )
    return False


def _switching_fields(protocol: str, server_header: str | None) -> list[tuple[str, str]]:
    """The fields of the ``101 Switching Protocols`` for a raw upgrade to ``protocol``,
    in the order written (both paths send these, so they answer alike)."""
    fields = [("Connection", "Upgrade"), ("Upgrade", protocol), ("Date", http_date())]
    if server_header:
        fields.append(("Server", server_header))
    return fields


def _switching_head(protocol: str, server_header: str | None) -> bytes:
    """The ``101 Switching Protocols`` head h11 writes for a raw upgrade to ``protocol``."""
    lines = "".join(
        [f"{name}: {value}\r\n" for name, value in _switching_fields(protocol, server_header)]
    )
    return f"HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n".encode("latin-1")


async def serve_upgrade(
    connection: Connection,
    request: Request,
    route: UpgradeRoute,
    started: float,
    first_read: bytes | None = None,
    head_end: int = 0,
) -> bool:
    """``authorize``, then 101 and the raw-stream handler on this connection.

    ``first_read`` is set when the connection's fast path took the request (h11 has
    not seen it): the connection's first read, whose first ``head_end`` bytes are the
    request head. Returns True if refused with a response, False once the handler ran.
    """
    if route.authorize is not None:
        refusal = await _authorize(route.authorize, request)
        if refusal is not None:
            # h11 writes the refusal and keeps the connection going (keep-alive, any
            # pipelined request), so it reads the request first, as it would have.
            if first_read is not None and not connection.take_over_head(first_read):
                return False
            await connection.respond(request, refusal, started)
            return True
    server_header = connection.server.server_header
    # RFC 9110 §15.2.2: after the 101 the connection speaks the new protocol.
    switching: h11.InformationalResponse | bytes
    if first_read is not None:
        trailing: bytes | None = first_read[head_end:]
        # h11 never saw the request, so the head is written as h11 would write it
        # (a test compares the bytes): the protocol is a token (the router checks)
        # and the Server value was checked before the fast path was taken.
        switching = _switching_head(route.protocol, server_header)
    else:
        trailing = connection.finish_upgrade_request()
        if trailing is None:
            return False
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in _switching_fields(route.protocol, server_header)
        ]
        switching = h11.InformationalResponse(
            status_code=101, headers=headers, reason=b"Switching Protocols"
        )
    await connection.send(switching)
    connection.access_log(request.request_id, request.method, request.path, 101, 0, started)
    # Nothing read ahead (the usual case): hand over the transport itself, one
    # wrapper less on every read and write of the upgraded stream.
    stream = replay_stream(connection.stream, trailing) if trailing else connection.stream
    try:
        await route.handler(request, stream)
    except Exception as exc:
        if not is_disconnect(exc):
            log.exception("http.upgrade_handler_failed", request_id=request.request_id)
    return False
