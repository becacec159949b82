"""A client of the daemon's local API, for the ``tunneld status|agents|dial`` commands."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Final

import h11
import trio

from tunneld.daemon._local_api import DIAL_PROTOCOL
from tunneld.http import DirectSocketStream, HalfCloseableReplayStream

__all__ = ["ApiError", "DaemonUnavailableError", "LocalApiClient"]

_MAX_RESPONSE: Final = 16 * 1024 * 1024


class DaemonUnavailableError(Exception):
    """The daemon's socket cannot be reached; the message says why and what to do."""


class ApiError(Exception):
    """The daemon answered with an error: HTTP ``status``, its stable ``code``, a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message


class LocalApiClient:
    """Talks HTTP/1.1 to the daemon's Unix socket at ``path`` (one connection per call)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def _connect(self) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(os.fspath(self.path))
        except OSError as exc:
            sock.close()
            raise DaemonUnavailableError(self._explain(exc)) from None
        return trio.SocketStream(sock)

    async def _connect_direct(self) -> DirectSocketStream:
        """A connection for a dial: a DirectSocketStream (the dial's bytes are on the
        measured path of ``tunneld bench dial``; see tunneld/http/_socket_stream.py).

        Raises:
            DaemonUnavailableError: the socket cannot be reached.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # A Unix socket connects at once or fails at once; no scheduler round.
            sock.connect(os.fspath(self.path))
        except BlockingIOError:
            # The daemon's listen backlog is full: wait for room the way trio does.
            sock.close()
            return DirectSocketStream.take_over(await self._connect())
        except OSError as exc:
            sock.close()
            raise DaemonUnavailableError(self._explain(exc)) from None
        except BaseException:
            sock.close()
            raise
        await trio.lowlevel.checkpoint_if_cancelled()
        return DirectSocketStream(sock)

    def _explain(self, exc: OSError) -> str:
        where = str(self.path)
        if exc.errno == errno.ENOENT:
            return (
                f"the tunneld daemon is not running (no socket at {where}); start it with"
                " `systemctl start tunneld` or `tunneld run`"
            )
        if exc.errno == errno.ECONNREFUSED:
            return f"the tunneld daemon is not running (nothing answers on {where})"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (
                f"permission denied connecting to {where}: ask an administrator to add you"
                " to the socket's group (default `tunneld`)"
            )
        return f"cannot connect to the tunneld daemon at {where}: {exc.strerror or exc}"

    async def request(self, method: str, target: str) -> object:
        """One request; the decoded JSON answer.

        Raises:
            DaemonUnavailableError: the socket cannot be reached.
            ApiError: the daemon answered with an error status.
        """
        stream = await self._connect()
        async with stream:
            conn = await _send_request(stream, method, target, [("Connection", "close")])
            status, body = await _read_answer(conn, stream)
        return _decode(status, body)

    async def watch(self) -> AsyncGenerator[dict[str, object], None]:
        """The daemon's events (``GET /v0/watch``) as they happen, until it ends them.

        Raises:
            DaemonUnavailableError: the socket cannot be reached.
            ApiError: the daemon refused.
        """
        stream = await self._connect()
        async with stream:
            conn = await _send_request(stream, "GET", "/v0/watch", [("Connection", "close")])
            status = 0
            pending = bytearray()
            while True:
                event = await _next_event(conn, stream)
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    pending += event.data
                    if status >= 400:
                        continue
                    while b"\n" in pending:
                        line, _, rest = bytes(pending).partition(b"\n")
                        pending = bytearray(rest)
                        decoded = json.loads(line)
                        if isinstance(decoded, dict):
                            yield decoded
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            if status >= 400:
                _decode(status, bytes(pending))

    async def dial(self, agent: str, service: str) -> trio.abc.HalfCloseableStream:
        """A raw byte stream to ``service`` on ``agent``, through the daemon.

        Raises:
            ValueError: ``agent`` or ``service`` cannot be an HTTP header value.
            DaemonUnavailableError: the socket cannot be reached.
            ApiError: the daemon refused (``unknown_agent``, ``read_only``, ...).
        """
        # Built by hand, not by h11: a dial is one fixed request, and h11's general
        # machinery (event objects, header validation, state) was a tenth of a
        # warm dial's whole cost. The values are checked as h11 would.
        request = b"".join(
            (
                b"POST /v0/dial HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                b"Connection: Upgrade\r\nUpgrade: ",
                DIAL_PROTOCOL.encode("ascii"),
                b"\r\nTunneld-Agent: ",
                _header_value("agent", agent),
                b"\r\nTunneld-Service: ",
                _header_value("service", service),
                b"\r\n\r\n",
            )
        )
        stream = await self._connect_direct()
        try:
            await stream.send_all(request)
            head = bytearray()
            eof = False
            while (end := head.find(b"\r\n\r\n")) < 0 and not eof:
                if len(head) > _MAX_HEAD:
                    raise ApiError(502, "bad_response", "the daemon's answer head is too long")
                data = await stream.receive_some(65536)
                eof = not data
                head += data
            if end >= 0 and _switched(head[:end]):
                trailing = bytes(head[end + 4 :])
                if not trailing:
                    return stream  # nothing read ahead: no wrapper needed
                return HalfCloseableReplayStream(stream, trailing)
            # Anything but a 101 (an error, or something odd): let h11 read it all.
            return await _refused(stream, bytes(head), eof)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise


_MAX_HEAD: Final = 64 * 1024
_SWITCHED: Final = (b"HTTP/1.1 101 ", b"HTTP/1.1 101\r")


def _header_value(what: str, value: str) -> bytes:
    """``value`` as an HTTP header value (visible ASCII and spaces, not blank).

    Raises:
        ValueError: it is not one (names what).
    """
    if not value.strip() or not value.isascii() or not value.isprintable():
        raise ValueError(f"{what} {value!r}: expected a non-empty printable ASCII name")
    return value.strip().encode("ascii")


def _switched(head: bytes | bytearray) -> bool:
    """Whether the response head is a 101 that switched to our protocol."""
    status, _, rest = bytes(head).partition(b"\r\n")
    if not (status + b"\r").startswith(_SWITCHED):
        return False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade":
            return value.strip().lower() == DIAL_PROTOCOL.encode("ascii")
    return False


async def _refused(stream: trio.abc.Stream, head: bytes, eof: bool) -> trio.abc.HalfCloseableStream:
    """Read a non-101 answer to a dial (``head``: what was read so far, ``eof``: and
    then the end) and raise it as an ApiError."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="POST",
            target="/v0/dial",
            headers=[("Host", "localhost"), ("Content-Length", "0")],
        )
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    if eof:
        conn.receive_data(b"")
    try:
        status, body = await _read_answer(conn, stream)
    except h11.RemoteProtocolError as exc:
        raise ApiError(502, "bad_response", f"the daemon's answer is malformed: {exc}") from None
    _decode(status or 502, body)
    raise ApiError(status, "upgrade_refused", "the daemon did not switch protocols")


