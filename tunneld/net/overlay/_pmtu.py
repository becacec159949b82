"""Path MTU discovery for one direct UDP path (DPLPMTUD, RFC 8899), sans-IO.

A validated direct path starts at the base size (the mux config's datagram size,
1,200 bytes). :class:`PmtuSearch` then asks for probes of bigger sizes: a mux
PATH_PROBE padded to that size, inside the WireGuard session, on the path itself.
Only the peer's PATH_RESPONSE to a probe of size N proves that N gets through (the
socket has don't-fragment set, so nothing on the way splits it: a datagram too big
for a link is dropped, or refused at once by our own kernel with EMSGSIZE).

The search (sizes are mux datagram sizes; :func:`ip_packet_bytes` converts):

* **Ladder.** Climb the common link MTUs of :data:`LADDER` (IP packet bytes: 1,400,
  1,500, 9,000, 16 KiB, 32 KiB, 64 KiB) from the current size up, one probe at a time;
  an acknowledged probe raises the size at once, and the next probe leaves at once.
* **Refine.** The first size that fails (``max_probes`` probes unanswered within
  ``probe_timeout`` each, or one EMSGSIZE) bounds the search; between the largest
  size that worked and that one a binary search, on the 16-byte grid WireGuard's
  padding gives (a size between two grid points sends the same bytes), runs at most
  ``max_refine`` steps.
* **Done.** The size stays; a probe of exactly the current size (above the base)
  confirms it every ``confirm_interval``. ``max_probes`` confirmations in a row
  unanswered, or EMSGSIZE for a datagram of the current size, is a **black hole**:
  back to the base size at once, and a new search bounded by the size that failed.
  After ``raise_interval`` the search runs again upwards (the path may have grown).

Everything is bounded: one probe outstanding, at most ``max_probes`` per size, and
``len(LADDER) + max_refine`` sizes per search.
"""

from __future__ import annotations

import enum
import math

from tunneld.net.overlay._ids import HEADER_SIZE

__all__ = [
    "LADDER",
    "PmtuSearch",
    "PmtuState",
    "datagram_bytes",
    "ip_packet_bytes",
    "mux_size_for",
]

# WireGuard transport message around the (16-byte padded) plaintext: type, receiver
# index and counter (16 bytes), then the Poly1305 tag (16 bytes).
_WG_OVERHEAD = 32
_UDP_HEADER = 8
_IPV4_HEADER = 20
_IPV6_HEADER = 40
# An IP packet is at most 65,535 bytes (IPv4's total length; IPv6's payload length
# excludes its header, but a 65,536-byte loopback MTU caps the whole packet anyway).
MAX_IP_PACKET = 65535
# Common link MTUs (IP packet bytes): tunnels and PPPoE under Ethernet's 1,500, jumbo
# frames, then loopback-sized steps up to the largest UDP datagram.
LADDER = (1400, 1500, 9000, 16384, 32768, MAX_IP_PACKET)


