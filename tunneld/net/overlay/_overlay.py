"""One overlay node: UDP socket, home DERP relay, coordinator session, per-peer mux.

An :class:`Overlay` owns everything one node needs to reach its peers:

* one WireGuard core (all peers) whose datagrams travel over the home DERP relay
  (``SendPacket`` to the peer's node key) or straight over our UDP socket;
* one coordinator session (``/api/v1/coordinate``), reconnected with capped
  exponential backoff and jitter; a fresh session replays our node and tunnels;
* per peer, one mux connection carried inside WireGuard transport payloads, and the
  peer's current path: the relay (reliable, over TCP) or a direct UDP endpoint that
  answered a mux PATH_PROBE inside the WireGuard session.

Path rules (docs/overlay.md has the full story):

* The mux starts on the relay. After the handshake each side probes every endpoint
  the peer announced, every ``probe_interval``; the first endpoint whose
  PATH_RESPONSE comes back becomes the peer's direct path and the mux moves there
  (its packet numbers and streams carry on; congestion state restarts).
* The direct path is kept alive by probing it; when nothing arrived on it for
  ``unsure_after`` the overlay sends on both paths, and after ``direct_timeout`` of
  silence it falls back to the relay and starts probing all endpoints again.

Mux initiator: the side with the lower node key (bytewise), so both sides agree on
stream-id parity without talking.

The parts are mixins, each in its own module: ``_datapath`` (mux over WireGuard),
``_relay_io`` (the relay path), ``_direct`` (direct paths, path MTU, sleep and wake);
the state they share, and the relay path, in ``_node``.
"""

from __future__ import annotations

import math
from typing import NoReturn

import trio

from tunneld.log import Secret
from tunneld.net.coord import CoordinatorClosed, CoordinatorConnectError, connect_coordinator
from tunneld.net.mux import MuxConnection, MuxStream
from tunneld.net.overlay._config import LinkState, PeerStatus
from tunneld.net.overlay._datapath import _DataPath
from tunneld.net.overlay._direct import _DirectPaths
from tunneld.net.overlay._node import (
    RELAY_DATAGRAM_SIZE,
    CoordinatorUnavailableError,
    _format,
    _Listing,
    _Peer,
    _with_relay_map,
    log,
)
from tunneld.net.overlay._pmtu import PmtuState, ip_packet_bytes
from tunneld.net.overlay._relay_io import _RelayIO
from tunneld.net.overlay._udp import OverlaySocket
from tunneld.net.wireguard_udp import UdpAddress
from tunneld.proto.coord import (
    AgentInfo,
    AgentList,
    Error,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    RelayMap,
)
from tunneld.proto.noise import Outgoing

__all__ = ["Overlay"]


