"""What every part of an overlay node shares: the relay path, per-peer state, helpers.

``_OverlayBase`` holds the node's state (built in ``__init__``) and the helpers every
part uses; ``Overlay`` (``_overlay``) puts the parts together: ``_datapath`` (mux over
WireGuard), ``_relay_io`` (the home relay and relay links), ``_direct`` (UDP, STUN, hole
punching, path MTU, sleep and wake).
"""

from __future__ import annotations

import math
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from tunneld.keys import public_key
from tunneld.log import get_logger
from tunneld.net.coord import CoordinatorClosed, CoordinatorConnection
from tunneld.net.derp import DerpClient
from tunneld.net.mux import MuxConnection, MuxStream
from tunneld.net.overlay._config import LinkState, OverlayConfig, backoff_delay
from tunneld.net.overlay._ids import ID_SIZE, ConnectionIds
from tunneld.net.overlay._pmtu import PmtuSearch
from tunneld.net.overlay._punch import PunchSchedule
from tunneld.net.overlay._relays import RelayLinks, RelaySelector, relay_window
from tunneld.net.overlay._udp import OverlaySocket
from tunneld.net.wireguard_udp import UdpAddress
from tunneld.proto.coord import AgentInfo, CoordinatorClient, Error, HomeRelay, Node
from tunneld.proto.derp import ServerInfo
from tunneld.proto.mux import CallMeMaybe, Path
from tunneld.proto.noise import Outgoing, WireGuardCore

if TYPE_CHECKING:
    from tunneld.net.overlay._overlay import Overlay

__all__ = [
    "RELAY_PATH",
    "CoordinatorUnavailableError",
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
# The relay queues a bounded number of packets per receiving client and drops beyond
# that; the mux sees no loss signal there (TCP), so it caps the datagrams in flight
# (relay_window): 24 for a relay that does not announce its depth (derper's 32), 64
# through ours (96). Bytes in flight mostly sit in socket buffers, not in that queue,
# and a bulk transfer is bound by this cap: the round trip stays about the same as the
# cap grows (16 datagrams: ~7 ms on the relay bench, 24 about the same), so it moves
# that many more bytes per trip. Two bulk senders to one slow receiver can overflow the
# queue; the relay drops, and the mux's packet-threshold loss detection resends.
RELAY_PATH = Path(
    "relay",
    reliable=True,
    address=b"relay",
    max_datagram_size=RELAY_DATAGRAM_SIZE,
    max_in_flight=relay_window(None) * RELAY_DATAGRAM_SIZE,
)


def relay_path(info: ServerInfo | None) -> Path:
    """:data:`RELAY_PATH` with the window for a relay that sent ``info``."""
    return replace(RELAY_PATH, max_in_flight=relay_window(info) * RELAY_DATAGRAM_SIZE)


# Opaque WireGuard ``source`` for packets that came through the relay: a marker and the
# sender's node key (34 bytes, so it can never be mistaken for a packed UDP address).
_DERP_SOURCE = b"D:"
_PATH_PROBE = 0x30  # mux frame types (docs/mux.md)
_PATH_RESPONSE = 0x31


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
            path=self.direct or overlay._relay_path_for(self),
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


class _OverlayBase:
    """The state of one node and the helpers every part of ``Overlay`` uses."""

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
        self._home_relay_path = RELAY_PATH  # with the home relay's window once it answered
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
        self._relay_links.on_change = self._on_link_change
        self._peer_relays: dict[bytes, str] = {}  # peer key -> its home relay, if not ours
        self._home_scope: trio.CancelScope | None = None
        self._relays_changed = trio.Event()
        self._relay_restart: tuple[float, float] | None = None  # RESTARTING hint
        self._restart_until = -math.inf
        self.home_switches = 0

    # -- helpers every part uses -------------------------------------------------

    def _announce(self) -> bytes:
        return self._coord.update_self(
            name=self.config.name,
            node_key=self.public_key,
            endpoints=self._endpoints(),
            home_relay=self._selector.home,
            as_of=self._wall(),
        )

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

    async def _coord_send(self, data: bytes) -> None:
        session = self._session
        if session is None:
            return  # replayed on the next session
        try:
            await session.send(data)
        except CoordinatorClosed:
            pass

    def _relay_path_for(self, link: _Peer) -> Path:
        """The relay path with the window of the relay ``link``'s packets go through:
        our home relay's, or for a peer on another relay that relay's while our link
        to it is open (derper's otherwise: the next link may reach another relay).

        A linked peer never gets more than home's window either: its packets wait in
        home's queue until home's writer hands them to the link, and if the link fails
        meanwhile they go through home instead.
        """
        home = self._home_relay_path
        url = self._peer_relays.get(link.key)
        if url is None:
            return home
        info = self._relay_links.server_info(url)
        if info is None:
            return RELAY_PATH
        path = relay_path(info)
        return path if path.max_in_flight <= home.max_in_flight else home

    def _use_relay_window(self, link: _Peer) -> None:
        """Give ``link``'s mux the window of its relay, if the relay is its path."""
        path = self._relay_path_for(link)
        current = link.mux.core.path
        if (
            link.direct is None
            and link.mux.closed is None
            and current is not None
            and current.max_in_flight != path.max_in_flight
        ):
            link.mux.set_path(path)

    def _wake_pump(self) -> None:
        self._wakeup.set()

    async def _backoff(self, attempt: int, cap: float | None = None) -> int:
        """Sleep the reconnect delay for ``attempt``; returns the attempt count to go on
        with: 0 when a wake-up cut the sleep short (the network is new, start afresh)."""
        woken = self._woken
        cap = self.config.backoff_cap if cap is None else min(cap, self.config.backoff_cap)
        with trio.move_on_after(backoff_delay(attempt, self._rng, cap)):
            await woken.wait()
        return 0 if woken.is_set() else attempt

    if TYPE_CHECKING:
        # Defined by the other parts of Overlay; here so each part type-checks alone.
        def _drop_peer(self, link: _Peer) -> None: ...
        def _renew_mux(self, link: _Peer, reason: str) -> None: ...
        async def _transmit(self, outgoing: list[Outgoing], targets: list[Path] | None) -> None: ...
        async def _sendto(self, data: bytes, address: UdpAddress) -> None: ...
        async def _receive_wg(self, data: bytes, source: bytes, path: Path) -> None: ...
        def _on_call_me_maybe(self, link: _Peer, event: CallMeMaybe) -> None: ...
        def _pmtu_start(self, link: _Peer, now: float) -> None: ...
        def _pmtu_probe(self, link: _Peer, now: float) -> None: ...
        def _too_big(self, address: UdpAddress, datagram: int) -> None: ...
        async def _on_link_packet(self, src: bytes, data: bytes) -> None: ...
        def _home_keys(self) -> set[bytes]: ...
        def _on_relay_alias(self, url: str) -> None: ...
        def _on_link_change(self, url: str) -> None: ...
        async def _check_relay(self) -> None: ...