def datagram_bytes(mux_size: int) -> int:
    """UDP payload bytes of a WireGuard transport packet carrying a ``mux_size``-byte
    mux packet (our connection-id header; the plaintext padded to 16 bytes)."""
    return -(-(mux_size + HEADER_SIZE) // 16) * 16 + _WG_OVERHEAD


def ip_packet_bytes(mux_size: int, *, ipv6: bool = False) -> int:
    """IP packet bytes (the link MTU it needs) of a ``mux_size``-byte mux packet."""
    return datagram_bytes(mux_size) + _UDP_HEADER + (_IPV6_HEADER if ipv6 else _IPV4_HEADER)


def mux_size_for(ip_packet: int, *, ipv6: bool = False) -> int:
    """The largest mux packet whose IP packet is at most ``ip_packet`` bytes (it is on
    the 16-byte grid: one byte more would pad to 16 more)."""
    room = ip_packet - _UDP_HEADER - (_IPV6_HEADER if ipv6 else _IPV4_HEADER) - _WG_OVERHEAD
    return room // 16 * 16 - HEADER_SIZE


def _grid(mux_size: int) -> int:
    """Which 16-byte step of padded plaintext ``mux_size`` fits in (rounded down)."""
    return (mux_size + HEADER_SIZE) // 16


class PmtuState(enum.Enum):
    SEARCHING = "searching"
    DONE = "done"


class PmtuSearch:
    """The datagram size of one direct path, and the probes that find it.

    Drive it with: :meth:`due` (a probe size to send now, or None), :meth:`sent` (that
    probe left with this challenge), :meth:`acknowledged` (a PATH_RESPONSE came),
    :meth:`too_big` (our kernel refused a datagram with EMSGSIZE). ``size`` is the
    size to send with; every call that may change it returns whether it did.

    Args:
        base: the size every path carries (never probed; the floor after a black hole).
        now: when the path was validated (the search starts at once).
        ipv6: the path's address family (its IP header size).
        maximum: the largest size ever probed (mux bytes; default: the largest UDP
            datagram's worth).
        ladder: the link MTUs (IP packet bytes) the search climbs.
        max_probes: probes of one size before it counts as failed (RFC 8899 MAX_PROBES).
        probe_timeout: seconds to wait for a probe's answer (at least 3 RTTs, see ``rtt``).
        confirm_interval: seconds between confirmations of the current size.
        raise_interval: seconds after a finished search before searching upwards again.
        max_refine: binary-search steps after the ladder stopped.
    """

    def __init__(
        self,
        base: int,
        now: float,
        *,
        ipv6: bool = False,
        maximum: int | None = None,
        ladder: tuple[int, ...] = LADDER,
        max_probes: int = 3,
        probe_timeout: float = 1.0,
        confirm_interval: float = 1.0,
        raise_interval: float = 600.0,
        max_refine: int = 6,
    ) -> None:
        self.base = base
        self.size = base
        self.state = PmtuState.SEARCHING
        self.ipv6 = ipv6
        top = mux_size_for(MAX_IP_PACKET, ipv6=ipv6)
        self.maximum = max(base, min(top, maximum if maximum is not None else top))
        self._ladder = sorted(
            {
                size
                for size in (mux_size_for(mtu, ipv6=ipv6) for mtu in ladder)
                if base < size < self.maximum
            }
            | ({self.maximum} if self.maximum > base else set())
        )
        self._max_probes = max(1, max_probes)
        self._timeout = probe_timeout
        self._confirm_interval = confirm_interval
        self._raise_interval = raise_interval
        self._max_refine = max_refine
        self.rtt = 0.0  # the path's RTT as last measured (probes wait >= 3 of them)
        self._too_big_at: int | None = None  # smallest size known not to get through
        self._refined = 0
        self._probe: tuple[bytes, int, float] | None = None  # challenge, size, sent at
        self._misses = 0  # unanswered probes in a row of the size being probed
        self._next_at = now  # no probe before this (confirmations, raise timer)
        self._raise_at = math.inf  # when a finished search runs again upwards
        # Counters for status and tests.
        self.probes_sent = 0
        self.black_holes = 0
        self.searches = 1

    @property
    def outstanding(self) -> int | None:
        """The size of the probe awaiting an answer, if any."""
        return None if self._probe is None else self._probe[1]

    def due(self, now: float) -> int | None:
        """The size of a probe to send now, or None (ask again later: on a timer such
        as the path's heartbeat, and after every answer)."""
        if self._probe is not None:
            _, size, sent_at = self._probe
            if now - sent_at < max(self._timeout, 3 * self.rtt):
                return None
            self._probe = None
            self._missed(size, now)
        if now < self._next_at:
            return None
        if self.state is PmtuState.SEARCHING:
            target = self._target()
            if target is not None:
                return target
            self.state = PmtuState.DONE
            self._raise_at = now + self._raise_interval
            self._next_at = now + self._confirm_interval
            return None
        if now >= self._raise_at and self.size < self.maximum:
            self._search(now)
            return self._target()
        if self.size > self.base:
            return self.size  # confirm the size we send with
        self._next_at = now + self._confirm_interval
        return None

    def sent(self, challenge: bytes, size: int, now: float) -> None:
        """The probe of ``size`` :meth:`due` asked for is on its way with ``challenge``."""
        self._probe = (bytes(challenge), size, now)
        self.probes_sent += 1

    def acknowledged(self, challenge: bytes, now: float) -> bool | None:
        """A PATH_RESPONSE echoed ``challenge``: None if it was not our probe's, else
        whether ``size`` changed."""
        if self._probe is None or self._probe[0] != challenge:
            return None
        size = self._probe[1]
        self._probe = None
        self._misses = 0
        if self.state is PmtuState.DONE:
            self._next_at = now + self._confirm_interval
        if size > self.size:
            if self.state is PmtuState.SEARCHING and size not in self._ladder:
                self._refined += 1
            self.size = size
            return True
        return False

    def too_big(self, datagram: int, now: float) -> bool:
        """Our kernel refused a ``datagram``-byte UDP payload on this path (EMSGSIZE):
        a probe of that size failed for sure; data of the current size means the
        path shrank (a black hole). Returns whether ``size`` changed."""
        probe = self._probe
        if probe is not None and datagram == datagram_bytes(probe[1]) and probe[1] > self.size:
            self._probe = None
            self._misses = 0
            self._failed(probe[1])
            return False
        if datagram_bytes(self.base) < datagram <= datagram_bytes(self.size):
            self._black_hole(now, datagram - _WG_OVERHEAD - HEADER_SIZE)
            return True
        return False

    # -- internals ------------------------------------------------------------------

    def _target(self) -> int | None:
        """The next size to probe in this search, None when it is over."""
        limit = self._too_big_at
        for size in self._ladder:
            if size > self.size and (limit is None or size < limit):
                return size
        if limit is None or self._refined >= self._max_refine:
            return None
        low, high = _grid(self.size), _grid(limit)
        middle = (low + high) // 2
        if middle <= low:
            return None
        return middle * 16 - HEADER_SIZE

    def _missed(self, size: int, now: float) -> None:
        self._misses += 1
        if self._misses < self._max_probes:
            return  # :meth:`due` asks for the same size again
        self._misses = 0
        if size > self.size:
            self._failed(size)
        elif self.size > self.base:
            self._black_hole(now, self.size)

    def _failed(self, size: int) -> None:
        if size not in self._ladder:
            self._refined += 1
        if self._too_big_at is None or size < self._too_big_at:
            self._too_big_at = size
        # The ladder's later steps only make sense below the failed size (_target).

    def _black_hole(self, now: float, failed: int) -> None:
        """Data (or confirmations) of the current size stopped getting through."""
        self.black_holes += 1
        self.size = self.base
        self._search(now)
        self._too_big_at = max(failed, self.base + 1)
        self._probe = None

    def _search(self, now: float) -> None:
        self.state = PmtuState.SEARCHING
        self.searches += 1
        self._too_big_at = None
        self._refined = 0
        self._misses = 0
        self._next_at = now