class Overlay(_RelayIO, _DirectPaths, _DataPath):
    """One node of the overlay; start with ``await nursery.start(overlay.serve)``.

    Args:
        config: the node's configuration.
        token_provider: returns the bearer token for the coordinator, called before
            every connection attempt (so a refreshed token is picked up).
        on_stream: run (in the overlay's handler nursery) for every stream a peer
            opens: ``await on_stream(peer_id, service, stream)``. The handler owns
            the stream and should close it. Without one, incoming streams are reset.
        wall: UNIX time (TAI64N timestamps, ``as_of``).
        rng: returns a float in [0, 1) for backoff jitter.
        relay_queue: datagrams queued for the relay before new ones are dropped.
    """

    # -- public API ---------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[UdpAddress] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Run the node until cancelled; reports the bound UDP address.

        Cancellation closes the UDP socket, the relay and coordinator connections, and
        every stream (peers see the mux go silent and, after ``direct_timeout``, the relay).
        """
        sock = await OverlaySocket.bind((self.config.udp_host, self.config.udp_port))
        try:
            self._sock = sock
            self.local_address = sock.getsockname()
            self._announce()
            async with trio.open_nursery() as handlers, trio.open_nursery() as nursery:
                self._handlers = handlers
                self._nursery = nursery
                await nursery.start(self._relay_links.run)
                nursery.start_soon(self._udp_reader)
                nursery.start_soon(self._wg_pump)
                nursery.start_soon(self._coordinator_loop)
                nursery.start_soon(self._relay_loop)
                nursery.start_soon(self._relay_measure_loop)
                nursery.start_soon(self._prober)
                if self.config.stun is not None:
                    nursery.start_soon(self._stun_loop, self.config.stun)
                nursery.start_soon(self._wake_watch)
                task_status.started(self.local_address)
                await trio.sleep_forever()
        finally:
            sock.close()
            if self._sock is not None:
                self._sock.close()  # a socket made by _rebind is ours to close too
        raise AssertionError("unreachable")  # pragma: no cover

    async def set_endpoints(self, endpoints: tuple[str, ...] | None) -> None:
        """Announce other UDP endpoints (None: the automatic ones); peers re-probe."""
        self._announced = endpoints
        self._restart_punching("our endpoints changed")
        await self._coord_send(self._announce())

    async def add_tunnel(self, peer: str) -> None:
        """Ask the coordinator for a tunnel to ``peer`` (agent name, node id, owner/agent).

        Remembered and replayed on every reconnect; sent now if a session is up.
        """
        data = self._coord.add_tunnel(peer)
        await self._coord_send(data)

    async def remove_tunnel(self, peer: str) -> None:
        """Stop wanting ``peer``: the coordinator forgets the tunnel and tells the peer;
        we drop the peer at once (its streams break)."""
        data = self._coord.remove_tunnel(peer)
        await self._coord_send(data)
        link = self._find(peer)
        if link is not None:
            self._drop_peer(link)

    async def open_stream(self, peer: str, service: str) -> MuxStream:
        """Open a stream to ``service`` on ``peer`` (node id, name or ``owner/name``).

        Waits until the coordinator has told us about the peer (use a timeout); the
        stream's bytes go over the peer's current path.

        Raises:
            trio.BrokenResourceError: the peer's mux connection is closed.
        """
        while (link := self._find(peer)) is None:
            await self._changed.wait()
        return await link.mux.open_stream(service)

    async def list_agents(self) -> tuple[AgentInfo, ...]:
        """Every agent this node may reach, online or not, as the coordinator says now.

        One ``list_agents`` request over the current session (docs/coordinator.md);
        waits for its last page, so put a timeout around it. Cancellation forgets the
        request (a late answer is ignored).

        Raises:
            CoordinatorUnavailableError: no coordinator session right now, or it ended
                before the answer came.
        """
        if self._list_agents_unsupported:
            raise CoordinatorUnavailableError(
                "the coordinator does not support list_agents (upgrade the control plane)"
            )
        session = self._session
        if session is None:
            raise CoordinatorUnavailableError(
                self.coordinator_error or "not connected to the coordinator"
            )
        request_id, data = self._coord.list_agents()
        listing = self._listings[request_id] = _Listing()
        try:
            try:
                await session.send(data)
            except CoordinatorClosed as exc:
                raise CoordinatorUnavailableError(str(exc)) from None
            await listing.done.wait()
        finally:
            self._listings.pop(request_id, None)
            self._coord.forget_listing(request_id)
        if listing.error is not None:
            raise CoordinatorUnavailableError(listing.error)
        return listing.agents

    def peer_node(self, peer: str) -> Node | None:
        """The coordinator's last word on ``peer`` (node id, name or ``owner/name``):
        its name, owner (user), node key, endpoints; None if unknown."""
        link = self._find(peer)
        return None if link is None else link.node

    async def wait_direct(self, peer: str) -> None:
        """Return once ``peer`` is reachable over a validated direct UDP path."""
        while (link := self._find(peer)) is None or link.direct is None:
            await self._changed.wait()

    async def wait_path_mtu(self, peer: str) -> None:
        """Return once ``peer`` has a direct path whose size search is not running
        (done, or off); docs/overlay.md, "Path MTU"."""
        while (
            (link := self._find(peer)) is None
            or link.direct is None
            or (link.pmtu is not None and link.pmtu.state is PmtuState.SEARCHING)
        ):
            await self._changed.wait()

    def status(self) -> dict[str, object]:
        """A plain snapshot: our node, coordinator and relay state, and every peer."""
        now = trio.current_time()
        peers = []
        for link in self._peers.values():
            direct = link.direct is not None and now - link.last_direct_rx < self._unsure()
            datagram_size, path_mtu, pmtu_state = self._size_status(link)
            peers.append(
                PeerStatus(
                    id=link.id,
                    name=link.node.name,
                    owner=link.node.owner,
                    node_key=link.key.hex(),
                    online=link.online,
                    handshake=link.handshake_done,
                    path="direct" if link.direct is not None else "relay",
                    direct_endpoint=link.direct.address.decode()
                    if direct and link.direct
                    else None,
                    rtt=link.rtt,
                    bytes_sent=link.bytes_sent,
                    bytes_received=link.bytes_received,
                    streams=len(link.mux.core.stream_ids()),
                    connection=link.ids.local_id.hex(),
                    call_me_maybe_sent=link.call_me_maybe_sent,
                    call_me_maybe_received=link.call_me_maybe_received,
                    punch_bursts=link.punch.bursts,
                    relay=self._peer_relays.get(link.key, self._selector.home.url),
                    datagram_size=datagram_size,
                    path_mtu=path_mtu,
                    pmtu_state=pmtu_state,
                    relay_window=self._window_status(link),
                )
            )
        return {
            "name": self.config.name,
            "node_key": self.public_key.hex(),
            "udp": _format(self.local_address) if self.local_address else None,
            "endpoints": list(self._endpoints()) if self.local_address else [],
            "reflexive": _format(self.reflexive) if self.reflexive else None,
            "coordinator": self.coordinator_state.value,
            "coordinator_error": self.coordinator_error,
            "relay": self.relay_state.value,
            "relay_error": self.relay_error,
            "relay_dropped": self.relay_dropped,
            "home_relay": self._selector.home.url,
            "relay_latency_ms": {
                url: None if math.isinf(rtt) else round(rtt * 1000, 2)
                for url, rtt in self._selector.latency.items()
            },
            "relay_links": self._relay_links.connected(),
            "relay_aliases": sorted(self._selector.aliases),
            "home_switches": self.home_switches,
            "last_coordinator_error": (
                None
                if self.last_coordinator_error is None
                else f"{self.last_coordinator_error.code}: {self.last_coordinator_error.message}"
            ),
            "peers": peers,
        }

    def _window_status(self, link: _Peer) -> int:
        """PeerStatus's relay_window: datagrams in flight allowed on the relay path."""
        path = link.mux.core.path
        if link.direct is not None or path is None:
            return 0
        return path.max_in_flight // RELAY_DATAGRAM_SIZE

    def _size_status(self, link: _Peer) -> tuple[int, int | None, str]:
        """PeerStatus's datagram_size, path_mtu and pmtu_state."""
        if link.direct is None:
            return RELAY_DATAGRAM_SIZE, None, ""
        size = link.direct.max_datagram_size or self.config.mux.max_datagram_size
        ipv6 = ":" in str(link.direct.key[1])  # type: ignore[index]
        state = "off" if link.pmtu is None else link.pmtu.state.value
        return size, ip_packet_bytes(size, ipv6=ipv6), state

    # -- peers ----------------------------------------------------------------------

    def _find(self, reference: str) -> _Peer | None:
        link = self._peers.get(reference)
        if link is not None:
            return link
        for link in self._peers.values():
            if reference in (link.node.name, f"{link.node.owner}/{link.node.name}"):
                return link
        return None

    async def _add_peer(self, node: Node) -> None:
        link = self._peers.get(node.id)
        if link is not None and link.key != node.node_key:
            self._drop_peer(link)
            link = None
        if link is not None:
            if link.direct is None and link.handshake_done:
                if node.endpoints != link.node.endpoints:
                    link.punch.restart(trio.current_time(), "peer endpoints changed")
                elif not link.online:
                    link.punch.restart(trio.current_time(), "peer back online")
            link.node = node
            link.online = True
            link.gone_at = None
            self._route_relay(link)
            self._notify()
            return
        if node.node_key == self.public_key:
            return
        old = self._by_key.get(node.node_key)
        if old is not None:  # the same key back while its old link is still closing
            self._by_key.pop(node.node_key)
            self._core.remove_peer(node.node_key)
        link = _Peer(self, node, trio.current_time())
        self._peers[node.id] = link
        self._by_key[link.key] = link
        self._route_relay(link)
        self._core.add_peer(link.key)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_peer, link)
        await link.ready.wait()
        log.info("overlay.peer_added", peer=node.id, name=node.name, owner=node.owner)
        self._notify()

    def _drop_peer(self, link: _Peer) -> None:
        # Out of the id table at once (no new streams); the key stays known to
        # WireGuard until the mux's CLOSE has gone out (_close_peer).
        self._peers.pop(link.id, None)
        self._peer_relays.pop(link.key, None)
        assert self._nursery is not None
        self._nursery.start_soon(self._close_peer, link)
        log.info("overlay.peer_removed", peer=link.id)
        self._notify()

    async def _close_peer(self, link: _Peer) -> None:
        # Close the mux so every stream user sees BrokenResourceError instead of
        # waiting forever, give the CLOSE a moment to leave, then stop the driver.
        await link.mux.aclose(0, "peer removed")
        await trio.sleep(0.1)
        link.cancel.cancel()
        if self._by_key.get(link.key) is link:
            del self._by_key[link.key]
            self._core.remove_peer(link.key)

    async def _run_peer(self, link: _Peer) -> None:
        with link.cancel:
            async with trio.open_nursery() as nursery:
                link.nursery = nursery
                nursery.start_soon(self._drive_mux, link, link.mux)
                link.ready.set()
                await trio.sleep_forever()
        link.ready.set()

    def _renew_mux(self, link: _Peer, reason: str) -> None:
        """Replace ``link``'s mux connection (its streams break) with a fresh one."""
        old = link.mux
        link.transport, link.mux = link.new_mux(self)
        log.info("overlay.mux_renewed", peer=link.id, reason=reason)
        if link.nursery is not None:
            link.nursery.start_soon(self._drive_mux, link, link.mux)
            link.nursery.start_soon(old.aclose, 0, "replaced")
        self._notify()

    async def _drive_mux(self, link: _Peer, mux: MuxConnection) -> None:
        await mux.run()

    def _on_mux_stream(self, link: _Peer, stream: MuxStream) -> None:
        # Straight from the driver (MuxConnection's on_stream): the handler task
        # starts in the next scheduling round, without an accepting task between.
        if self._on_stream is None or self._handlers is None:
            stream.close_nowait()
            return
        self._handlers.start_soon(self._run_handler, link.id, stream)

    async def _run_handler(self, peer_id: str, stream: MuxStream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(peer_id, stream.service, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("overlay.stream_broken", peer=peer_id, service=stream.service, error=str(exc))
        finally:
            await stream.aclose()

    # -- coordinator session ----------------------------------------------------------

    async def _coordinator_loop(self) -> NoReturn:
        attempt = 0
        while True:
            self.coordinator_state = LinkState.CONNECTING
            try:
                token = await self._token_provider()
                async with connect_coordinator(
                    _with_relay_map(self.config.coordinate_url), Secret(token), self._coord
                ) as session:
                    self._session = session
                    self.coordinator_state = LinkState.CONNECTED
                    self.coordinator_error = None
                    attempt = 0
                    log.info("overlay.coordinator_connected")
                    while True:
                        message = await session.receive()
                        await self._on_coordinator(message)
            except* (CoordinatorConnectError, CoordinatorClosed, OSError) as group:
                self.coordinator_error = "; ".join(str(exc) for exc in group.exceptions)
                if any(
                    isinstance(exc, CoordinatorClosed) and "'list_agents'" in exc.reason
                    for exc in group.exceptions
                ):
                    self._list_agents_unsupported = True
                log.warning("overlay.coordinator_lost", error=self.coordinator_error)
            finally:
                self._session = None
                self._coord.forget_listings()
                for listing in self._listings.values():
                    listing.error = "the coordinator session ended before it answered"
                    listing.done.set()
            self.coordinator_state = LinkState.BACKOFF
            attempt += 1
            attempt = await self._backoff(attempt)

    async def _on_coordinator(self, message: PeerUpdate | Error | AgentList | RelayMap) -> None:
        if isinstance(message, RelayMap):
            self._selector.offer(message.relays)
            log.info("overlay.relay_map", relays=len(message.relays))
            self._reroute_all()
            self._relays_changed.set()
            self._relays_changed = trio.Event()
            return
        if isinstance(message, AgentList):
            listing = self._listings.get(message.id)
            if listing is not None and not message.more:
                listing.agents = message.agents
                listing.done.set()
            return
        if isinstance(message, Error):
            log.info("overlay.coordinator_error", code=message.code, peer=message.peer)
            self.last_coordinator_error = message
            self._notify()
            return
        if message.kind is PeerUpdateKind.NODE and message.node is not None:
            await self._add_peer(message.node)
            # Invite the peer's handshake only once the relay can deliver to us: before
            # that its initiation (or its response to ours) meets a relay we have not
            # joined yet, is dropped as unknown_dest, and the handshake waits a retry.
            # A fresh node races exactly so: the relay admits it only after the
            # coordinator has registered its key.
            if self._derp is None:
                self._ready_pending.add(message.id)
            else:
                await self._coord_send(self._coord.ready_for_handshake(message.id))
        elif message.kind is PeerUpdateKind.READY_FOR_HANDSHAKE:
            # "The peer has our node now; start (or retry) the handshake": it may be a
            # new process whose keys our current session no longer matches.
            link = self._peers.get(message.id)
            if link is not None:
                now = trio.current_time()
                self._core.initiate(link.key, now, self._wall())
                pending = self._core.datagrams_to_send(now)
                if not pending and not link.handshake_done and link.last_initiation:
                    # initiate() is rate-limited to one per RekeyTimeout; the one we sent
                    # moments ago (on relay connect, say) may have reached the relay
                    # before the peer had joined it. The peer is listening now: repeat it.
                    pending = [Outgoing(link.key, None, link.last_initiation)]
                await self._transmit(pending, None)
        elif message.kind is PeerUpdateKind.LOST:
            link = self._peers.get(message.id)
            if link is not None:
                link.online = False  # keep paths: it may be back within the grace period
                self._notify()
        elif message.kind is PeerUpdateKind.DISCONNECTED:
            link = self._peers.get(message.id)
            if link is not None and message.reason == "tunnel removed":
                self._drop_peer(link)  # on purpose: no coming back to wait for
            elif link is not None and link.gone_at is None:
                # Keep the link (and its mux) for ``forget_after``: "offline" also comes
                # when our own session reconnects before the peer's, and the peer may
                # simply be back in a moment with the same key.
                link.online = False
                link.gone_at = trio.current_time()
                self._notify()
