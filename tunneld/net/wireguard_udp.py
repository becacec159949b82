"""A trio driver for one :class:`~tunneld.proto.noise.WireGuardCore` over one UDP socket.

The core is sans-IO; this adapter owns the I/O around it: a reader task feeds every
datagram to ``receive_datagram`` with a monotonic ``now`` (trio's clock) and the wall
clock (for TAI64N), and a pump task sends whatever ``datagrams_to_send`` returns and
calls ``handle_timer`` when ``get_timer`` says so. Events go out on a memory channel.

Endpoints: the core names peers by public key and leaves addresses to us. A peer's
endpoint is what :meth:`WireGuardUdp.set_endpoint` says, and — as WireGuard does
(paper §2.1, "built-in roaming") — it moves to the source address of the latest
authenticated datagram from that peer.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import trio

from tunneld.log import get_logger
from tunneld.proto.noise import (
    DataReceived,
    HandshakeCompleted,
    HandshakeTimedOut,
    Outgoing,
    RemoteProtocolError,
    WireGuardCore,
)

__all__ = [
    "UdpAddress",
    "WireGuardEvent",
    "WireGuardUdp",
    "WireGuardUdpStats",
    "pack_address",
    "unpack_address",
]

log = get_logger(__name__)

UdpAddress = tuple[str, int]
WireGuardEvent = HandshakeCompleted | DataReceived | HandshakeTimedOut

# WireGuard message types (paper §5.4): the driver peeks at the first byte only to
# keep statistics and to learn the endpoint an initiation came from.
_MESSAGE_INITIATION = 1
_MESSAGE_TRANSPORT = 4
_MAX_DATAGRAM = 65535


def pack_address(address: UdpAddress) -> bytes:
    """The core's opaque ``source``: packed IP (4 or 16 bytes) followed by the port (2 bytes).

    Raises:
        ValueError: ``address`` is not a numeric IP and port.
    """
    host, port = address[0], address[1]
    return ipaddress.ip_address(host.split("%", 1)[0]).packed + port.to_bytes(2, "big")


def unpack_address(source: bytes) -> UdpAddress:
    """The inverse of :func:`pack_address`.

    Raises:
        ValueError: ``source`` is neither 6 nor 18 bytes long.
    """
    if len(source) not in (6, 18):
        raise ValueError(f"a packed UDP address is 6 or 18 bytes, got {len(source)}")
    return str(ipaddress.ip_address(source[:-2])), int.from_bytes(source[-2:], "big")


@dataclass(slots=True)
class WireGuardUdpStats:
    """Counters of one driver (datagrams are UDP packets on the outer socket)."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    datagrams_rejected: int = 0
    transport_decrypted: int = 0
    send_errors: int = 0
    events_dropped: int = 0
    last_send_error: str | None = None
    last_reject_reason: str | None = None


