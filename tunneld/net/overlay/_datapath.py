"""Mux over WireGuard, the data path: mux packets encrypted onto their path, what
arrives over UDP or a relay decrypted into the peer's mux, and WireGuard's timers."""

from __future__ import annotations

import errno
import math
from collections.abc import Sequence
from typing import NoReturn

import trio

from tunneld.net.mux import MuxConnection
from tunneld.net.overlay._ids import HEADER_SIZE, Verdict
from tunneld.net.overlay._node import (
    _DERP_SOURCE,
    RELAY_PATH,
    _format,
    _is_path_packet,
    _OverlayBase,
    _Peer,
    log,
)
from tunneld.net.wireguard_udp import UdpAddress, unpack_address
from tunneld.proto.mux import CallMeMaybe, ConnectionClosed, Event, Path, PathResponse
from tunneld.proto.noise import (
    DataReceived,
    HandshakeCompleted,
    HandshakeTimedOut,
    Outgoing,
    RemoteProtocolError,
)

__all__ = ["_DataPath"]

_WG_HANDSHAKE_TYPES = (1, 2, 3)
_WG_TRANSPORT = b"\x04"  # first byte of a WireGuard transport message
_PADDING = tuple(bytes(n) for n in range(16))  # zeros to pad a payload to 16 bytes


