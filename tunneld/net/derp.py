"""A trio DERP v2 client over a raw HTTP upgrade or WebSocket.

Two transports carry the same DERP frames (SPECS.md, DERP v2):

* ``derp`` — ``GET`` with ``Upgrade: DERP``, then DERP frames on the bare TCP (or TLS)
  stream after ``101 Switching Protocols``: Tailscale's own transport (derper serves
  it on ``/derp``). No WebSocket framing or client masking, so the cheaper one.
* ``websocket`` — subprotocol ``derp``, binary messages (for proxies that pass only
  WebSocket, and relays that do not serve the upgrade).

``transport="auto"`` (the default) asks for the upgrade and falls back to WebSocket
when the relay answers anything but 101 (an older tunneld relay answers 426).

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
import ssl
from collections import deque
from collections.abc import AsyncIterator, Container, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal
from urllib.parse import urlsplit

import h11
import trio
import trio_websocket

from tunneld._locks import acquire_promptly
from tunneld.http import DirectSocketStream
from tunneld.net._derp_link import Link, LinkClosed, StreamLink, WebSocketLink
from tunneld.proto.derp import (
    ClientConnection,
    Connected,
    ConnectionState,
    DerpEvent,
    Pong,
    RemoteProtocolError,
    ServerInfo,
)

__all__ = ["TRANSPORTS", "DerpClient", "DerpConnectError", "DerpConnectionClosed", "Transport"]

_CLOSE_GOING_AWAY = 1001
_MESSAGE_QUEUE = 4  # whole WebSocket messages buffered (each at most 1 MiB)
_MAX_RESPONSE_HEAD = 16 * 1024
Transport = Literal["auto", "derp", "websocket"]
TRANSPORTS: tuple[Transport, ...] = ("auto", "derp", "websocket")


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


class _UpgradeRefused(Exception):
    """The relay answered the ``Upgrade: DERP`` request with ``status``, not 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"relay answered HTTP {status} to Upgrade: DERP")
        self.status = status


