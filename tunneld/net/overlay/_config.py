"""Configuration, status records and reconnect backoff of an overlay node."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from tunneld.proto.mux import MuxConfig

__all__ = ["LinkState", "OverlayConfig", "PeerStatus", "backoff_delay"]


class LinkState(enum.Enum):
    """State of the coordinator or relay connection."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"


def backoff_delay(attempt: int, rng: Callable[[], float], cap: float = 30.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based).

    SPECS.md: ``min(n^2 * 10 ms, cap) * random[0.5, 1.5)``; ``rng`` returns [0, 1).
    """
    return min(attempt * attempt * 0.01, cap) * (0.5 + rng())


@dataclass(frozen=True, slots=True)
class OverlayConfig:
    """What one node needs.

    Args:
        name: our node name (agents: the coordinator replaces it by the token's agent).
        private_key: our 32-byte Curve25519 key (WireGuard static key and DERP identity).
        coordinate_url: ``ws(s)://host:port/api/v1/coordinate``.
        derp_url: our home relay, ``ws(s)://host:port/derp``.
        derp_region: the home relay's region number announced to peers.
        udp_host: address the UDP socket binds to.
        udp_port: port to bind (0: any).
        endpoints: endpoints to announce (``host:port``); None: the bound address, or
            the host's addresses when bound to the wildcard; empty: none (relay only,
            unless the peer's endpoints reach us).
        mux: mux tunables (both sides should agree).
        probe_interval: seconds between path probes.
        unsure_after: silence on the direct path after which we send on both paths.
        direct_timeout: silence on the direct path after which we fall back to relay.
        backoff_cap: the longest reconnect delay.
        stun: a STUN server ``(host, port)``; our reflexive address (as it sees our UDP
            socket) is announced first among our endpoints. None: no STUN.
        stun_interval: seconds between STUN queries.
        forget_after: how long a peer the coordinator called disconnected is kept (with
            its mux and streams) in case it comes back with the same key.
        wake_poll: seconds between sleep checks: wall time advancing more than 1.5 x
            this beyond monotonic time between two checks means the host slept (or the
            wall clock was stepped), and the node re-validates its socket, relay, direct
            paths and reflexive address. A merely late check (CPU starvation) is not a wake.
        call_me_maybe: send CALL_ME_MAYBE (our endpoints, over the relay) with every
            hole-punching try, so the peer probes us at the same moment (off: probe only).
        punch_tries: tries per hole-punching burst (gaps ``probe_interval``, doubling).
        reprobe_interval: seconds between tries once a burst found no direct path.
        relays: other DERP relays (``ws(s)://`` URLs) that may become our home relay, in
            regions ``derp_region + 1``, ``+ 2``, ... (the coordinator's relay map adds
            more). With more than one candidate the node pings each and moves home to
            a clearly faster one (docs/overlay.md, "Relays").
        relay_measure_interval: seconds between two rounds of relay pings.
        relay_switch_after: how long another relay must stay clearly faster (>= 10 ms
            and below 2/3 of the home relay's round trip) before we move home to it.
        relay_idle_timeout: a connection to a relay other than home (a peer's home
            relay, or one being measured) closes after this long unused.
        pmtu_discovery: search each direct path's datagram size (DPLPMTUD, RFC 8899;
            docs/overlay.md, "Path MTU"); off: ``mux.max_datagram_size`` everywhere.
            Needs don't-fragment on the socket (Linux); elsewhere it stays off.
        max_direct_datagram: the largest mux datagram a direct path may grow to
            (bytes; capped by the largest UDP datagram, 65,455 over IPv4).
    """

    name: str
    private_key: bytes
    coordinate_url: str
    derp_url: str
    derp_region: int = 1
    udp_host: str = "0.0.0.0"
    udp_port: int = 0
    endpoints: tuple[str, ...] | None = None
    mux: MuxConfig = field(default_factory=MuxConfig)
    probe_interval: float = 1.0
    unsure_after: float = 1.5
    direct_timeout: float = 4.0
    backoff_cap: float = 30.0
    forget_after: float = 30.0
    stun: tuple[str, int] | None = None
    stun_interval: float = 30.0
    wake_poll: float = 15.0
    call_me_maybe: bool = True
    punch_tries: int = 5
    reprobe_interval: float = 30.0
    relays: tuple[str, ...] = ()
    relay_measure_interval: float = 30.0
    relay_switch_after: float = 60.0
    relay_idle_timeout: float = 20.0
    pmtu_discovery: bool = True
    max_direct_datagram: int = 65535


@dataclass(slots=True)
class PeerStatus:
    """What :meth:`Overlay.status` says about one peer."""

    id: str
    name: str
    owner: str
    node_key: str
    online: bool
    handshake: bool
    path: str  # "relay" or "direct"
    direct_endpoint: str | None
    rtt: float | None
    bytes_sent: int
    bytes_received: int
    streams: int
    connection: str  # our mux connection id (hex); changes when the connection is replaced
    call_me_maybe_sent: int = 0  # CALL_ME_MAYBE frames we sent this peer
    call_me_maybe_received: int = 0  # and it sent us
    punch_bursts: int = 0  # hole-punching bursts started for this peer
    relay: str = ""  # the relay we send to it through (its home, or ours)
    # The largest mux datagram we send it on the current path (direct: what path MTU
    # discovery found so far, starting at the mux's 1,200; relay: 63 KiB).
    datagram_size: int = 0
    # Relay path: the most datagrams we keep in flight to it through its relay (home, or
    # a link to its home relay): three quarters of the queue depth that relay announced,
    # at most 64 (ours by default) and, through a link, at most home's; 24 through a
    # relay that does not announce it (derper) or while that relay's connection is not
    # open. 0 on a direct path.
    relay_window: int = 0
    path_mtu: int | None = None  # direct: IP packet bytes of such a datagram
    pmtu_state: str = ""  # direct: "searching", "done" or "off" (no discovery)