class _DataPath(_OverlayBase):
    """Moves mux packets through WireGuard, in both directions, on every path."""

    def _on_mux_event(self, link: _Peer, mux: MuxConnection, event: Event) -> None:
        if mux is not link.mux:
            return  # a replaced connection winding down
        if isinstance(event, PathResponse):
            if event.path == RELAY_PATH:
                link.rtt = event.rtt
                return
            now = trio.current_time()
            link.last_direct_rx = now
            link.rtt = event.rtt
            link.punch.stop()
            if link.direct != event.path:
                link.direct = event.path
                link.mux.set_path(event.path)
                log.info("overlay.path_direct", peer=link.id, endpoint=event.path.address.decode())
                self._pmtu_start(link, now)
                self._notify()
            elif link.pmtu is not None:
                link.pmtu.rtt = event.rtt
                if link.pmtu.acknowledged(event.challenge, now) is not None:
                    self._pmtu_probe(link, now)  # the next size at once
        elif isinstance(event, CallMeMaybe):
            self._on_call_me_maybe(link, event)
        elif isinstance(event, ConnectionClosed):
            log.warning("overlay.mux_closed", peer=link.id, code=event.error_code)
            if link.id in self._peers:
                self._renew_mux(link, f"closed ({event.error_code})")

    async def _send_mux_many(self, link: _Peer, datagrams: Sequence[tuple[bytes, Path]]) -> None:
        """Encrypt mux packets for ``link``; each goes on its path or the peer's route.

        One clock read, route and header for the batch. A probe or a probe's answer
        goes on exactly its path (a copy on the relay would validate a dead direct
        path); the rest follows the peer's route.
        """
        if self._by_key.get(link.key) is not link:
            await trio.lowlevel.checkpoint()
            return  # the peer is gone (or replaced): nothing to send to
        now = trio.current_time()
        wall = self._wall()
        core = self._core
        key = link.key
        header = link.ids.header()
        current = link.mux.core.path
        route: list[Path] | None = None
        address: UdpAddress | None = None  # set when the route is one direct path
        sock = self._sock
        for data, path in datagrams:
            # Padded here (WireGuard pads to 16 with zeros, which the mux reads as
            # PADDING frames): one join instead of two concatenations per packet.
            core.send(
                key, b"".join((header, data, _PADDING[-(HEADER_SIZE + len(data)) % 16])), now, wall
            )
            outgoing = core.datagrams_to_send(now)
            link.bytes_sent += len(data)
            if (path is current or path == current) and not _is_path_packet(data):
                if route is None:
                    route = self._route(link, now)
                    if len(route) == 1 and route[0] != RELAY_PATH:
                        parts: tuple[str, str, int] = route[0].key  # type: ignore[assignment]
                        address = (parts[1], parts[2])
                targets = route
            else:
                targets = [path]
            if (
                address is not None
                and targets is route
                and sock is not None
                and len(outgoing) == 1
                and outgoing[0].data[:1] == _WG_TRANSPORT
            ):
                # The data plane: one transport packet to one direct path.
                try:
                    if sock.send_now(outgoing[0].data, address):
                        continue
                except OSError as exc:  # a lost datagram; the mux recovers
                    log.debug("overlay.udp_send_failed", address=_format(address), error=str(exc))
                    if exc.errno == errno.EMSGSIZE:
                        self._too_big(address, len(outgoing[0].data))
                    continue
            await self._transmit(outgoing, targets)
            # We may have waited: the peer may be gone and the socket rebound since.
            if self._by_key.get(key) is not link:
                return
            sock = self._sock

    def _route(self, link: _Peer, now: float) -> list[Path]:
        if link.direct is None:
            return [RELAY_PATH]
        if now - link.last_direct_rx > self._unsure():
            return [link.direct, RELAY_PATH]  # unsure: both until it answers or times out
        return [link.direct]

    async def _transmit(self, outgoing: list[Outgoing], targets: list[Path] | None) -> None:
        # No lock: sends do not wait unless the socket buffer is full, and then the
        # socket serialises the waiting (OverlaySocket.send).
        for packet in outgoing:
            if packet.destination is not None:
                await self._send_to_source(packet.destination, packet.data)
                continue
            if packet.peer is None:
                continue
            link = self._by_key.get(packet.peer)
            if link is None:
                continue
            paths = targets if targets is not None else self._route(link, trio.current_time())
            if packet.data[:1] == b"\x01":
                link.last_initiation = packet.data
            if packet.data and packet.data[0] in _WG_HANDSHAKE_TYPES and RELAY_PATH not in paths:
                paths = [*paths, RELAY_PATH]
            for path in paths:
                await self._send_path(link.key, path, packet.data)

    async def _send_path(self, key: bytes, path: Path, data: bytes) -> None:
        if path == RELAY_PATH:
            # Never wait on the relay's TCP here (the receive path calls this too): a
            # full queue is a lost datagram, which the mux and WireGuard recover from.
            # While the relay is away the queue holds what it can: above all the first
            # handshake initiation, which WireGuard would otherwise repeat only in 5 s.
            try:
                self._relay_send.send_nowait((key, data))
            except trio.WouldBlock:
                self.relay_dropped += 1
            return
        key_parts: tuple[str, str, int] = path.key  # type: ignore[assignment]
        await self._sendto(data, (key_parts[1], key_parts[2]))

    async def _send_to_source(self, source: bytes, data: bytes) -> None:
        if source.startswith(_DERP_SOURCE):
            await self._send_path(source[len(_DERP_SOURCE) :], RELAY_PATH, data)
            return
        try:
            address = unpack_address(source)
        except ValueError:
            return
        await self._sendto(data, address)

    async def _sendto(self, data: bytes, address: UdpAddress) -> None:
        assert self._sock is not None
        try:
            await self._sock.send(data, address)
        except (OSError, trio.ClosedResourceError) as exc:  # closed: _rebind, lost datagram
            log.debug("overlay.udp_send_failed", address=_format(address), error=str(exc))
            if isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE:
                self._too_big(address, len(data))

    async def _receive_wg(self, data: bytes, source: bytes, path: Path) -> None:
        now = trio.current_time()
        core = self._core
        pending = core.datagrams_to_send(now)
        if pending:
            await self._transmit(pending, None)
        try:
            core.receive_datagram(data, source, now, self._wall())
        except RemoteProtocolError as exc:
            log.debug("overlay.wg_rejected", path=str(path.key), reason=str(exc))
            return
        self._drain_events(path, now)
        pending = core.datagrams_to_send(now)
        if pending:
            await self._transmit(pending, None)

    def _drain_events(self, path: Path | None, now: float | None = None) -> None:
        core = self._core
        while (event := core.next_event()) is not None:
            link = self._by_key.get(event.peer)
            if link is None:
                continue
            if type(event) is DataReceived:  # the data path first: one test per packet
                payload = event.payload
                if path is None or len(payload) <= HEADER_SIZE:
                    continue
                verdict = link.ids.accept(payload[:HEADER_SIZE])
                if verdict is Verdict.DROP:
                    continue
                if verdict is Verdict.RENEW:
                    self._renew_mux(link, "peer started a new connection")
                    if link.ids.accept(payload[:HEADER_SIZE]) is not Verdict.DELIVER:
                        continue
                if now is None:
                    now = trio.current_time()
                direct = link.direct
                if direct is not None and (path is direct or path == direct):
                    link.last_direct_rx = now
                link.bytes_received += len(payload)
                # A view, not a copy: the mux copies stream bytes into its buffers.
                link.mux.receive_datagram(memoryview(payload)[HEADER_SIZE:], path, now)
            elif isinstance(event, HandshakeCompleted):
                if not link.handshake_done:
                    log.info("overlay.handshake", peer=link.id, initiator=event.initiator)
                link.handshake_done = True
                self._notify()
            elif isinstance(event, HandshakeTimedOut):
                log.info("overlay.handshake_timed_out", peer=link.id)

    async def _wg_pump(self) -> NoReturn:
        """WireGuard timers (retransmitted handshakes, keepalives, rekeys)."""
        while True:
            deadline = self._core.get_timer()
            with trio.move_on_at(min(deadline or math.inf, trio.current_time() + 0.5)):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            now = trio.current_time()
            deadline = self._core.get_timer()
            if deadline is not None and now >= deadline:
                self._core.handle_timer(now, self._wall())
                self._drain_events(None)
            pending = self._core.datagrams_to_send(now)
            if pending:
                await self._transmit(pending, None)
