"""One token bucket, shared by the coordinator's and the DERP relay's per-client limits."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; it starts full.

    A ``rate`` of 0 (or less) means unlimited: :meth:`take` always succeeds. The clock
    is the caller's (``now`` in seconds, monotonic), so the bucket is plain logic.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens if the bucket holds them; False (nothing spent) if not."""
        if self.rate <= 0:
            return True
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True
