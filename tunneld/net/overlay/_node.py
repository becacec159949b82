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
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from tunneld.keys import public_key
from tunneld.log import Secret, get_logger
from tunneld.net.coord import (
    CoordinatorClosed,
    CoordinatorConnectError,
    CoordinatorConnection,
    connect_coordinator,
)
from tunneld.net.derp import DerpClient, DerpConnectError, DerpConnectionClosed
from tunneld.net.mux import MuxConnection, MuxStream
from tunneld.net.overlay._config import LinkState, OverlayConfig, PeerStatus, backoff_delay
from tunneld.net.overlay._ids import (
    HEADER_SIZE,
    ID_SIZE,
    ConnectionIds,
    Verdict,
)
from tunneld.net.overlay._pmtu import PmtuSearch, PmtuState, ip_packet_bytes
from tunneld.net.overlay._punch import PunchSchedule, parse_call_me_maybe
from tunneld.net.overlay._relays import RELAY_BATCH_BYTES, RelayLinks, RelayPacer, RelaySelector
from tunneld.net.overlay._udp import OverlaySocket
from tunneld.net.wireguard_udp import UdpAddress, pack_address, unpack_address
from tunneld.proto.coord import (
    AgentInfo,
    AgentList,
    CoordinatorClient,
    Error,
    HomeRelay,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    RelayMap,
)
from tunneld.proto.derp import DerpEvent, RecvPacket, Restarting
from tunneld.proto.mux import (
    CallMeMaybe,
    ConnectionClosed,
    ConnectionClosedError,
    Event,
    Path,
    PathResponse,
)
from tunneld.proto.noise import (
    DataReceived,
    HandshakeCompleted,
    HandshakeTimedOut,
    Outgoing,
    RemoteProtocolError,
    WireGuardCore,
)
from tunneld.proto.stun import RemoteProtocolError as StunRemoteProtocolError
from tunneld.proto.stun import build_binding_request, looks_like_stun, parse_binding_response

__all__ = [
    "RELAY_PATH",
    "CoordinatorUnavailableError",
    "Overlay",
    "StreamHandler",
    "TokenProvider",
]

log = get_logger(__name__)

TokenProvider = Callable[[], Awaitable[str]]
StreamHandler = Callable[[str, str, MuxStream], Awaitable[None]]

# The relay path: DERP runs over TCP, so the mux must not retransmit on top of it.
# 63 KiB mux datagrams on the relay (WireGuard's packet of one: 32 + 64,529 padded
# to 16 = 64,576 bytes, under DERP's 64 KiB packet limit): per-datagram work, not
# bytes, limits that path, and the relay's queue counts packets, so bigger ones also
# allow more bytes in flight per round trip (16 KiB ones halved the bench's relay
# MB/s; 63 KiB ones cost about 25% less CPU per byte than 48 KiB ones).
RELAY_DATAGRAM_SIZE = 63 * 1024
# The relay queues 32 packets per receiving client and drops beyond that (derper's
# depth too); the mux sees no loss signal there (TCP), so it keeps at most 24 full
# datagrams in flight: under the queue even if none has left it yet, with room for
# other senders' packets. Bytes in flight mostly sit in socket buffers, not in that
# queue, and a bulk transfer is bound by this cap: on the relay bench 16 datagrams
# gave a round trip of ~7 ms and 24 about the same, so 1.5x the bytes per trip.
# Two bulk senders to one slow receiver can now overflow the queue; the relay
# drops, and the mux's packet-threshold loss detection resends.
RELAY_PATH = Path(
    "relay",
    reliable=True,
    address=b"relay",
    max_datagram_size=RELAY_DATAGRAM_SIZE,
    max_in_flight=24 * RELAY_DATAGRAM_SIZE,
)

# Opaque WireGuard ``source`` for packets that came through the relay: a marker and the
# sender's node key (34 bytes, so it can never be mistaken for a packed UDP address).
_DERP_SOURCE = b"D:"
_MAX_DATAGRAM = 65535
_READ_BURST = 32  # datagrams the UDP reader handles between two yields
_MAX_UDP_SOURCES = 1024  # cached source addresses (cleared when full)
_WG_HANDSHAKE_TYPES = (1, 2, 3)
_PATH_PROBE = 0x30  # mux frame types (docs/mux.md)
_PATH_RESPONSE = 0x31
# A relay's RESTARTING hint is honoured up to these bounds (a relay cannot park us).
_MAX_RESTART_WAIT = 30.0
_MAX_RESTART_TRY = 300.0
_RESTART_RETRY_CAP = 1.0  # backoff cap while the relay said it is restarting
_WG_TRANSPORT = b"\x04"  # first byte of a WireGuard transport message
_PADDING = tuple(bytes(n) for n in range(16))  # zeros to pad a payload to 16 bytes


class CoordinatorUnavailableError(Exception):
    """The coordinator cannot answer now: no session, or it ended before answering."""


