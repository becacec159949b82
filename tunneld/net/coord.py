"""A coordinator session over trio-websocket, driving the sans-IO :class:`CoordinatorClient`.

The overlay keeps one :class:`CoordinatorClient` for the node's whole life and opens a
fresh :func:`connect_coordinator` after every disconnect; each new session starts by
replaying the node and its tunnels (SPECS.md, "Clients replay their tunnels after a
reconnect"). Backoff between attempts is the caller's (it owns the clock and the rng).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket

from tunneld.log import Secret, get_logger
from tunneld.net._websocket import close_bounded, close_info
from tunneld.proto.coord import (
    MAX_MESSAGE_SIZE,
    CloseCode,
    CoordinatorClient,
    RemoteProtocolError,
    Response,
)

__all__ = [
    "CoordinatorClosed",
    "CoordinatorConnectError",
    "CoordinatorConnection",
    "connect_coordinator",
]

log = get_logger(__name__)


class CoordinatorConnectError(Exception):
    """The coordinator could not be reached or refused us.

    ``status`` is the HTTP status of a refused upgrade (401: the token is missing,
    wrong, revoked or expired — retrying will not help until it changes), else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CoordinatorClosed(Exception):
    """The session ended; ``code``/``reason`` are the WebSocket close code and reason."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"coordinator session closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class CoordinatorConnection:
    """One live session. Use :meth:`send` for requests the client built, :meth:`receive`
    for responses (already folded into ``client.peers``)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, client: CoordinatorClient) -> None:
        self._ws = ws
        self.client = client
        self._send_lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        """Send one request (bytes from the client helper).

        Raises:
            CoordinatorClosed: the session is over.
        """
        async with self._send_lock:
            try:
                await self._ws.send_message(data)
            except trio_websocket.ConnectionClosed as exc:
                raise _closed(exc) from None

    async def receive(self) -> Response:
        """The next response, applied to ``client.peers``.

        Raises:
            CoordinatorClosed: the session is over (the server closed it, or it broke).
                A message that is not valid coordinator protocol closes the session
                with the decoder's close code and reason and raises this too.
        """
        try:
            data = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None
        if isinstance(data, str):
            await close_bounded(
                self._ws, CloseCode.UNSUPPORTED_DATA, "text message; expected binary msgpack"
            )
            raise CoordinatorClosed(CloseCode.UNSUPPORTED_DATA, "coordinator sent a text message")
        try:
            return self.client.receive(data)
        except RemoteProtocolError as exc:
            await close_bounded(self._ws, exc.close_code, exc.reason)
            raise CoordinatorClosed(exc.close_code, exc.reason) from None


def _closed(exc: trio_websocket.ConnectionClosed) -> CoordinatorClosed:
    return CoordinatorClosed(*close_info(exc, lost="connection lost"))


@asynccontextmanager
async def connect_coordinator(
    url: str,
    token: Secret,
    client: CoordinatorClient,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[CoordinatorConnection]:
    """Open a session at ``url`` (``ws(s)://host:port/api/v1/coordinate``) and replay.

    Everything ``client.replay()`` returns (our node, then each tunnel) is sent before
    the connection is handed over, and so is every change made to ``client`` while
    that was being sent (``client.catch_up()``). Leaving the block closes the WebSocket (1000).

    Raises:
        CoordinatorConnectError: refused (``status`` 401 for a bad token), the
            handshake failed or timed out, or the server is unreachable.
    """
    headers = [(b"Authorization", b"Bearer " + token.reveal().encode("ascii"))]
    entered = False
    try:
        async with trio_websocket.open_websocket_url(
            url,
            ssl_context,
            extra_headers=headers,
            connect_timeout=connect_timeout,
            max_message_size=MAX_MESSAGE_SIZE,
        ) as ws:
            entered = True
            connection = CoordinatorConnection(ws, client)
            # The caller only learns of this session when we yield it, so whatever it
            # asks of the client while the replay is being sent (a tool call's
            # add_tunnel, say) is not sent by it: catch up until nothing changed during
            # the sends. No await between the last (empty) catch_up and the yield.
            messages = client.replay()
            while messages:
                for data in messages:
                    await connection.send(data)
                messages = client.catch_up()
                if messages:
                    log.info("coord.replay_caught_up", messages=len(messages))
            yield connection
    except trio_websocket.ConnectionRejected as exc:
        if entered:
            raise
        raise CoordinatorConnectError(
            f"coordinator refused the session: HTTP {exc.status_code}", exc.status_code
        ) from None
    except (trio_websocket.HandshakeError, OSError) as exc:
        if entered:
            raise
        raise CoordinatorConnectError(f"cannot reach the coordinator at {url}: {exc}") from None
