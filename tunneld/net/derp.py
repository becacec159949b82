"""A trio DERP v2 client over WebSocket (subprotocol ``derp``, binary messages).

One reader task feeds the sans-IO :class:`~tunneld.proto.derp.ClientConnection` and
hands events to :meth:`DerpClient.receive`; every write goes through one lock-guarded
``_send``. Server pings are answered automatically; :meth:`DerpClient.ping` measures
the round trip to the relay::

    async with DerpClient.connect("ws://relay:8443/derp", private_key) as client:
        await client.send_packet(peer_key, packet)
        event = await client.receive()      # RecvPacket, PeerGone, KeepAlive, ...
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Container, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio_websocket

from tunneld.net._websocket import close_bounded, close_info
from tunneld.proto.derp import (
    ClientConnection,
    Connected,
    ConnectionState,
    DerpEvent,
    Pong,
    RemoteProtocolError,
    ServerInfo,
)

__all__ = ["DerpClient", "DerpConnectError", "DerpConnectionClosed"]

_CLOSE_GOING_AWAY = 1001
_MESSAGE_QUEUE = 4  # whole WebSocket messages buffered (each at most 1 MiB)


class DerpConnectError(Exception):
    """The relay refused us or the handshake failed; ``reason`` says why."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.alias: bytes | None = None  # the relay key, when refused as an alias