async def _open_upgrade(
    url: str,
    timeout: float,  # noqa: ASYNC109
) -> tuple[StreamLink, bytes]:
    """Connect to ``url`` and switch to DERP with ``Upgrade: DERP`` (Tailscale's
    derphttp request: ``GET`` the URL's path, ``Connection: Upgrade``).

    Returns the link and the DERP bytes read together with the 101 response head.

    Raises:
        _UpgradeRefused: an HTTP answer other than 101 (then the stream is closed).
        DerpConnectError: not a URL we can dial, the answer is not HTTP, or the
            connection broke (reset, failed TLS handshake).
        OSError: the relay cannot be reached; TimeoutError via trio.TooSlowError.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise DerpConnectError(f"relay URL must be ws://, wss://, http:// or https://: {url!r}")
    secure = scheme in ("wss", "https")
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(host, port)
        # Plain TCP: a stream that calls the kernel directly when it is ready (no
        # scheduler round per read and write of a relayed packet; trio's TCP_NODELAY
        # stays with the socket). TLS keeps trio's stream under the SSLStream.
        stream: trio.abc.Stream = tcp if secure else DirectSocketStream.take_over(tcp)
        try:
            if secure:
                tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
                await tls.do_handshake()
                stream = tls
            authority = f"[{host}]" if ":" in host else host
            if parts.port is not None:
                authority += f":{parts.port}"
            client = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET",
                target=target.encode(),
                headers=[
                    (b"Host", authority.encode()),
                    (b"Connection", b"Upgrade"),
                    (b"Upgrade", b"DERP"),
                    (b"User-Agent", b"tunneld"),
                ],
            )
            await stream.send_all(client.send(request) or b"")
            received = 0
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(4096)
                    received += len(data)
                    if received > _MAX_RESPONSE_HEAD:
                        raise DerpConnectError("relay's HTTP answer to Upgrade: DERP is too long")
                    client.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    trailing, _closed = client.trailing_data
                    return StreamLink(stream), bytes(trailing)
                if isinstance(event, h11.Response | h11.InformationalResponse):
                    raise _UpgradeRefused(event.status_code)
                raise DerpConnectError("relay closed the connection before answering the upgrade")
        except h11.RemoteProtocolError as exc:
            await trio.aclose_forcefully(stream)
            raise DerpConnectError(f"relay's answer to Upgrade: DERP is not HTTP: {exc}") from None
        except trio.BrokenResourceError as exc:  # reset, or a failed TLS handshake
            await trio.aclose_forcefully(stream)
            raise DerpConnectError(f"relay connection failed: {exc.__cause__ or exc}") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise


class DerpClient:
    """A connected DERP client; make one with :meth:`connect`.

    Attributes:
        public_key: our node key (our DERP address).
        server_key: the relay's public key from SERVER_KEY.
        server_info: the relay's SERVER_INFO (rate hints).
        last_heard: ``trio.current_time()`` of the last message from the relay (a
            client should treat 120 s of silence as a dead connection).
        transport: ``"derp"`` (raw upgrade) or ``"websocket"``: what this connection uses.
    """

    def __init__(
        self,
        link: Link,
        core: ClientConnection,
        server_info: ServerInfo,
        event_buffer: int,
        silence_timeout: float,
    ) -> None:
        self._link = link
        self.transport = link.name
        self._silence_timeout = silence_timeout
        self._core = core
        assert core.server_key is not None
        self.public_key = core.public_key
        self.server_key = core.server_key
        self.server_info = server_info
        self.last_heard = trio.current_time()
        self._send_lock = trio.Lock()
        # Events for receive()/receive_batch(): a deque and wake-ups rather than a
        # memory channel, so a reader that takes all queued events at once costs one
        # task switch per batch instead of two per event.
        self._events: deque[DerpEvent] = deque()
        self._event_buffer = max(1, event_buffer)
        self._events_ready = trio.Event()
        self._events_room = trio.Event()
        self._reader_done = False
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
        transport: Transport = "auto",
    ) -> AsyncIterator[DerpClient]:
        """Connect to the relay at ``url`` (``ws://`` or ``wss://``) as ``private_key``.

        Args:
            url: the relay's URL, e.g. ``ws://host:port/derp`` (``http(s)://`` is the
                same relay: the raw upgrade uses the same host, port, TLS and path).
            private_key: our 32-byte Curve25519 private key.
            handshake_timeout: seconds for the WebSocket and DERP handshakes together.
            event_buffer: events held for :meth:`receive` before the reader stops
                reading (back-pressure onto the relay's queue for us).
            silence_timeout: close the connection when the relay has sent nothing for
                this long (it sends a keep-alive every 60-65 s; SPECS: 120 s).
            refuse_server_keys: relay keys we are already connected to under another
                URL: such a relay is left before it learns our key (a relay keeps one
                connection per client key, so joining twice would drop the other one).
            transport: ``"auto"`` (``Upgrade: DERP``, WebSocket if the relay answers
                anything but 101), ``"derp"`` or ``"websocket"`` only (module docstring).

        Raises:
            ValueError: an unknown ``transport``.
            DerpConnectError: the relay refused the upgrade, WebSocket or our key, closed during
                the handshake, spoke something that is not DERP, timed out, or has a key
                in ``refuse_server_keys`` (then ``code`` is None and ``alias`` is set).
            OSError: the relay cannot be reached.

        Leaving the block closes the connection and stops the reader task.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        async with AsyncExitStack() as stack:
            link: Link | None = None
            buffered = b""
            if transport != "websocket":
                try:
                    link, buffered = await _open_upgrade(url, handshake_timeout)
                except _UpgradeRefused as exc:
                    if transport == "derp":
                        raise DerpConnectError(str(exc)) from None
                except trio.TooSlowError:
                    raise DerpConnectError("relay did not answer Upgrade: DERP in time") from None
                else:
                    stack.push_async_callback(link.aclose)
            if link is None:
                link = WebSocketLink(
                    await stack.enter_async_context(_open_websocket(url, handshake_timeout)),
                    text_error="relay sent a text message; not a DERP relay",
                )
            core = ClientConnection(private_key)
            try:
                with trio.fail_after(handshake_timeout):
                    connected = await cls._handshake(link, core, refuse_server_keys, buffered)
            except trio.TooSlowError:
                raise DerpConnectError("DERP handshake timed out") from None
            client = cls(link, core, connected.server_info, event_buffer, silence_timeout)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._reader_task)
                nursery.start_soon(client._watch_silence)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()

    @staticmethod
    async def _handshake(
        link: Link,
        core: ClientConnection,
        refuse_server_keys: Container[bytes] = (),
        buffered: bytes = b"",
    ) -> Connected:
        # ``buffered``: DERP bytes read together with the 101 response head. They go
        # first, here rather than in every ``link.receive()`` of the connection.
        while core.state is not ConnectionState.CONNECTED:
            try:
                if buffered:
                    message, buffered = buffered, b""
                    await trio.lowlevel.checkpoint()
                else:
                    message = await link.receive()
                core.receive_data(message)
            except LinkClosed as exc:
                reason = exc.reason
                if link.name == "derp" and exc.code is None:
                    # A raw connection carries no close reason (derper's neither).
                    reason += " during the DERP handshake (the relay may not know our key)"
                raise DerpConnectError(f"relay closed the connection: {reason}", exc.code) from None
            except RemoteProtocolError as exc:
                await link.close(exc.close_code, exc.reason)
                raise DerpConnectError(f"relay broke the DERP handshake: {exc.reason}") from None
            if core.server_key is not None and core.server_key in refuse_server_keys:
                # Before CLIENT_INFO: the relay never registers our key on this socket.
                await link.close(_CLOSE_GOING_AWAY, "already connected to this relay")
                error = DerpConnectError("already connected to this relay under another URL")
                error.alias = core.server_key
                raise error
            outgoing = core.data_to_send()
            if outgoing:
                try:
                    await link.send(outgoing)
                except LinkClosed as exc:
                    raise DerpConnectError(
                        f"relay closed the connection: {exc.reason}", exc.code
                    ) from None
        event = core.next_event()
        assert isinstance(event, Connected)
        return event

    async def _send(self) -> None:
        # The lock keeps frames whole and in order across concurrent senders. Taken
        # without a checkpoint when free (the usual case): the write itself yields,
        # and with nothing to write there is nothing to wait for.
        lock = self._send_lock
        await acquire_promptly(lock)
        try:
            outgoing = self._core.data_to_send_parts()
            if outgoing:
                try:
                    await self._link.send_parts(outgoing)
                except LinkClosed as exc:
                    raise self._note_closed(exc) from None
        finally:
            lock.release()

    def _note_closed(self, exc: LinkClosed) -> DerpConnectionClosed:
        if self._closed is None:
            self._closed = DerpConnectionClosed(exc.code, exc.reason)
        return self._closed

    async def _watch_silence(self) -> None:
        while True:
            deadline = self.last_heard + self._silence_timeout
            if trio.current_time() >= deadline:
                break
            await trio.sleep_until(deadline)
        reason = f"relay silent for {self._silence_timeout:g} s"
        if self._closed is None:
            self._closed = DerpConnectionClosed(None, reason)
        await self._link.close(_CLOSE_GOING_AWAY, reason)  # the reader then ends

    async def _reader_task(self) -> None:
        try:
            await self._read_events()
        finally:
            self._reader_done = True
            self._events_ready.set()

    async def _read_events(self) -> None:
        events = self._events
        while True:
            while (event := self._core.next_event()) is not None:
                if isinstance(event, Pong) and event.data in self._pings:
                    self._pings.pop(event.data).set()
                    continue
                while len(events) >= self._event_buffer:
                    # Back-pressure: stop reading until the consumer catches up.
                    self._events_room = trio.Event()
                    await self._events_room.wait()
                events.append(event)
                self._events_ready.set()
            try:
                await self._send()  # auto-pongs
                # No deadline here (one per message cost more than the read):
                # _watch_silence closes the link when the relay goes quiet.
                message = await self._link.receive()
                self.last_heard = trio.current_time()
                self._core.receive_data(message)
            except LinkClosed as exc:
                self._note_closed(exc)
                return
            except DerpConnectionClosed:
                return
            except RemoteProtocolError as exc:
                self._closed = DerpConnectionClosed(exc.close_code, exc.reason)
                await self._link.close(exc.close_code, exc.reason)
                return

    async def receive(self) -> DerpEvent:
        """The next event from the relay (RecvPacket, PeerGone, KeepAlive, Health, ...).

        Raises:
            DerpConnectionClosed: the connection is closed and every event was received.
        """
        if self._events:
            await trio.lowlevel.checkpoint()
        else:
            await self._wait_events()
        event = self._events.popleft()
        self._events_room.set()
        return event

    async def receive_batch(self) -> list[DerpEvent]:
        """Every event queued now (at least one; waits for it), oldest first.

        A checkpoint only when it has to wait: the caller handles the events and comes
        back, and the reader can only queue more once the caller yields somewhere.

        Raises:
            DerpConnectionClosed: the connection is closed and every event was received.
        """
        if not self._events:
            await self._wait_events()
        batch = list(self._events)
        self._events.clear()
        self._events_room.set()
        return batch

    async def _wait_events(self) -> None:
        while not self._events:
            if self._reader_done:
                raise self._closed or DerpConnectionClosed(None, "connection closed")
            if self._events_ready.is_set():
                self._events_ready = trio.Event()
            await self._events_ready.wait()  # every waiter shares one event

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
        await self._link.aclose()


@asynccontextmanager
async def _open_websocket(
    url: str,
    timeout: float,  # noqa: ASYNC109
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    try:
        async with trio_websocket.open_websocket_url(
            url,
            subprotocols=["derp"],
            connect_timeout=timeout,
            # The relay batches frames into messages of up to 256 KiB: read them in
            # trio's default 64 KiB pieces instead of the library's 4 KiB (16x fewer
            # reads and parser passes), and let a few whole messages queue so the
            # socket reader does not stop after each one for our reader task to run.
            receive_buffer_size=None,
            message_queue_size=_MESSAGE_QUEUE,
        ) as ws:
            if ws.subprotocol != "derp":
                raise DerpConnectError(f"relay did not agree to subprotocol derp: {ws.subprotocol}")
            yield ws
    except trio_websocket.HandshakeError as exc:
        raise DerpConnectError(f"relay refused the WebSocket: {exc}") from None
