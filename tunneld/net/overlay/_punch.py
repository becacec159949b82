"""When to try for a direct path to one peer, and what a CALL_ME_MAYBE may carry.

Hole punching needs both sides to send at about the same time: a NAT (or a stateful
firewall) lets a peer's datagram in only after we sent one to that peer's address.
So every *try* for a direct path does two things at once: it sends CALL_ME_MAYBE with
our candidate endpoints to the peer over the relay (a mux frame inside the WireGuard
session, so it is authenticated), and probes every candidate of the peer. A peer that
receives CALL_ME_MAYBE probes the listed endpoints at once, so its probes leave while
ours are opening our side, and the next try of ours finds its side open too.

Tries come in bursts (Tailscale's shape): a burst starts when we first have a session
with the peer, when its direct path goes silent, when our endpoints or the peer's
change, and after the host wakes; a burst is ``tries`` tries with doubling gaps
starting at ``interval`` (0, 1, 3, 7, 15 s with the defaults), then one try every
``reprobe_interval`` while there is still no direct path. A validated direct path
stops the schedule (heartbeats keep it); everything here is bounded.

:class:`PunchSchedule` is sans-IO: times go in, decisions come out.
"""

from __future__ import annotations

import math

from tunneld.proto.coord import MAX_ENDPOINTS, validate_endpoint

__all__ = ["PunchSchedule", "parse_call_me_maybe"]


class PunchSchedule:
    """The try times of one peer's hole punching.

    Args:
        interval: the first gap between two tries of a burst (doubles each try).
        tries: tries per burst (at least 1).
        reprobe_interval: the gap between tries once a burst is spent.
    """

    def __init__(self, interval: float, tries: int, reprobe_interval: float) -> None:
        self._interval = interval
        self._tries = max(1, tries)
        self._reprobe = reprobe_interval
        self.next_at: float | None = None  # None: stopped (a direct path, or not started)
        self.tried = 0  # tries in the current burst
        self.bursts = 0  # bursts started so far (status, tests)
        self.reason = ""

    def restart(self, now: float, reason: str) -> None:
        """Start a new burst: the first try is due at once."""
        self.next_at = now
        self.tried = 0
        self.bursts += 1
        self.reason = reason

    def stop(self) -> None:
        """A direct path is validated: no tries until the next :meth:`restart`."""
        self.next_at = None

    @property
    def running(self) -> bool:
        return self.next_at is not None

    def due(self, now: float) -> bool:
        """Whether a try is due at ``now``."""
        return self.next_at is not None and now >= self.next_at

    def note_try(self, now: float) -> None:
        """A try was made at ``now``: schedule the next one."""
        self.tried += 1
        burst = self.tried < self._tries
        gap = self._interval * (2 ** (self.tried - 1)) if burst else self._reprobe
        self.next_at = now + gap if math.isfinite(gap) else None


def parse_call_me_maybe(endpoints: tuple[bytes, ...]) -> tuple[str, ...]:
    """The valid ``ip:port`` / ``[ipv6]:port`` endpoints of a CALL_ME_MAYBE, in order.

    The frame's endpoints are opaque bytes to the mux; here they must be ASCII
    endpoints as the coordinator would accept them. Anything else is skipped (a peer
    on a newer version may send kinds we do not know); duplicates are dropped and at
    most ``MAX_ENDPOINTS`` are kept, so a peer cannot make us probe without bound.
    """
    found: list[str] = []
    for raw in endpoints:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        if validate_endpoint(text) is None and text not in found:
            found.append(text)
            if len(found) >= MAX_ENDPOINTS:
                break
    return tuple(found)