class DerpConnectionClosed(Exception):
    """The DERP connection is closed; ``code`` and ``reason`` as the close said."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"DERP connection closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class DerpClient:
    """A connected DERP client; make one with :meth:`connect`.

    Attributes:
        public_key: our node key (our DERP address).
        server_key: the relay's public key from SERVER_KEY.
        server_info: the relay's SERVER_INFO (rate hints).
        last_heard: ``trio.current_time()`` of the last message from the relay (a
            client should treat 120 s of silence as a dead connection).
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        core: ClientConnection,
        server_info: ServerInfo,
        event_buffer: int,
        silence_timeout: float,
    ) -> None:
        self._ws = ws
        self._silence_timeout = silence_timeout
        self._core = core
        assert core.server_key is not None
        self.public_key = core.public_key
        self.server_key = core.server_key
        self.server_info = server_info
        self.last_heard = trio.current_time()
        self._send_lock = trio.Lock()
        self._events_in, self._events_out = trio.open_memory_channel[DerpEvent](event_buffer)
        self._pings: dict[bytes, trio.Event] = {}
        self._closed: DerpConnectionClosed | None = None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        private_key: bytes,
        *,
        handshake_timeout: float = 10.0,
        event_buffer: int = 256,
        silence_timeout: float = 120.0,
        refuse_server_keys: Container[bytes] = (),
    ) -> AsyncIterator[DerpClient]:
        """Connect to the relay at ``url`` (``ws://`` or ``wss://``) as ``private_key``.

        Args:
            url: the relay's WebSocket URL, e.g. ``ws://host:port/derp``.
            private_key: our 32-byte Curve25519 private key.
            handshake_timeout: seconds for the WebSocket and DERP handshakes together.
            event_buffer: events held for :meth:`receive` before the reader stops
                reading (back-pressure onto the relay's queue for us).
            silence_timeout: close the connection when the relay has sent nothing for
                this long (it sends a keep-alive every 60-65 s; SPECS: 120 s).
            refuse_server_keys: relay keys we are already connected to under another
                URL: such a relay is left before it learns our key (a relay keeps one
                connection per client key, so joining twice would drop the other one).

        Raises:
            DerpConnectError: the relay refused the WebSocket or our key, closed during
                the handshake, spoke something that is not DERP, timed out, or has a key
                in ``refuse_server_keys`` (then ``code`` is None and ``alias`` is set).
            OSError: the relay cannot be reached.

        Leaving the block closes the connection and stops the reader task.
        """
        async with AsyncExitStack() as stack:
            try:
                ws = await stack.enter_async_context(
                    trio_websocket.open_websocket_url(
                        url,
                        subprotocols=["derp"],
                        connect_timeout=handshake_timeout,
                        # The relay batches frames into messages of up to 256 KiB:
                        # read them in trio's default 64 KiB pieces instead of the
                        # library's 4 KiB (16x fewer reads and parser passes), and
                        # let a few whole messages queue so the socket reader does
                        # not stop after each one for our reader task to run.
                        receive_buffer_size=None,
                        message_queue_size=_MESSAGE_QUEUE,
                    )
                )
            except trio_websocket.HandshakeError as exc:
                raise DerpConnectError(f"relay refused the WebSocket: {exc}") from None
            if ws.subprotocol != "derp":
                raise DerpConnectError(f"relay did not agree to subprotocol derp: {ws.subprotocol}")
            core = ClientConnection(private_key)
            try:
                with trio.fail_after(handshake_timeout):
                    connected = await cls._handshake(ws, core, refuse_server_keys)
            except trio.TooSlowError:
                raise DerpConnectError("DERP handshake timed out") from None
            client = cls(ws, core, connected.server_info, event_buffer, silence_timeout)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._reader_task)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()

    @staticmethod
    async def _handshake(
        ws: trio_websocket.WebSocketConnection,
        core: ClientConnection,
        refuse_server_keys: Container[bytes] = (),
    ) -> Connected:
        while core.state is not ConnectionState.CONNECTED:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                code, reason = close_info(exc, lost="connection closed")
                raise DerpConnectError(f"relay closed the connection: {reason}", code) from None
            if isinstance(message, str):
                raise DerpConnectError("relay sent a text message; not a DERP relay")
            try:
                core.receive_data(message)
            except RemoteProtocolError as exc:
                await close_bounded(ws, exc.close_code, exc.reason)
                raise DerpConnectError(f"relay broke the DERP handshake: {exc.reason}") from None
            if core.server_key is not None and core.server_key in refuse_server_keys:
                # Before CLIENT_INFO: the relay never registers our key on this socket.
                await close_bounded(ws, _CLOSE_GOING_AWAY, "already connected to this relay")
                error = DerpConnectError("already connected to this relay under another URL")
                error.alias = core.server_key
                raise error
            outgoing = core.data_to_send()
            if outgoing:
                await ws.send_message(outgoing)
        event = core.next_event()
        assert isinstance(event, Connected)
        return event

    async def _send(self) -> None:
        # The lock keeps frames whole and in order across concurrent senders.
        async with self._send_lock:
            outgoing = self._core.data_to_send()
            if outgoing:
                try:
                    await self._ws.send_message(outgoing)
                except trio_websocket.ConnectionClosed as exc:
                    raise self._note_closed(exc) from None

    def _note_closed(self, exc: trio_websocket.ConnectionClosed) -> DerpConnectionClosed:
        if self._closed is None:
            self._closed = DerpConnectionClosed(*close_info(exc, lost="connection closed"))
        return self._closed

    async def _reader_task(self) -> None:
        async with self._events_in:
            while True:
                while (event := self._core.next_event()) is not None:
                    if isinstance(event, Pong) and event.data in self._pings:
                        self._pings.pop(event.data).set()
                        continue
                    await self._events_in.send(event)
                try:
                    await self._send()  # auto-pongs
                    message: str | bytes | None = None
                    with trio.move_on_after(self._silence_timeout):
                        message = await self._ws.get_message()
                    if message is None:
                        reason = f"relay silent for {self._silence_timeout:g} s"
                        self._closed = DerpConnectionClosed(None, reason)
                        await close_bounded(self._ws, _CLOSE_GOING_AWAY, reason)
                        return
                except trio_websocket.ConnectionClosed as exc:
                    self._note_closed(exc)
                    return
                except DerpConnectionClosed:
                    return
                self.last_heard = trio.current_time()
                try:
                    if isinstance(message, str):
                        raise RemoteProtocolError("relay sent a text message")
                    self._core.receive_data(message)
                except RemoteProtocolError as exc:
                    self._closed = DerpConnectionClosed(exc.close_code, exc.reason)
                    await close_bounded(self._ws, exc.close_code, exc.reason)
                    return

    async def receive(self) -> DerpEvent:
        """The next event from the relay (RecvPacket, PeerGone, KeepAlive, Health, ...).

        Raises:
            DerpConnectionClosed: the connection is closed and every event was received.
        """
        try:
            return await self._events_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed or DerpConnectionClosed(None, "connection closed") from None

    async def send_packet(self, dst: bytes, data: bytes) -> None:
        """Relay ``data`` (at most 64 KiB) to the node with public key ``dst``.

        Raises:
            LocalProtocolError: a bad key or an oversized packet.
            DerpConnectionClosed: the connection is closed.
        """
        self._core.send_packet(dst, data)
        await self._send()

    async def send_packets(self, packets: Iterable[tuple[bytes, bytes]]) -> None:
        """Relay several ``(dst, data)`` packets in one WebSocket message.

        DERP frames may share a WebSocket message, so a burst costs one message (and
        one relay wake-up) instead of one per packet. Same errors as :meth:`send_packet`;
        a bad packet raises before anything is sent.
        """
        for dst, data in packets:
            self._core.send_packet(dst, data)
        await self._send()

    async def note_preferred(self, preferred: bool) -> None:
        """Tell the relay whether it is our home relay."""
        self._core.note_preferred(preferred)
        await self._send()

    async def ping(self, timeout: float = 5.0) -> float:  # noqa: ASYNC109 - a per-ping budget
        """Ping the relay and return the round-trip time in seconds.

        Raises:
            TimeoutError: no pong within ``timeout`` seconds.
            DerpConnectionClosed: the connection is closed.
        """
        data = secrets.token_bytes(8)
        answered = trio.Event()
        self._pings[data] = answered
        start = trio.current_time()
        try:
            self._core.ping(data)
            await self._send()
            with trio.move_on_after(timeout):
                await answered.wait()
        finally:
            self._pings.pop(data, None)
        if not answered.is_set():
            if self._closed is not None:
                raise self._closed
            raise TimeoutError(f"no DERP pong within {timeout} s")
        return max(trio.current_time() - start, math.ulp(0.0))

    async def aclose(self) -> None:
        """Close the connection (1000); the reader stops and :meth:`receive` ends."""
        await self._ws.aclose()
