"""A minimal HTTP/1.1 client (h11 on trio) for form posts to an authorization server.

One request per connection (``Connection: close``): introspection answers are cached,
so connection reuse would buy little and cost state. Bounded in time and size.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import h11
import trio

__all__ = ["HttpClientError", "HttpReply", "get", "post_form"]

_MAX_REPLY: Final = 1024 * 1024


class HttpClientError(Exception):
    """The request could not be made or its answer read (message says which)."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


async def post_form(
    url: str,
    form: Mapping[str, str],
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> HttpReply:
    """POST ``form`` (``application/x-www-form-urlencoded``) to an http(s) ``url``.

    No timeout of its own: callers bound it (``trio.move_on_after``).

    Raises:
        HttpClientError: bad URL, connection or TLS failure, a malformed or over-1-MiB
            answer. Cancellation closes the connection.
    """
    body = urllib.parse.urlencode(list(form.items())).encode("ascii")
    return await _request(
        "POST",
        url,
        body,
        [("Content-Type", "application/x-www-form-urlencoded"), *headers],
        ssl_context,
    )


async def get(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> HttpReply:
    """GET an http(s) ``url``; same bounds and errors as :func:`post_form`."""
    return await _request("GET", url, None, list(headers), ssl_context)


async def _request(
    method: str,
    url: str,
    body: bytes | None,
    headers: Sequence[tuple[str, str]],
    ssl_context: ssl.SSLContext | None,
) -> HttpReply:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpClientError(f"expected an http(s) URL, got {url[:200]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise HttpClientError(f"bad port in {url[:200]!r}") from None
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rpartition("@")[2]
    framing = [] if body is None else [("Content-Length", str(len(body)))]
    request = h11.Request(
        method=method,
        target=target,
        headers=[
            ("Host", authority),
            *framing,
            ("Accept", "application/json"),
            ("Connection", "close"),
            ("User-Agent", "tunneld"),
            *headers,
        ],
    )
    try:
        return await _exchange(parts.scheme, host, port, request, body, ssl_context)
    except (OSError, ssl.SSLError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        where = f"{method} {parts.scheme}://{authority}{parts.path}"
        raise HttpClientError(f"{where}: {exc}") from None


async def _exchange(
    scheme: str,
    host: str,
    port: int,
    request: h11.Request,
    body: bytes | None,
    ssl_context: ssl.SSLContext | None,
) -> HttpReply:
    stream: trio.abc.Stream
    if scheme == "https":
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl_context or ssl.create_default_context()
        )
    else:
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        outgoing = conn.send(request) or b""
        if body:
            outgoing += conn.send(h11.Data(data=body)) or b""
        await stream.send_all(outgoing + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        reply_headers: list[tuple[str, str]] = []
        received = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                reply_headers = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
                ]
            elif isinstance(event, h11.Data):
                received += event.data
                if len(received) > _MAX_REPLY:
                    raise HttpClientError("answer is larger than 1 MiB")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if status == 0:
            raise HttpClientError("connection closed before an answer")
        return HttpReply(status, reply_headers, bytes(received))
