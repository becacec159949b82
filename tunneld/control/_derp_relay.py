"""The control plane's DERP v2 relay, served on ``/derp`` two ways.

* ``Upgrade: DERP`` (:meth:`DerpRelay.handle_stream`): Tailscale's own transport, DERP
  frames on the raw stream after ``101 Switching Protocols``. Close codes do not exist
  there: a client we close just sees the connection end.
* WebSocket, subprotocol ``derp`` (:meth:`DerpRelay.handle_websocket`): binary
  messages; closes carry a code and reason.

Behaviour follows Tailscale's derper where it is observable by clients:

* SERVER_KEY is sent at once; the client must complete the sealed handshake within
  ``handshake_timeout``; then ``authorize(client_key)`` decides, within the same
  timeout again (refused clients are closed with 1008 "node key not authorized on
  this relay"; an authorizer that fails or hangs gives 1011).
* SEND_PACKET to a connected peer becomes RECV_PACKET there. To an absent peer the
  packet is dropped (``unknown_dest``) and the sender gets PEER_GONE(not here),
  rate-limited per sender (derper: 1/s, burst 3).
* When a client disconnects, every client it had sent packets to gets
  PEER_GONE(disconnected) for it: derper registers the receiver of a packet as a
  watcher of its source, so a peer can forget the relay route back to the sender.
* PING is answered with PONG; NOTE_PREFERRED is recorded; KEEP_ALIVE every 60 s plus
  up to 5 s of jitter (chosen once per client).
* Each client has a bounded send queue drained by its own writer task. A full
  queue drops its oldest packet (``queue_full``; fresher packets matter more, as in
  derper's head drop); nobody else ever waits for a slow client, and a client whose
  socket does not take a write within ``write_timeout`` is closed. The queue's depth
  (96 packets by default; derper's is 32) is announced in SERVER_INFO as
  ``TunneldSendQueuePackets``, a field only our nodes read: they keep fewer packets in
  flight through the relay than it queues.
* Received bytes per client are limited by a token bucket (drops: ``rate_limited``);
  the rate is advertised in SERVER_INFO as derper's token-bucket hints.
* Duplicate connections for one key: the newest wins. derper keeps both and picks
  the last writer; for us a second connection almost always means the node restarted
  or changed networks, so the older one is told (HEALTH) and closed with 1008.
* A frame the protocol forbids (oversized, malformed, mesh-only) closes only that
  client, with the reason as the WebSocket close reason.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio_websocket

from tunneld._address import format_address
from tunneld.control._ratelimit import TokenBucket
from tunneld.http import Request
from tunneld.log import Logger, get_logger
from tunneld.net._derp_link import Link, LinkClosed, StreamLink, WebSocketLink
from tunneld.proto.derp import (
    CLOSE_POLICY_VIOLATION,
    MAX_PACKET_SIZE,
    PROTOCOL_VERSION,
    ClientHello,
    NotePreferred,
    PeerGoneReason,
    Ping,
    RemoteProtocolError,
    SendPacket,
    ServerConnection,
    ServerInfo,
    encode_health,
    encode_keep_alive,
    encode_peer_gone,
    encode_pong,
    encode_restarting,
    recv_packet_parts,
)

__all__ = ["DerpRelay", "RelayLimits", "RelayStats"]

_CLOSE_NORMAL = 1000
_CLOSE_GOING_AWAY = 1001
_CLOSE_INTERNAL_ERROR = 1011
# Frames written in one WebSocket message (or raw write) at most (a byte stream anyway);
# a raw stream's TCP_NOTSENT_LOWAT (tunneld.net._derp_link) lets one such write through.
_MAX_BATCH_BYTES = 256 * 1024


@dataclass(frozen=True)
class RelayLimits:
    """Bounds the relay applies to every client.

    ``max_packet``: larger packets are dropped (``too_large``); frames beyond DERP's
    own 64 KiB limit close the client. ``send_queue_packets``: packets buffered per
    receiving client, announced in SERVER_INFO so our nodes keep fewer than that in
    flight (derper's depth is 32; ours is deeper because a node's window on the relay
    is bound by it; ``[control] relay_queue_packets`` sets it). ``control_queue_frames``: pongs,
    PEER_GONE and other control frames buffered per client. ``bytes_per_second`` and
    ``burst``: each client's token bucket over received frame bytes (0 = unlimited, the
    default, as derper; ``[control] relay_rate_limit`` sets it).
    ``keepalive_interval`` plus up to ``keepalive_jitter`` seconds between KEEP_ALIVEs.
    ``handshake_timeout``: from connect to a valid CLIENT_INFO. ``write_timeout``: one
    write to a client that stopped reading closes it. ``peer_gone_per_second`` and
    ``peer_gone_burst``: PEER_GONE(not here) replies per sender.
    """

    max_packet: int = MAX_PACKET_SIZE
    send_queue_packets: int = 96
    control_queue_frames: int = 64
    bytes_per_second: int = 0
    burst: int = 2 * 1024 * 1024
    keepalive_interval: float = 60.0
    keepalive_jitter: float = 5.0
    handshake_timeout: float = 10.0
    write_timeout: float = 10.0
    peer_gone_per_second: float = 1.0
    peer_gone_burst: int = 3


@dataclass
class RelayStats:
    """Counters of one relay (gauges: ``clients_current``, ``clients_preferred``)."""

    clients_current: int = 0
    clients_total: int = 0
    clients_preferred: int = 0
    refused: int = 0
    handshake_failures: int = 0
    protocol_errors: int = 0
    duplicates_replaced: int = 0
    closed_by_control: int = 0
    write_timeouts: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_relayed: int = 0
    bytes_relayed: int = 0
    pings: int = 0
    peer_gone_sent: int = 0
    keepalives_sent: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        """Count one dropped packet or frame for ``reason``."""
        self.drops[reason] = self.drops.get(reason, 0) + 1


class _Client:
    """One admitted connection: its queues, writer wake-up and cancel scope."""

    __slots__ = (
        "cancel_scope",
        "close_code",
        "close_reason",
        "control",
        "flushed",
        "key",
        "last_write",
        "link",
        "log",
        "packets",
        "peer_gone_bucket",
        "preferred",
        "rate_bucket",
        "wakeup",
        "writing_since",
    )

    def __init__(
        self,
        key: bytes,
        link: Link,
        limits: RelayLimits,
        now: float,
        log: Logger,
    ) -> None:
        self.key = key
        self.link = link
        self.log = log
        # RECV_PACKET frames as (header and source key, packet): the writer joins a
        # batch once, so a relayed packet is copied once on its way through.
        self.packets: deque[tuple[bytes, bytes]] = deque()
        self.control: deque[bytes] = deque()
        self.wakeup = trio.Event()
        self.last_write = now  # when a write last completed (keep-alives count from it)
        self.writing_since: float | None = None  # when the write in progress began
        # Set when the writer has emptied both queues (announce_restart waits on it).
        self.flushed = trio.Event()
        self.cancel_scope: trio.CancelScope | None = None
        self.close_code = _CLOSE_NORMAL
        self.close_reason = ""
        self.preferred = False
        self.rate_bucket = TokenBucket(limits.bytes_per_second, limits.burst, now)
        self.peer_gone_bucket = TokenBucket(
            limits.peer_gone_per_second, limits.peer_gone_burst, now
        )

    def close(self, code: int, reason: str) -> None:
        """Ask this client's handler to close it (idempotent; first reason wins)."""
        if not self.close_reason:
            self.close_code = code
            self.close_reason = reason
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        self.flushed.set()

    def wake(self) -> None:
        self.wakeup.set()


