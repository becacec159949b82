"""mac1/mac2 and cookie replies: WireGuard's DoS mitigation (whitepaper section 5.3, 5.4.7).

``CookieChecker`` is the receiving side (one per node, keyed by our static public
key): it verifies mac1, and under load verifies mac2 or mints a cookie reply.
``CookieGenerator`` is the sending side (one per peer, keyed by the peer's static
public key): it adds mac1, and mac2 while it holds a fresh cookie from that peer.
``TokenBucket`` is the per-source handshake rate limiter wireguard-go applies
under load (20 packets/s, burst 5).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from tunneld.proto.noise._crypto import (
    LABEL_COOKIE,
    LABEL_MAC1,
    AuthenticationFailed,
    hash_,
    mac,
    xaead_open,
    xaead_seal,
)
from tunneld.proto.noise._errors import RemoteProtocolError
from tunneld.proto.noise._messages import CookieReply

__all__ = [
    "COOKIE_REFRESH_TIME",
    "CookieChecker",
    "CookieGenerator",
    "LoadTracker",
    "TokenBucket",
    "compute_mac1",
    "compute_mac2",
    "mac1_key",
]

from tunneld.proto.noise._constants import COOKIE_REFRESH_TIME, UNDER_LOAD_AFTER_TIME


def mac1_key(static_public: bytes) -> bytes:
    """HASH(LABEL_MAC1 ‖ receiver's static public key)."""
    return hash_(LABEL_MAC1 + static_public)


def cookie_key(static_public: bytes) -> bytes:
    """HASH(LABEL_COOKIE ‖ receiver's static public key): the cookie reply's XAEAD key."""
    return hash_(LABEL_COOKIE + static_public)


def compute_mac1(key: bytes, message: bytes) -> bytes:
    """mac1 of a handshake message: MAC(key, everything before mac1)."""
    return mac(key, message[:-32])


def compute_mac2(cookie: bytes, message: bytes) -> bytes:
    """mac2 of a handshake message: MAC(cookie, everything before mac2)."""
    return mac(cookie, message[:-16])


class CookieChecker:
    """Verifies mac1/mac2 of incoming handshake messages and creates cookie replies.

    The secret is drawn from ``rng`` lazily, and redrawn when older than 120 s.
    """

    def __init__(self, static_public: bytes, rng: Callable[[int], bytes]) -> None:
        self._mac1_key = mac1_key(static_public)
        self._cookie_key = cookie_key(static_public)
        self._rng = rng
        self._secret: bytearray | None = None
        self._secret_set = 0.0

    def check_mac1(self, message: bytes) -> bool:
        """Whether mac1 of the handshake ``message`` is valid for us."""
        return hmac.compare_digest(compute_mac1(self._mac1_key, message), message[-32:-16])

    def _cookie(self, source: bytes) -> bytes:
        assert self._secret is not None
        return mac(bytes(self._secret), source)

    def check_mac2(self, message: bytes, source: bytes, now: float) -> bool:
        """Whether mac2 carries a cookie we minted for ``source`` within the last 120 s."""
        if self._secret is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            return False
        expected = compute_mac2(self._cookie(source), message)
        return hmac.compare_digest(expected, message[-16:])

    def create_reply(self, message: bytes, receiver: int, source: bytes, now: float) -> bytes:
        """A 64-byte cookie reply to ``message`` (sent from ``source``) for index ``receiver``.

        Draws a fresh secret (32 bytes) if none is current, then the 24-byte nonce.
        """
        if self._secret is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            if self._secret is not None:
                self._secret[:] = bytes(len(self._secret))
            self._secret = bytearray(self._rng(32))
            self._secret_set = now
        nonce = self._rng(24)
        encrypted = xaead_seal(self._cookie_key, nonce, self._cookie(source), message[-32:-16])
        return CookieReply(receiver, nonce, encrypted).to_bytes()


class CookieGenerator:
    """Adds mac1 (and mac2 with a fresh cookie) to the handshake messages we send a peer."""

    def __init__(self, peer_static_public: bytes) -> None:
        self._mac1_key = mac1_key(peer_static_public)
        self._cookie_key = cookie_key(peer_static_public)
        self._last_mac1: bytes | None = None
        self._cookie: bytearray | None = None
        self._cookie_set = 0.0

    @property
    def has_cookie(self) -> bool:
        """Whether a cookie from the peer is held (it may be stale)."""
        return self._cookie is not None

    def add_macs(self, message: bytes, now: float) -> bytes:
        """``message`` with mac1 and (while a cookie is under 120 s old) mac2 filled in."""
        body = message[:-32]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie is None or now - self._cookie_set > COOKIE_REFRESH_TIME:
            return body + mac1 + bytes(16)
        return body + mac1 + mac(bytes(self._cookie), body + mac1)

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Store the cookie from ``reply``; it is bound to the mac1 we last sent.

        Raises:
            RemoteProtocolError: we sent no handshake message to this peer, or the
                reply does not decrypt under our last mac1.
        """
        if self._last_mac1 is None:
            raise RemoteProtocolError("cookie reply: no handshake message was sent")
        try:
            cookie = xaead_open(
                self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except AuthenticationFailed:
            raise RemoteProtocolError("cookie reply: cannot decrypt cookie") from None
        if self._cookie is not None:
            self._cookie[:] = bytes(len(self._cookie))
        self._cookie = bytearray(cookie)
        self._cookie_set = now


class TokenBucket:
    """Per-source token buckets: ``rate`` tokens/s, at most ``burst`` (wireguard-go: 20, 5).

    Buckets of sources idle long enough to be full again are forgotten on the next
    ``allow``, so the table stays bounded by the recent senders.
    """

    def __init__(self, rate: float = 20.0, burst: int = 5) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._last_sweep = 0.0

    def would_allow(self, source: bytes, now: float) -> bool:
        """Whether ``allow`` would let a packet from ``source`` through (no state change)."""
        tokens, stamp = self._buckets.get(source, (float(self.burst), now))
        return min(self.burst, tokens + (now - stamp) * self.rate) >= 1.0

    def allow(self, source: bytes, now: float) -> bool:
        """Take one token for ``source``; False (and nothing taken) if the bucket is empty."""
        if now - self._last_sweep > 1.0:
            refill = self.burst / self.rate
            self._buckets = {
                src: entry for src, entry in self._buckets.items() if now - entry[1] < refill
            }
            self._last_sweep = now
        tokens, stamp = self._buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - stamp) * self.rate)
        if tokens < 1.0:
            return False
        self._buckets[source] = (tokens - 1.0, now)
        return True


class LoadTracker:
    """Decides when the node is "under load" and must demand mac2 (whitepaper 5.3).

    wireguard-go is under load while its handshake queue is at least 1/8 full, and
    stays so for a second after. A sans-IO core has no queue, so any of these turns
    it on: ``force`` (set by the caller), ``note_backlog`` (the adapter reports its
    queue), or ``threshold`` handshake messages with a valid mac1 within a second.
    """

    def __init__(self, threshold: int) -> None:
        self.force = False
        self.threshold = threshold
        self._until: float | None = None
        self._window_start = 0.0
        self._window_count = 0

    def note_message(self, now: float) -> None:
        """Count one handshake message with a valid mac1."""
        if now - self._window_start >= 1.0 or now < self._window_start:
            self._window_start = now
            self._window_count = 0
        self._window_count += 1
        if self._window_count >= self.threshold:
            self._until = now + UNDER_LOAD_AFTER_TIME

    def note_backlog(self, queued: int, capacity: int, now: float) -> None:
        """An adapter's handshake queue holds ``queued`` of ``capacity``."""
        if capacity > 0 and queued * 8 >= capacity:
            self._until = now + UNDER_LOAD_AFTER_TIME

    def active(self, now: float) -> bool:
        """Whether handshake messages must carry a valid mac2 at ``now``."""
        return self.force or (self._until is not None and now < self._until)