class WireGuardUdp:
    """Runs a WireGuardCore on a bound trio UDP socket.

    Args:
        core: the node's sans-IO WireGuard state; this driver is its only user.
        sock: a bound ``SOCK_DGRAM`` trio socket; the driver reads and writes it and
            never closes it (the caller owns it).
        wall: the UNIX-time clock for TAI64N timestamps (injectable for tests).
        event_buffer: events kept for a slow consumer; beyond it events are dropped
            and counted in ``stats.events_dropped`` (the network is never blocked).
    """

    def __init__(
        self,
        core: WireGuardCore,
        sock: trio.socket.SocketType,
        *,
        wall: Callable[[], float] = time.time,
        event_buffer: int = 256,
    ) -> None:
        self.core = core
        self.stats = WireGuardUdpStats()
        self._sock = sock
        self._wall = wall
        self._endpoints: dict[bytes, UdpAddress] = {}
        self._event_send, self.events = trio.open_memory_channel[WireGuardEvent](event_buffer)
        self._send_lock = trio.StrictFIFOLock()
        self._wakeup = trio.Event()
        self._outbox: list[tuple[bytes, UdpAddress]] = []

    @property
    def local_address(self) -> UdpAddress:
        """The (host, port) the socket is bound to."""
        name = self._sock.getsockname()
        return str(name[0]), int(name[1])

    def set_endpoint(self, peer: bytes, address: UdpAddress) -> None:
        """Send to ``peer`` at ``address`` (a numeric IP and port) from now on."""
        self._endpoints[peer] = (address[0], address[1])

    def endpoint(self, peer: bytes) -> UdpAddress | None:
        """Where packets for ``peer`` currently go, or None if not known yet."""
        return self._endpoints.get(peer)

    def initiate(self, peer: bytes) -> None:
        """Queue a handshake initiation to ``peer``; the pump task sends it."""
        self.core.initiate(peer, trio.current_time(), self._wall())
        self._wake()

    def send(self, peer: bytes, payload: bytes) -> None:
        """Encrypt ``payload`` (``b""`` is a keepalive) for ``peer``; the pump task sends it.

        Without a session the core starts a handshake and holds the payload until it
        completes. Does not block; use :meth:`flush` to wait until it has left.
        """
        self.core.send(peer, payload, trio.current_time(), self._wall())
        self._wake()

    async def flush(self) -> None:
        """Send everything the core has queued now.

        Send errors (e.g. network unreachable) are counted and logged, not raised.
        Cancellation may leave some datagrams queued for the next flush.
        """
        async with self._send_lock:
            self._collect()
            while self._outbox:
                data, address = self._outbox[0]
                try:
                    await self._sock.sendto(data, address)
                except OSError as exc:
                    self.stats.send_errors += 1
                    self.stats.last_send_error = exc.strerror or str(exc)
                    log.warning(
                        "wg_udp.send_failed",
                        address=f"{address[0]}:{address[1]}",
                        error=self.stats.last_send_error,
                    )
                else:
                    self.stats.datagrams_sent += 1
                del self._outbox[0]

    def _collect(self, pending: list[Outgoing] | None = None) -> None:
        """Move the core's queued datagrams to the outbox, resolving their addresses now."""
        if pending is None:
            pending = self.core.datagrams_to_send(trio.current_time())
        for outgoing in pending:
            address: UdpAddress | None
            if outgoing.destination is not None:
                address = _maybe_unpack(outgoing.destination)
            elif outgoing.peer is not None:
                address = self._endpoints.get(outgoing.peer)
            else:
                address = None
            if address is None:
                log.debug("wg_udp.no_endpoint", size=len(outgoing.data))
                continue
            self._outbox.append((outgoing.data, address))

    async def serve(
        self, *, task_status: trio.TaskStatus[UdpAddress] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Run the reader and the timer/send pump until cancelled.

        Reports the socket's bound address through ``task_status.started``. On
        cancellation it stops reading; anything still queued in the core stays there.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump)
            task_status.started(self.local_address)
            await self._read_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    def _wake(self) -> None:
        self._wakeup.set()

    async def _read_forever(self) -> NoReturn:
        while True:
            try:
                data, address = await self._sock.recvfrom(_MAX_DATAGRAM)
            except OSError as exc:
                # An ICMP error from an earlier send can surface here on some systems
                # (ECONNREFUSED); it says nothing about the next datagram.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self.stats.last_send_error = exc.strerror or str(exc)
                    continue
                raise
            self._receive(data, (str(address[0]), int(address[1])))

    def _receive(self, data: bytes, address: UdpAddress) -> None:
        self.stats.datagrams_received += 1
        try:
            source = pack_address(address)
        except ValueError:  # pragma: no cover - the kernel gives numeric addresses
            return
        # Whatever the core queued earlier is resolved now, so endpoints learned from
        # this datagram apply only to what it causes.
        self._collect()
        try:
            self.core.receive_datagram(data, source, trio.current_time(), self._wall())
        except RemoteProtocolError as exc:
            self.stats.datagrams_rejected += 1
            self.stats.last_reject_reason = str(exc)
            log.debug(
                "wg_udp.rejected",
                address=f"{address[0]}:{address[1]}",
                size=len(data),
                reason=str(exc),
            )
            return
        pending = self.core.datagrams_to_send(trio.current_time())
        message_type = data[0] if data else 0
        if message_type == _MESSAGE_TRANSPORT:
            self.stats.transport_decrypted += 1
        elif message_type == _MESSAGE_INITIATION:
            # The core has just queued the response to the initiating peer; it must go
            # to where the initiator is now (roaming, paper §2.1).
            for outgoing in pending:
                if outgoing.peer is not None and outgoing.destination is None:
                    self._endpoints[outgoing.peer] = address
        self._drain_events(address)
        self._collect(pending)
        self._wake()

    def _drain_events(self, address: UdpAddress | None) -> None:
        while (event := self.core.next_event()) is not None:
            if address is not None and isinstance(event, HandshakeCompleted | DataReceived):
                self._endpoints[event.peer] = address
            try:
                self._event_send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self.stats.events_dropped += 1

    async def _pump(self) -> NoReturn:
        while True:
            deadline = self.core.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            now = trio.current_time()
            deadline = self.core.get_timer()
            if deadline is not None and now >= deadline:
                self.core.handle_timer(now, self._wall())
                self._drain_events(None)
            await self.flush()


def _maybe_unpack(source: bytes) -> UdpAddress | None:
    try:
        return unpack_address(source)
    except ValueError:
        return None