class DerpRelay:
    """A DERP v2 relay: mount :meth:`handle_websocket` on ``/derp``.

    Args:
        private_key: the relay's 32-byte Curve25519 private key (clients see
            :attr:`public_key` in SERVER_KEY).
        authorize: ``await authorize(client_key)`` says whether that node may connect.
        limits: per-client bounds (:class:`RelayLimits`).
        rng: jitter for keep-alives (pass a seeded one in tests).
        log: a structured logger (defaults to this module's).
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        authorize: Callable[[bytes], Awaitable[bool]],
        limits: RelayLimits | None = None,
        rng: random.Random | None = None,
        log: Logger | None = None,
    ) -> None:
        self._private_key = private_key
        self.public_key = ServerConnection(private_key).public_key
        self._authorize = authorize
        self.limits = limits if limits is not None else RelayLimits()
        self._rng = rng if rng is not None else random.Random()
        self._log = log if log is not None else get_logger(__name__)
        self.stats = RelayStats()
        self._clients: dict[bytes, _Client] = {}
        # Who to tell when a key leaves: the receivers of its packets (derper's
        # peerGoneWatchers), and the reverse index to clean up after a receiver.
        self._watchers: dict[bytes, set[bytes]] = {}
        self._watching: dict[bytes, set[bytes]] = {}

    # --- public control surface ---

    def is_connected(self, key: bytes) -> bool:
        """Whether a client with ``key`` is connected now."""
        return key in self._clients

    def close_peer(self, key: bytes) -> None:
        """Disconnect the client with ``key`` (e.g. its node was revoked); no-op if absent.

        Its connection is closed with 1008 "closed by the control plane"; peers it sent
        to get PEER_GONE(disconnected).
        """
        client = self._clients.get(key)
        if client is not None:
            self.stats.closed_by_control += 1
            client.close(CLOSE_POLICY_VIOLATION, "closed by the control plane")

    async def announce_restart(self, reconnect_in: float, try_for: float) -> None:
        """Send RESTARTING to every client: reconnect after ``reconnect_in`` seconds and
        keep trying for ``try_for`` seconds (sent as milliseconds on the wire).

        Waits up to one second for the frames to be written (bounded; a stuck client
        does not hold it up longer). Cancellation: stops waiting; frames stay queued.
        """
        frame = encode_restarting(round(reconnect_in * 1000), round(try_for * 1000))
        clients = list(self._clients.values())
        for client in clients:
            client.flushed = trio.Event()
            self._queue_control(client, frame)
        with trio.move_on_after(1.0):
            for client in clients:
                await client.flushed.wait()

    # --- one connection ---

    async def handle_websocket(
        self, request: Request, ws: trio_websocket.WebSocketConnection
    ) -> None:
        """Serve one DERP client on an accepted WebSocket until it leaves or is closed.

        Never raises for client misbehaviour: protocol errors, timeouts and refusals
        close this WebSocket with a code and reason. Cancellation closes it too.
        """
        await self._serve(
            request,
            WebSocketLink(
                ws,
                text_error="DERP over WebSocket uses binary messages, got text",
                shield_close=True,  # closing must finish even while our task is cancelled
            ),
        )

    async def handle_stream(self, request: Request, stream: trio.abc.Stream) -> None:
        """Serve one DERP client on the raw stream after ``Upgrade: DERP`` (mount with
        ``Router.upgrade(path, "DERP", ..., method="GET")``).

        As :meth:`handle_websocket`; closing just closes the stream (no code or reason
        travels: the client sees the connection end, as with Tailscale's derper).
        """
        await self._serve(request, StreamLink(stream))

    async def _serve(self, request: Request, link: Link) -> None:
        core = ServerConnection(self._private_key)
        # host:port, as the http.request line for the same connection shows it.
        log = self._log.bind(peer=format_address(request.peer))
        try:
            await link.send(core.data_to_send())
            with trio.fail_after(self.limits.handshake_timeout):
                hello = await self._read_hello(link, core)
        except trio.TooSlowError:
            self.stats.handshake_failures += 1
            log.info("derp.handshake_timeout")
            await link.close(CLOSE_POLICY_VIOLATION, "DERP handshake timed out")
            return
        except RemoteProtocolError as exc:
            self.stats.handshake_failures += 1
            log.info("derp.handshake_failed", reason=exc.reason)
            await link.close(exc.close_code, exc.reason)
            return
        except LinkClosed:
            self.stats.handshake_failures += 1
            return

        key = hello.client_key
        log = log.bind(node_key=key.hex()[:16])
        try:
            # A stuck authorizer must not hold connections open forever.
            with trio.fail_after(self.limits.handshake_timeout):
                allowed = await self._authorize(key)
        except trio.TooSlowError:
            log.warning("derp.authorize_timeout")
            self.stats.refused += 1
            await link.close(_CLOSE_INTERNAL_ERROR, "authorization timed out")
            return
        except Exception:
            log.exception("derp.authorize_failed")
            self.stats.refused += 1
            await link.close(_CLOSE_INTERNAL_ERROR, "authorization failed")
            return
        if not allowed:
            self.stats.refused += 1
            log.info("derp.refused")
            await link.close(CLOSE_POLICY_VIOLATION, "node key not authorized on this relay")
            return

        core.accept(
            ServerInfo(
                PROTOCOL_VERSION,
                token_bucket_bytes_per_second=self.limits.bytes_per_second,
                token_bucket_bytes_burst=self.limits.burst if self.limits.bytes_per_second else 0,
                send_queue_packets=self.limits.send_queue_packets,
            )
        )
        try:
            await link.send(core.data_to_send())
        except LinkClosed:
            return
        client = _Client(key, link, self.limits, trio.current_time(), log)
        try:
            async with trio.open_nursery() as nursery:
                client.cancel_scope = nursery.cancel_scope
                self._register(client)
                nursery.start_soon(self._writer, client)
                nursery.start_soon(self._timer, client)
                await self._reader(client, core)
                nursery.cancel_scope.cancel()
        finally:
            self._unregister(client)
            if client.control and client.close_reason != "client too slow to read":
                # Let a replaced or revoked client read why (HEALTH, RESTARTING).
                await _flush(link, client.control)
            await link.close(client.close_code, client.close_reason)

    async def _read_hello(self, link: Link, core: ServerConnection) -> ClientHello:
        while True:
            core.receive_data(await link.receive())
            event = core.next_event()
            if isinstance(event, ClientHello):
                return event

    async def _reader(self, client: _Client, core: ServerConnection) -> None:
        data = b""  # frames that arrived with CLIENT_INFO are still buffered
        limited = False
        while True:
            try:
                core.receive_data(data)
            except RemoteProtocolError as exc:
                self.stats.protocol_errors += 1
                client.log.info("derp.protocol_error", reason=exc.reason)
                client.close(exc.close_code, exc.reason)
                return
            while (event := core.next_event()) is not None:
                if limited and isinstance(event, SendPacket):
                    self.stats.drop("rate_limited")
                    continue
                self._handle_event(client, event)
            try:
                data = await client.link.receive()
            except RemoteProtocolError as exc:
                self.stats.protocol_errors += 1
                client.close(exc.close_code, exc.reason)
                return
            except LinkClosed:
                client.close(_CLOSE_NORMAL, "")
                return
            # Bytes are counted per message (what the client made the network carry);
            # packets completed by a message over the budget are dropped, framing
            # still advances because frames may span messages.
            limited = not client.rate_bucket.take(
                trio.current_time(), min(len(data), self.limits.burst)
            )

    def _handle_event(self, client: _Client, event: object) -> None:
        if isinstance(event, SendPacket):
            self._route(client, event.dst, event.data)
        elif isinstance(event, Ping):
            self.stats.pings += 1
            self._queue_control(client, encode_pong(event.data))
        elif isinstance(event, NotePreferred) and event.preferred != client.preferred:
            self.stats.clients_preferred += 1 if event.preferred else -1
            client.preferred = event.preferred
        # Pongs to our (never sent) pings and skipped frames need nothing.

    def _route(self, src: _Client, dst_key: bytes, data: bytes) -> None:
        self.stats.packets_received += 1
        self.stats.bytes_received += len(data)
        if len(data) > self.limits.max_packet:
            self.stats.drop("too_large")
            return
        dst = self._clients.get(dst_key)
        if dst is None:
            self.stats.drop("unknown_dest")
            if src.peer_gone_bucket.take(trio.current_time()):
                self.stats.peer_gone_sent += 1
                self._queue_control(src, encode_peer_gone(dst_key, PeerGoneReason.NOT_HERE))
            return
        if len(dst.packets) >= self.limits.send_queue_packets:
            dst.packets.popleft()
            self.stats.drop("queue_full")
        dst.packets.append(recv_packet_parts(src.key, data))
        dst.wake()
        self.stats.packets_relayed += 1
        self.stats.bytes_relayed += len(data)
        watchers = self._watchers.setdefault(src.key, set())
        if dst_key not in watchers:
            watchers.add(dst_key)
            self._watching.setdefault(dst_key, set()).add(src.key)

    def _queue_control(self, client: _Client, frame: bytes) -> None:
        if len(client.control) >= self.limits.control_queue_frames:
            self.stats.drop("control_queue_full")
            return
        client.control.append(frame)
        client.wake()

    async def _writer(self, client: _Client) -> None:
        # No cancel scope per write or per wait (a deadline costs the scheduler more
        # than the write itself): _timer watches writes and sends keep-alives.
        while True:
            if not client.control and not client.packets:
                client.wakeup = trio.Event()
                await client.wakeup.wait()
                continue
            parts: list[bytes] = []
            size = 0
            # Control frames first: a pong or PEER_GONE should not wait behind data.
            control = client.control
            while control and size < _MAX_BATCH_BYTES:
                frame = control.popleft()
                parts.append(frame)
                size += len(frame)
            packets = client.packets
            while packets and size < _MAX_BATCH_BYTES:
                head, data = packets.popleft()
                parts += (head, data)
                size += len(head) + len(data)
            client.writing_since = trio.current_time()
            try:
                await client.link.send_parts(parts)  # gathered by the kernel: no join
            except LinkClosed:
                client.close(_CLOSE_NORMAL, "")
                return
            # Any frame proves liveness as well as a keep-alive would.
            client.last_write = trio.current_time()
            client.writing_since = None
            if not client.control and not client.packets:
                client.flushed.set()

    async def _timer(self, client: _Client) -> None:
        """Close ``client`` when one write has taken ``write_timeout``; queue a
        KEEP_ALIVE when nothing was written for the keep-alive interval."""
        limits = self.limits
        interval = limits.keepalive_interval + self._rng.uniform(0, limits.keepalive_jitter)
        while True:
            now = trio.current_time()
            since = client.writing_since
            if since is None:
                if now - client.last_write >= interval:
                    client.control.append(encode_keep_alive())
                    self.stats.keepalives_sent += 1
                    client.last_write = now  # the writer sets it again once written
                    client.wake()
                # The next keep-alive, and at most write_timeout after any write that
                # starts meanwhile.
                await trio.sleep_until(
                    min(client.last_write + interval, now + limits.write_timeout)
                )
            elif now - since >= limits.write_timeout:
                self.stats.write_timeouts += 1
                client.log.info("derp.write_timeout")
                client.close(CLOSE_POLICY_VIOLATION, "client too slow to read")
                return
            else:
                await trio.sleep_until(since + limits.write_timeout)

    # --- the client table ---

    def _register(self, client: _Client) -> None:
        old = self._clients.get(client.key)
        self._clients[client.key] = client
        if old is not None:
            self.stats.duplicates_replaced += 1
            self.stats.clients_current -= 1
            if old.preferred:
                self.stats.clients_preferred -= 1
            old.preferred = False
            client.log.info("derp.duplicate_replaced")
            # Best effort: the HEALTH frame explains the close to clients that read it.
            old.control.append(encode_health("replaced by a newer connection with this key"))
            old.close(CLOSE_POLICY_VIOLATION, "replaced by a newer connection with this key")
        self.stats.clients_current += 1
        self.stats.clients_total += 1
        client.log.info("derp.connected", clients=self.stats.clients_current)

    def _unregister(self, client: _Client) -> None:
        if self._clients.get(client.key) is not client:
            return  # replaced by a newer connection: the key is still here
        del self._clients[client.key]
        self.stats.clients_current -= 1
        if client.preferred:
            self.stats.clients_preferred -= 1
        client.log.info("derp.disconnected", reason=client.close_reason or "closed by client")
        gone = encode_peer_gone(client.key, PeerGoneReason.DISCONNECTED)
        for watcher_key in self._watchers.pop(client.key, ()):
            self._watching.get(watcher_key, set()).discard(client.key)
            watcher = self._clients.get(watcher_key)
            if watcher is not None:
                self.stats.peer_gone_sent += 1
                self._queue_control(watcher, gone)
        for source_key in self._watching.pop(client.key, ()):
            watchers = self._watchers.get(source_key)
            if watchers is not None:
                watchers.discard(client.key)
                if not watchers:
                    del self._watchers[source_key]


async def _flush(link: Link, frames: deque[bytes]) -> None:
    with trio.move_on_after(0.5) as scope:
        scope.shield = True
        try:
            await link.send(b"".join(frames))
        except LinkClosed:
            pass
    frames.clear()
