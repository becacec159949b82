"""Direct paths: the UDP reader, STUN, probing and hole punching, path MTU, and
re-probing after the host slept."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import secrets
import socket
from typing import NoReturn

import trio

from tunneld.net.overlay._node import _format, _OverlayBase, _Peer, _udp_path, log
from tunneld.net.overlay._pmtu import PmtuSearch
from tunneld.net.overlay._punch import parse_call_me_maybe
from tunneld.net.overlay._udp import OverlaySocket
from tunneld.net.wireguard_udp import UdpAddress, pack_address
from tunneld.proto.mux import CallMeMaybe, ConnectionClosedError
from tunneld.proto.noise import Outgoing
from tunneld.proto.stun import RemoteProtocolError as StunRemoteProtocolError
from tunneld.proto.stun import build_binding_request, looks_like_stun, parse_binding_response

__all__ = ["_DirectPaths"]

_MAX_DATAGRAM = 65535
_READ_BURST = 32  # datagrams the UDP reader handles between two yields
_MAX_UDP_SOURCES = 1024  # cached source addresses (cleared when full)


class _DirectPaths(_OverlayBase):
    """Finds, keeps and sizes direct UDP paths to peers; notices sleep."""

    async def _udp_reader(self) -> NoReturn:
        # Read whatever is queued without waiting, yield every _READ_BURST datagrams
        # (so the tasks this wakes get to run), wait only when the socket is empty.
        sources = self._udp_sources
        burst = 0
        while True:
            sock = self._sock
            assert sock is not None
            try:
                received = sock.receive_now(_MAX_DATAGRAM)
                if received is None:
                    burst = 0
                    await sock.wait_readable()
                    continue
            except trio.ClosedResourceError:
                await trio.lowlevel.checkpoint()
                continue  # _rebind replaced the socket under us; read the new one
            except OSError:
                continue
            burst += 1
            if burst >= _READ_BURST:
                burst = 0
                await trio.lowlevel.checkpoint()
            data, udp = received
            # WireGuard transport packets (type 4) never go to the STUN parser.
            if data[:1] != b"\x04" and looks_like_stun(data):
                self._stun_answer(data)
                continue
            known = sources.get(udp)
            if known is None:
                try:
                    known = (pack_address(udp), _udp_path(udp))
                except ValueError:
                    continue
                if len(sources) >= _MAX_UDP_SOURCES:
                    sources.clear()
                sources[udp] = known
            await self._receive_wg(data, known[0], known[1])

    def _stun_answer(self, data: bytes) -> None:
        try:
            response = parse_binding_response(data)
        except StunRemoteProtocolError:
            return
        channel = self._stun_pending.get(response.transaction_id)
        if channel is not None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                channel.send_nowait(response.address)

    async def _stun_query(self, server: UdpAddress) -> UdpAddress | None:
        """Our address as ``server`` sees our UDP socket (RFC 5389 Binding), or None.

        Sent from the overlay's own socket (its mapping is what peers can reach); the
        reader task hands the answer over by transaction id.
        """
        assert self._sock is not None
        transaction_id = secrets.token_bytes(12)
        request = build_binding_request(transaction_id, software="tunneld")
        send, receive = trio.open_memory_channel[UdpAddress](1)
        self._stun_pending[transaction_id] = send
        try:
            rto = 0.5  # RFC 5389 section 7.2.1: RTO 500 ms, doubling
            for _ in range(4):
                await self._sendto(request, server)
                with trio.move_on_after(rto):
                    return await receive.receive()
                rto *= 2
            return None
        finally:
            del self._stun_pending[transaction_id]

    async def _stun_loop(self, server: tuple[str, int]) -> NoReturn:
        """Learn our reflexive address now and every ``stun_interval``; re-announce when
        it changes."""
        while True:
            try:
                infos = await trio.socket.getaddrinfo(server[0], server[1], type=socket.SOCK_DGRAM)
                target = (str(infos[0][4][0]), int(infos[0][4][1]))
                mapped = await self._stun_query(target)
            except OSError as exc:
                log.warning(
                    "overlay.stun_failed", server=f"{server[0]}:{server[1]}", error=str(exc)
                )
                mapped = None
            if mapped is not None and mapped != self.reflexive:
                self.reflexive = mapped
                log.info("overlay.reflexive", address=_format(mapped))
                self._restart_punching("reflexive address changed")
                await self._coord_send(self._announce())
                self._notify()
            with trio.move_on_after(self.config.stun_interval):
                await self._woken.wait()  # after a sleep, ask again at once

    async def _prober(self) -> NoReturn:
        """Probe direct paths; fall back to the relay when the direct path goes silent."""
        while True:
            await trio.sleep(self.config.probe_interval)
            now = trio.current_time()
            for link in list(self._peers.values()):
                if link.gone_at is not None and now - link.gone_at > self.config.forget_after:
                    self._drop_peer(link)
                    continue
                if not link.handshake_done and link.online:
                    # The first initiation often meets a relay the peer has not joined
                    # yet. WireGuard makes a new one only every 5 s; in between we
                    # repeat the last one byte for byte (a duplicate the responder
                    # rejects as a replay if the first did arrive).
                    self._core.initiate(link.key, now, self._wall())
                    self._wake_pump()
                    if link.last_initiation is not None:
                        again = Outgoing(link.key, None, link.last_initiation)
                        await self._transmit([again], None)
                    continue
                if link.mux.closed is not None:
                    continue
                if (
                    link.direct is not None
                    and now - link.last_direct_rx > self.config.direct_timeout
                ):
                    log.info("overlay.path_relay", peer=link.id, reason="direct path silent")
                    link.direct = link.pmtu = None
                    link.mux.set_path(self._relay_path_for(link))
                    link.punch.restart(now, "direct path silent")
                    self._notify()
                if link.direct is not None:
                    # Heartbeat: the validated path stays trusted while it answers.
                    with contextlib.suppress(ConnectionClosedError):
                        link.mux.send_path_probe(link.direct, secrets.token_bytes(8))
                    self._pmtu_probe(link, now)
                    continue
                if not link.punch.running and link.punch.bursts == 0:
                    link.punch.restart(now, "session up")
                if link.punch.due(now):
                    self._punch_try(link, now)

    def _punch_try(self, link: _Peer, now: float) -> None:
        """One hole-punching try (docs/overlay.md): CALL_ME_MAYBE with our endpoints
        over the relay, so the peer probes us now, and a probe to each of its candidates."""
        link.punch.note_try(now)
        try:
            ours = self._endpoints() if self.config.call_me_maybe else ()
            if ours:
                link.mux.send_call_me_maybe([endpoint.encode() for endpoint in ours])
                link.call_me_maybe_sent += 1
            for path in link.candidate_paths():
                link.mux.send_path_probe(path, secrets.token_bytes(8), self._validation_size())
        except ConnectionClosedError:  # nothing to probe on a closed mux
            return
        log.debug(
            "overlay.punch",
            peer=link.id,
            attempt=link.punch.tried,
            reason=link.punch.reason,
            call_me_maybe=bool(ours),
        )

    def _on_call_me_maybe(self, link: _Peer, event: CallMeMaybe) -> None:
        """The peer is probing its candidates of ours right now: probe its endpoints at
        once, so both NATs open for each other within a relay round trip."""
        link.call_me_maybe_received += 1
        link.called = parse_call_me_maybe(event.endpoints)
        now = trio.current_time()
        # Bounded: however many CALL_ME_MAYBE frames arrive, at most two probe rounds
        # per probe_interval.
        if now - link.last_called_probe < self.config.probe_interval / 2:
            return
        link.last_called_probe = now
        log.info("overlay.call_me_maybe", peer=link.id, endpoints=len(link.called))
        for path in link.candidate_paths():
            with contextlib.suppress(ConnectionClosedError):
                link.mux.send_path_probe(path, secrets.token_bytes(8), self._validation_size())

    # -- path MTU (docs/overlay.md, "Path MTU"; the search is _pmtu.PmtuSearch) --------

    def _validation_size(self) -> int:
        """Probes that validate a direct path are padded to the base datagram size
        (as QUIC pads PATH_CHALLENGE): with don't-fragment set, a path that cannot
        carry it must not carry our data either."""
        return self.config.mux.max_datagram_size

    def _pmtu_start(self, link: _Peer, now: float) -> None:
        """A new direct path starts at the base size and searches upwards at once."""
        sock, path = self._sock, link.direct
        link.pmtu = None
        if path is None or sock is None or not sock.dont_fragment:
            return
        if not self.config.pmtu_discovery:
            return
        link.pmtu = PmtuSearch(
            self.config.mux.max_datagram_size,
            now,
            ipv6=":" in str(path.key[1]),  # type: ignore[index]
            maximum=self.config.max_direct_datagram,
            probe_timeout=self.config.probe_interval,
            confirm_interval=self.config.probe_interval,
        )
        self._pmtu_probe(link, now)

    def _pmtu_probe(self, link: _Peer, now: float) -> None:
        """Send the probe the search wants now (if any); carry its size to the mux."""
        search = link.pmtu
        if search is None or link.direct is None:
            return
        state = search.state
        size = search.due(now)
        self._pmtu_apply(link)  # a timeout may have found a black hole
        if search.state is not state:
            self._notify()
        if size is None:
            return
        challenge = secrets.token_bytes(8)
        search.sent(challenge, size, now)
        with contextlib.suppress(ConnectionClosedError):
            link.mux.send_path_probe(link.direct, challenge, size)

    def _pmtu_apply(self, link: _Peer) -> None:
        """Give the direct path (and the mux sending on it) the search's size."""
        search, path = link.pmtu, link.direct
        if search is None or path is None:
            return
        old = path.max_datagram_size or self.config.mux.max_datagram_size
        if search.size == old:
            return
        link.direct = dataclasses.replace(path, max_datagram_size=search.size)
        link.mux.set_path(link.direct)
        log.info(
            "overlay.path_mtu",
            peer=link.id,
            datagram=search.size,
            previous=old,
            state=search.state.value,
            black_holes=search.black_holes,
        )
        if search.size < old:
            # Bigger packets may be lost in a black hole: a PING's ACK lets loss
            # detection resend their frames (re-split to the new size) at once.
            with contextlib.suppress(ConnectionClosedError):
                link.mux.core.send_ping()
        self._notify()

    def _too_big(self, address: UdpAddress, datagram: int) -> None:
        """Our kernel refused a ``datagram``-byte send to ``address`` (EMSGSIZE: bigger
        than the outgoing link's MTU, don't-fragment being set)."""
        now = trio.current_time()
        for link in self._peers.values():
            path, search = link.direct, link.pmtu
            if path is None or search is None or tuple(path.key[1:]) != address:  # type: ignore[index]
                continue
            search.too_big(datagram, now)
            self._pmtu_probe(link, now)

    def _restart_punching(self, reason: str) -> None:
        """Our endpoints (or the network) changed: a fresh burst for every peer without
        a direct path."""
        now = trio.current_time()
        for link in self._peers.values():
            if link.direct is None and link.handshake_done:
                link.punch.restart(now, reason)

    # -- sleep and wake ---------------------------------------------------------------

    async def _wake_watch(self) -> NoReturn:
        """Notice the host sleeping: trio's clock is CLOCK_MONOTONIC, which stops while
        the machine is suspended; the wall clock does not. Wall time running more than
        1.5 poll periods ahead of monotonic time between two polls means we were away.

        The two clocks are compared with each other, not with the poll period: a process
        starved of CPU wakes late from its sleep on both clocks alike, and that is not a
        suspend (re-validating every path then would only add load)."""
        period = self.config.wake_poll
        last_wall, last_mono = self._wall(), trio.current_time()
        while True:
            await trio.sleep(period)
            wall, mono = self._wall(), trio.current_time()
            away = (wall - last_wall) - (mono - last_mono)
            last_wall, last_mono = wall, mono
            if away > 1.5 * period:
                await self._on_wake(away)

    async def _on_wake(self, away: float) -> None:
        """After a sleep nothing we knew about the network is to be trusted: NAT
        mappings expired, the relay's TCP may be dead, the interface may be another."""
        self.wakes += 1
        log.info("overlay.woke", away_s=round(away, 1), peers=len(self._peers))
        self._rebind()
        now = trio.current_time()
        for link in self._peers.values():
            if link.direct is not None:
                link.direct = link.pmtu = None
                link.last_direct_rx = -math.inf
                if link.mux.closed is None:
                    link.mux.set_path(self._relay_path_for(link))
            if link.handshake_done and link.mux.closed is None:
                # A fresh burst, tried at once: CALL_ME_MAYBE makes the peer (which
                # knows nothing of our sleep) punch from its side at the same moment.
                link.punch.restart(now, "woke up")
                self._punch_try(link, now)
            if not link.handshake_done and link.online:
                self._core.initiate(link.key, now, self._wall())
                self._wake_pump()
        self._notify()
        # Cuts every reconnect backoff short (with a fresh attempt count) and the STUN
        # loop's wait.
        self._woken.set()
        self._woken = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._check_relay)

    def _rebind(self) -> None:
        """A fresh UDP socket on the same address (a new port if that is taken).

        Synchronous, so the reader never sees the closed socket without the new one.
        """
        old = self._sock
        assert old is not None
        assert self.local_address is not None
        old.close()
        family = socket.AF_INET6 if ":" in self.local_address[0] else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_DGRAM)
        try:
            raw.bind(self.local_address)
        except OSError:
            raw.bind((self.local_address[0], 0))
        name = raw.getsockname()
        self._sock = OverlaySocket(raw)
        moved = (str(name[0]), int(name[1])) != self.local_address
        self.local_address = (str(name[0]), int(name[1]))
        log.info("overlay.rebound", udp=_format(self.local_address), moved=moved)
        if moved:
            self._restart_punching("our endpoints changed")
            assert self._nursery is not None
            self._nursery.start_soon(self._coord_send, self._announce())