class _Listing:
    """One pending ``list_agents``: set ``done`` with ``agents`` or ``error``."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.agents: tuple[AgentInfo, ...] = ()
        self.error: str | None = None


class _PeerTransport:
    """One mux connection's DatagramTransport: WireGuard over relay/UDP to one peer.

    ``local_id`` names the mux connection; packets of a connection that has been
    replaced are dropped rather than sent with the new connection's ids. Received
    payloads do not come through ``receive``: the overlay's readers hand them to
    ``MuxConnection.receive_datagram`` directly (no queue, no extra task switch).
    """

    def __init__(self, overlay: Overlay, peer: _Peer, local_id: bytes) -> None:
        self._overlay = overlay
        self._peer = peer
        self.local_id = local_id

    async def send(self, data: bytes, path: Path) -> None:
        await self.send_many([(data, path)])

    async def send_many(self, datagrams: Sequence[tuple[bytes, Path]]) -> None:
        if self.local_id != self._peer.ids.local_id:
            await trio.lowlevel.checkpoint()
            return
        await self._overlay._send_mux_many(self._peer, datagrams)

    async def receive(self) -> tuple[bytes, Path]:
        await trio.sleep_forever()  # see the class docstring


class _Peer:
    """Everything about one peer: its node, WireGuard key, mux and path state."""

    def __init__(self, overlay: Overlay, node: Node, now: float) -> None:
        self.id = node.id
        self.node = node
        self.key = node.node_key
        self.online = True
        self.handshake_done = False
        self.direct: Path | None = None
        self.last_direct_rx = -math.inf
        self.rtt: float | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.ready = trio.Event()
        self.initiator = overlay.public_key < self.key
        self.nursery: trio.Nursery | None = None
        self.ids = ConnectionIds(self.initiator)
        self.transport, self.mux = self.new_mux(overlay)
        self.cancel = trio.CancelScope()
        self.created = now
        self.gone_at: float | None = None
        self.last_initiation: bytes | None = None
        config = overlay.config
        self.punch = PunchSchedule(
            config.probe_interval, config.punch_tries, config.reprobe_interval
        )
        self.called: tuple[str, ...] = ()  # endpoints from the peer's CALL_ME_MAYBE
        self.call_me_maybe_sent = 0
        self.call_me_maybe_received = 0
        self.last_called_probe = -math.inf
        self.pmtu: PmtuSearch | None = None  # the direct path's size search

    def new_mux(self, overlay: Overlay) -> tuple[_PeerTransport, MuxConnection]:
        """A fresh mux connection (new id; the peer's id is learnt from its packets)."""
        self.ids.renew(secrets.token_bytes(ID_SIZE))
        transport = _PeerTransport(overlay, self, self.ids.local_id)
        mux: MuxConnection = MuxConnection(
            transport,
            is_initiator=self.initiator,
            config=overlay.config.mux,
            path=self.direct or RELAY_PATH,
            on_event=lambda event: overlay._on_mux_event(self, mux, event),
            on_stream=lambda stream: overlay._on_mux_stream(self, stream),
        )
        # Speak first: the peer learns our new connection id (and drops its stale
        # connection) without waiting for us to have data.
        mux.core.send_ping()
        return transport, mux

    def candidate_paths(self) -> list[Path]:
        """The peer's endpoints: what the coordinator announced, then what its last
        CALL_ME_MAYBE added (fresher when the coordinator is slow or away)."""
        paths = []
        for endpoint in dict.fromkeys((*self.node.endpoints, *self.called)):
            address = _parse_endpoint(endpoint)
            if address is not None:
                paths.append(_udp_path(address))
        return paths


def _is_path_packet(packet: bytes) -> bool:
    """Whether a mux packet starts with PATH_PROBE/PATH_RESPONSE (docs/mux.md): the
    core sends those alone in a packet, after the packet number (a QUIC varint)."""
    if not packet:
        return False
    offset = 1 << (packet[0] >> 6)
    return len(packet) > offset and packet[offset] in (_PATH_PROBE, _PATH_RESPONSE)


def _udp_path(address: UdpAddress) -> Path:
    return Path(("udp", address[0], address[1]), reliable=False, address=_format(address).encode())


def _format(address: UdpAddress) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _with_relay_map(url: str) -> str:
    """The coordinate URL asking for the ``relays`` message (older coordinators
    ignore the query; older clients never ask, so never get a message they reject)."""
    return url + ("&" if "?" in url else "?") + "relay_map=1"


def _parse_endpoint(text: str) -> UdpAddress | None:
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    host = host.removeprefix("[").removesuffix("]")
    try:
        return host, int(port)
    except ValueError:
        return None


class Overlay:
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

    def __init__(
        self,
        config: OverlayConfig,
        token_provider: TokenProvider,
        *,
        on_stream: StreamHandler | None = None,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        relay_queue: int = 1024,
    ) -> None:
        self.config = config
        self.public_key = public_key(config.private_key)
        self._token_provider = token_provider
        self._on_stream = on_stream
        self._wall = wall
        self._rng = rng
        self._core = WireGuardCore(config.private_key)
        self._coord = CoordinatorClient()
        self._session: CoordinatorConnection | None = None
        self._derp: DerpClient | None = None
        # Peers told about while our relay was down: ready_for_handshake waits for it.
        self._ready_pending: set[str] = set()
        self.coordinator_state = LinkState.CONNECTING
        self.relay_state = LinkState.CONNECTING
        self.coordinator_error: str | None = None
        self.relay_error: str | None = None
        self._peers: dict[str, _Peer] = {}
        self._by_key: dict[bytes, _Peer] = {}
        self._changed = trio.Event()
        self._wakeup = trio.Event()
        self._sock: OverlaySocket | None = None
        # source address -> (the core's packed source, its Path), so the reader does
        # not parse an address and build a Path for every datagram; bounded.
        self._udp_sources: dict[UdpAddress, tuple[bytes, Path]] = {}
        self._nursery: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self._relay_send, self._relay_receive = trio.open_memory_channel[tuple[bytes, bytes]](
            relay_queue
        )
        self.relay_dropped = 0
        self.local_address: UdpAddress | None = None
        self._announced = config.endpoints
        self.reflexive: UdpAddress | None = None
        self._stun_pending: dict[bytes, trio.MemorySendChannel[UdpAddress]] = {}
        self.last_coordinator_error: Error | None = None
        self.wakes = 0  # times we noticed the host slept (see _wake_watch)
        self._woken = trio.Event()  # set (and replaced) on every wake-up
        self._listings: dict[int, _Listing] = {}
        # An older coordinator closes the session on list_agents (unknown request type):
        # asking again would drop the session every time, so stop asking.
        self._list_agents_unsupported = False
        # Relays (docs/overlay.md, "Relays"): the home relay by latency, links to others.
        self._selector = RelaySelector(
            HomeRelay(config.derp_region, config.derp_url),
            (
                HomeRelay((config.derp_region + 1 + index) % 2**31, url)
                for index, url in enumerate(config.relays)
            ),
            hold=config.relay_switch_after,
        )
        self._relay_links = RelayLinks(
            config.private_key,
            self._on_link_packet,
            own_keys=self._home_keys,
            idle_timeout=config.relay_idle_timeout,
        )
        self._relay_links.on_alias = self._on_relay_alias
        self._peer_relays: dict[bytes, str] = {}  # peer key -> its home relay, if not ours
        self._home_scope: trio.CancelScope | None = None
        self._relays_changed = trio.Event()
        self._relay_restart: tuple[float, float] | None = None  # RESTARTING hint
        self._restart_until = -math.inf
        self.home_switches = 0

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

    def _announce(self) -> bytes:
        return self._coord.update_self(
            name=self.config.name,
            node_key=self.public_key,
            endpoints=self._endpoints(),
            home_relay=self._selector.home,
            as_of=self._wall(),
        )

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

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _unsure(self) -> float:
        return self.config.unsure_after

    def _endpoints(self) -> tuple[str, ...]:
        endpoints = self._local_endpoints()
        if self.reflexive is not None:
            mapped = _format(self.reflexive)
            if mapped not in endpoints:
                endpoints = (mapped, *endpoints)
        return endpoints[:16]

    def _local_endpoints(self) -> tuple[str, ...]:
        if self._announced is not None:
            return self._announced
        assert self.local_address is not None
        host, port = self.local_address
        if host not in ("0.0.0.0", "::"):
            return (_format((host, port)),)
        hosts = {"127.0.0.1"}
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
                hosts.add(str(info[4][0]))
        except OSError:
            pass
        return tuple(sorted(_format((h, port)) for h in hosts))[:16]

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

    # -- mux over WireGuard ----------------------------------------------------------

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
                    if len(route) == 1 and route[0] is not RELAY_PATH:
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

    # -- tasks ------------------------------------------------------------------------

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

    def _wake_pump(self) -> None:
        self._wakeup.set()

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
                    link.mux.set_path(RELAY_PATH)
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

    async def _coord_send(self, data: bytes) -> None:
        session = self._session
        if session is None:
            return  # replayed on the next session
        try:
            await session.send(data)
        except CoordinatorClosed:
            pass

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
            # Whatever queued up meanwhile goes in the same WebSocket message: one
            # message per WireGuard packet made the relay path CPU-bound on per-message
            # work (framing, task switches) on both ends.
            size = len(batch[0][1])
            while size < RELAY_BATCH_BYTES:
                try:
                    item = self._relay_receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if routes and self._divert(item):
                    continue
                batch.append(item)
                size += len(item[1])
            await pacer.wait(size, len(batch))
            await derp.send_packets(batch)

    # -- sleep and wake ---------------------------------------------------------------

    async def _backoff(self, attempt: int, cap: float | None = None) -> int:
        """Sleep the reconnect delay for ``attempt``; returns the attempt count to go on
        with: 0 when a wake-up cut the sleep short (the network is new, start afresh)."""
        woken = self._woken
        cap = self.config.backoff_cap if cap is None else min(cap, self.config.backoff_cap)
        with trio.move_on_after(backoff_delay(attempt, self._rng, cap)):
            await woken.wait()
        return 0 if woken.is_set() else attempt

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
                    link.mux.set_path(RELAY_PATH)
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
