"""The two DERP transports, as both ends use them: the relay (``tunneld.control``) and
the client (``tunneld.net.derp``).

* :class:`WebSocketLink`: DERP bytes in WebSocket binary messages (subprotocol ``derp``).
* :class:`StreamLink`: DERP bytes on the raw stream after ``Upgrade: DERP``; no close
  codes exist there, closing just ends the connection (as with Tailscale's derper).

``send`` and ``receive`` carry every relayed packet: each is one await of the
underlying connection and nothing more per frame; keep them so.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio_websocket

from tunneld.http import DirectSocketStream, raise_notsent_lowat
from tunneld.net._websocket import CLOSE_TIMEOUT, close_bounded, close_info
from tunneld.proto.derp import RemoteProtocolError

__all__ = ["Link", "LinkClosed", "StreamLink", "WebSocketLink"]

# One read of a raw DERP stream: several packets a read when they queue up.
_READ_SIZE = 256 * 1024
# TCP_NOTSENT_LOWAT on raw DERP streams (trio's 16 KiB split every 64 KiB packet into
# several sends): one relay batch of frames per write (the relay's _MAX_BATCH_BYTES),
# a few relayed packets per write for a client.
_NOTSENT_LOWAT = 256 * 1024


class LinkClosed(Exception):
    """The connection is gone: ``code`` and ``reason`` as the peer's close said, if it did."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WebSocketLink:
    """DERP bytes as WebSocket binary messages.

    Args:
        ws: the open WebSocket.
        text_error: the :class:`RemoteProtocolError` message when the peer sends a text
            message (each end words it for the side that reads it).
        shield_close: :meth:`close` finishes even while the calling task is cancelled
            (the relay: a client it drops still gets the close frame).
    """

    __slots__ = ("_shield_close", "_text_error", "_ws")
    name = "websocket"

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        *,
        text_error: str,
        shield_close: bool = False,
    ) -> None:
        self._ws = ws
        self._text_error = text_error
        self._shield_close = shield_close

    async def send(self, data: bytes | bytearray) -> None:
        """Send ``data`` as one binary message. Raises :class:`LinkClosed`."""
        try:
            await self._ws.send_message(bytes(data))
        except trio_websocket.ConnectionClosed as exc:
            raise LinkClosed(*close_info(exc, lost="connection closed")) from None

    async def send_parts(self, parts: Sequence[bytes]) -> None:
        """Send ``parts`` joined, as one binary message. Raises :class:`LinkClosed`."""
        await self.send(b"".join(parts))

    async def receive(self) -> bytes:
        """The next message. Raises :class:`LinkClosed`, or RemoteProtocolError for text."""
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise LinkClosed(*close_info(exc, lost="connection closed")) from None
        if isinstance(message, str):
            raise RemoteProtocolError(self._text_error)
        return message

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason``, bounded by ``CLOSE_TIMEOUT``; never raises."""
        with trio.CancelScope(shield=self._shield_close):
            await close_bounded(self._ws, code, reason)

    async def aclose(self) -> None:
        """Close with 1000 (trio-websocket's own close: not bounded, not shielded)."""
        await self._ws.aclose()


class StreamLink:
    """DERP bytes on the raw stream after ``Upgrade: DERP`` (no close codes: closing
    just closes the connection)."""

    __slots__ = ("_stream",)
    name = "derp"

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        raise_notsent_lowat(stream, _NOTSENT_LOWAT)

    async def send(self, data: bytes | bytearray) -> None:
        """Write ``data``. Raises :class:`LinkClosed`."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkClosed(None, f"connection lost: {exc}") from None

    async def send_parts(self, parts: Sequence[bytes]) -> None:
        """Write ``parts`` one after another: gathered by the kernel on a plain
        socket (no copy of a batch of 64 KiB packets), joined first on any other
        stream (TLS). Raises :class:`LinkClosed`."""
        stream = self._stream
        try:
            if isinstance(stream, DirectSocketStream):
                await stream.send_all_parts(parts)
            else:
                await stream.send_all(b"".join(parts))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkClosed(None, f"connection lost: {exc}") from None

    async def receive(self) -> bytes:
        """What the stream has now (at least one byte). Raises :class:`LinkClosed`."""
        try:
            chunk = await self._stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkClosed(None, f"connection lost: {exc}") from None
        if not chunk:
            raise LinkClosed(None, "connection closed")
        return bytes(chunk)

    async def close(self, code: int, reason: str) -> None:
        """Close the stream (``code`` and ``reason`` have nowhere to go)."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream, shielded and bounded by ``CLOSE_TIMEOUT``, then forcefully."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT) as scope:
            await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)


Link = WebSocketLink | StreamLink
