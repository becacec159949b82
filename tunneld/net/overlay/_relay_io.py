"""Relay I/O: the home DERP relay's connection (reader, writer, RESTARTING and
backoff), relay latency and home moves, and links to peers' home relays."""

from __future__ import annotations

import math
from typing import NoReturn

import trio

from tunneld.net.derp import DerpClient, DerpConnectError, DerpConnectionClosed
from tunneld.net.overlay._config import LinkState
from tunneld.net.overlay._node import (
    _DERP_SOURCE,
    RELAY_PATH,
    _OverlayBase,
    _Peer,
    log,
    relay_path,
)
from tunneld.net.overlay._relays import RelayPacer, fill_batch
from tunneld.proto.coord import HomeRelay
from tunneld.proto.derp import DerpEvent, RecvPacket, Restarting
from tunneld.proto.mux import ConnectionClosedError, Path

__all__ = ["_RelayIO"]

# A relay's RESTARTING hint is honoured up to these bounds (a relay cannot park us).
_MAX_RESTART_WAIT = 30.0
_MAX_RESTART_TRY = 300.0
_RESTART_RETRY_CAP = 1.0  # backoff cap while the relay said it is restarting


class _RelayIO(_OverlayBase):
    """The relay path: the home relay connection and links to other relays."""

    async def _relay_loop(self) -> NoReturn:
        attempt = 0
        while True:
            self.relay_state = LinkState.CONNECTING
            moved = False
            try:
                async with DerpClient.connect(
                    self._selector.home.url, self.config.private_key
                ) as derp:
                    # Published first: a relay link must see this relay's key at once, or
                    # a link to an alias URL of it could replace this connection.
                    self._derp = derp
                    self._set_home_window(relay_path(derp.server_info))
                    await derp.note_preferred(True)
                    self.relay_state = LinkState.CONNECTED
                    self.relay_error = None
                    attempt = 0
                    log.info("overlay.relay_connected", relay=self._selector.home.url)
                    self._notify()
                    self._nudge_peers()
                    pending, self._ready_pending = self._ready_pending, set()
                    for peer_id in sorted(pending):
                        if peer_id in self._peers:
                            await self._coord_send(self._coord.ready_for_handshake(peer_id))
                    # Cancelled when the home relay moves (_switch_home).
                    with trio.CancelScope() as scope:
                        self._home_scope = scope
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._relay_writer, derp)
                            await self._relay_reader(derp)
                    moved = scope.cancelled_caught
            except* (DerpConnectError, DerpConnectionClosed, OSError) as group:
                self.relay_error = "; ".join(str(exc) for exc in group.exceptions)
                log.warning("overlay.relay_lost", error=self.relay_error)
            finally:
                self._derp = None
                self._home_scope = None
                # The next home may be another relay (a move, or a URL that now
                # reaches a derper): derper's window until its SERVER_INFO says more.
                self._set_home_window(RELAY_PATH)
            if moved:
                attempt = 0
                continue  # straight to the new home relay
            self.relay_state = LinkState.BACKOFF
            hint, self._relay_restart = self._relay_restart, None
            if hint is not None:
                # RESTARTING: come back after the hint's delay, then retry briskly (a
                # backoff capped at a second) for as long as it said to keep trying.
                reconnect_in, try_for = hint
                self._restart_until = trio.current_time() + reconnect_in + try_for
                attempt = 0
                woken = self._woken
                with trio.move_on_after(reconnect_in):
                    await woken.wait()
                continue
            attempt += 1
            restarting = trio.current_time() < self._restart_until
            attempt = await self._backoff(attempt, _RESTART_RETRY_CAP if restarting else None)

    def _set_home_window(self, path: Path) -> None:
        """Make ``path`` the relay path through home, for every peer sent to there."""
        self._home_relay_path = path
        for link in self._peers.values():
            self._use_relay_window(link)

    def _nudge_peers(self) -> None:
        """A path came back: ping every peer so lost data is found without a long PTO,
        and retry handshakes that were dropped while the relay was away."""
        now = trio.current_time()
        for link in self._peers.values():
            if not link.handshake_done:
                self._core.initiate(link.key, now, self._wall())
                self._wake_pump()
            try:
                link.mux.core.send_ping()
            except ConnectionClosedError:
                continue
            link.mux._kick()

    async def _relay_reader(self, derp: DerpClient) -> None:
        # Whole batches: one task switch per read from the relay, not one per packet.
        while True:
            for event in await derp.receive_batch():
                await self._on_relay_event(event)

    async def _on_relay_event(self, event: DerpEvent) -> None:
        if type(event) is RecvPacket:
            await self._receive_wg(event.data, _DERP_SOURCE + event.src, RELAY_PATH)
        elif isinstance(event, Restarting):
            reconnect_in = min(event.reconnect_in_ms / 1000, _MAX_RESTART_WAIT)
            try_for = min(event.try_for_ms / 1000, _MAX_RESTART_TRY)
            self._relay_restart = (reconnect_in, try_for)
            log.info("overlay.relay_restarting", reconnect_in=reconnect_in, try_for=try_for)

    async def _on_link_packet(self, src: bytes, data: bytes) -> None:
        """A packet through a relay other than home (a peer's home relay)."""
        await self._receive_wg(data, _DERP_SOURCE + src, RELAY_PATH)

    def _home_keys(self) -> set[bytes]:
        derp = self._derp
        return set() if derp is None else {derp.server_key}

    def _on_relay_alias(self, url: str) -> None:
        """``url`` is our home relay under another name: never a link or candidate."""
        log.info("overlay.relay_alias", relay=url, home=self._selector.home.url)
        self._selector.alias(url)
        self._reroute_all()

    def _on_link_change(self, url: str) -> None:
        """A link to ``url`` opened or closed: its peers get that relay's window."""
        for link in self._peers.values():
            if self._peer_relays.get(link.key) == url:
                self._use_relay_window(link)

    def _route_relay(self, link: _Peer) -> None:
        """Send to ``link`` through its home relay when that is another relay we know
        (an unknown URL is never dialled: a peer cannot make us connect anywhere);
        otherwise through ours, as every node did before relay maps."""
        relay = link.node.home_relay
        url = relay.url if relay is not None else ""
        if url and url != self._selector.home.url and url in self._selector.candidates:
            self._peer_relays[link.key] = url
        else:
            self._peer_relays.pop(link.key, None)
        self._use_relay_window(link)

    def _reroute_all(self) -> None:
        for link in self._peers.values():
            self._route_relay(link)

    def _divert(self, item: tuple[bytes, bytes]) -> bool:
        """Hand ``item`` to the link of the peer's home relay; False: send it via ours."""
        url = self._peer_relays.get(item[0])
        return url is not None and self._relay_links.send(url, item[0], item[1])

    async def _relay_measure_loop(self) -> NoReturn:
        """Ping every candidate relay each ``relay_measure_interval`` (and at once when
        the relay map changes); move home when the selector says so."""
        while True:
            changed = self._relays_changed  # a map arriving mid-round: another round
            candidates = self._selector.candidates
            if len(candidates) > 1 and self._derp is None:
                # Let the home relay connect first (briefly): its key tells links which
                # candidate URLs are only other names for it.
                with trio.move_on_after(5.0):
                    while self._derp is None:
                        await self._changed.wait()
            if len(candidates) > 1:
                for url in candidates:
                    self._selector.note(url, await self._measure(url))
                new = self._selector.decide(trio.current_time())
                if new is not None:
                    await self._switch_home(new)
            with trio.move_on_after(self.config.relay_measure_interval):
                await changed.wait()

    async def _measure(self, url: str) -> float | None:
        """The lowest of three DERP ping round trips to ``url``, None if unreachable."""
        if url != self._selector.home.url:
            return await self._relay_links.ping(url)
        derp = self._derp
        if derp is None:
            return None  # never a link to our own home: it would replace the home one
        best = math.inf
        for _ in range(3):
            try:
                best = min(best, await derp.ping(timeout=2.0))
            except (TimeoutError, DerpConnectionClosed):
                return None
        return best

    async def _switch_home(self, new: HomeRelay) -> None:
        """Move home to ``new``: reconnect there, tell peers through the coordinator."""
        self.home_switches += 1
        log.info(
            "overlay.home_relay",
            relay=new.url,
            region=new.region,
            rtt_ms=round(self._selector.latency.get(new.url, math.inf) * 1000, 1),
        )
        # Peers on the new home stop being diverted: derper's window for them until
        # the new home's SERVER_INFO says more.
        self._set_home_window(RELAY_PATH)
        self._reroute_all()
        self._relay_links.close(new.url)
        if self._home_scope is not None:
            self._home_scope.cancel()
        await self._coord_send(self._announce())
        self._notify()

    async def _relay_writer(self, derp: DerpClient) -> None:
        # The relay drops whatever exceeds its token bucket (SERVER_INFO's rate hints),
        # and over TCP the mux sees no loss to slow down for: keep under the hint.
        pacer = RelayPacer(derp.server_info)
        # Packets for peers whose home relay is another one go to that relay's link
        # (the dict is empty, and the check one lookup, when all share our relay).
        routes = self._peer_relays
        while True:
            first = await self._relay_receive.receive()
            if routes and self._divert(first):
                continue
            batch = [first]
            size = fill_batch(self._relay_receive, batch, self._divert if routes else None)
            await pacer.wait(size, len(batch))
            await derp.send_packets(batch)

    async def _check_relay(self) -> None:
        """Ping the relay; a silent one is closed, so the relay loop reconnects."""
        derp = self._derp
        if derp is None:
            return
        try:
            await derp.ping(timeout=min(2.0, self.config.wake_poll * 2))
        except (TimeoutError, DerpConnectionClosed) as exc:
            log.info("overlay.relay_silent", error=str(exc))
            await derp.aclose()
