"""Per-source rate limits for the endpoints anyone can reach (login, registration)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from tunneld.control._ratelimit import TokenBucket
from tunneld.http import Request

__all__ = ["SourceLimiter", "source_of"]

_MAX_SOURCES: Final = 4096


def source_of(request: Request) -> str:
    """The client address a request came from (the host part of a TCP peer), or ``"-"``."""
    peer = request.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "-"


class SourceLimiter:
    """A token bucket per source address: ``burst`` at once, then ``rate`` per second.

    Remembers at most 4096 sources; the least recently seen is forgotten first (it
    starts full again, the price of a bounded table). Plain logic: ``now`` comes in.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Spend one token of ``source``'s bucket; False when it is empty."""
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
        self._buckets[source] = bucket
        while len(self._buckets) > _MAX_SOURCES:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    def retry_after(self) -> int:
        """Seconds until one more request would be allowed from an empty bucket."""
        return max(1, round(1.0 / self.rate)) if self.rate > 0 else 1