def _decode(status: int, body: bytes) -> object:
    try:
        decoded: object = json.loads(body) if body else None
    except ValueError:
        decoded = None
    if status >= 400:
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(error, dict):
            raise ApiError(status, str(error.get("code")), str(error.get("message")))
        raise ApiError(status, f"http_{status}", body.decode("utf-8", "replace")[:200])
    return decoded


async def _send_request(
    stream: trio.abc.Stream, method: str, target: str, headers: list[tuple[str, str]]
) -> h11.Connection:
    """Send a body-less request on ``stream``; the h11 connection to read the answer with."""
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method=method,
        target=target,
        headers=[("Host", "localhost"), ("Content-Length", "0"), *headers],
    )
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    return conn


async def _read_answer(conn: h11.Connection, stream: trio.abc.Stream) -> tuple[int, bytes]:
    """The status (0 if none came) and body of the answer ``conn`` expects.

    Raises:
        ApiError: the body is over ``_MAX_RESPONSE`` bytes.
        h11.RemoteProtocolError: the answer is malformed.
    """
    status = 0
    body = bytearray()
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Response | h11.InformationalResponse):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_RESPONSE:
                raise ApiError(status, "response_too_large", "response too large")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    """The next h11 event, reading from ``stream`` as long as h11 needs more data."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(bytes(await stream.receive_some(65536)))
    return event
