"""Helpers shared by the tests of tunneld.proto.noise: deterministic rngs and a two-node rig."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

from hypothesis import settings

from tunneld.proto.noise import Outgoing, RemoteProtocolError, WireGuardCore, public_key

# CI-sized, deterministic hypothesis runs (env CI set) vs a bit more locally.
FUZZ = settings(
    derandomize=bool(os.environ.get("CI")),
    max_examples=200 if os.environ.get("CI") else 300,
    deadline=None,
)

WALL0 = 1_800_000_000.0  # an arbitrary UNIX time for TAI64N stamps


class ScriptedRng:
    """``rng(n)``: returns the scripted byte strings first (each must match ``n``), then
    bytes from a seeded ``random.Random``."""

    def __init__(self, seed: int = 0, script: Iterable[bytes] = ()) -> None:
        self._random = random.Random(seed)
        self.script = list(script)
        self.draws: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.draws.append(n)
        if self.script:
            value = self.script.pop(0)
            assert len(value) == n, f"scripted {len(value)} bytes, drawn {n}"
            return value
        return self._random.randbytes(n)


def private_key(seed: int) -> bytes:
    return bytes(random.Random(seed).randbytes(32))


class Pair:
    """Two cores that know each other; ``deliver`` moves datagrams between them."""

    A_ADDR = b"\x7f\x00\x00\x01\x10\x00"
    B_ADDR = b"\x7f\x00\x00\x02\x20\x00"

    def __init__(self, seed: int = 1, *, psk: bytes | None = None, keepalive: float | None = None):
        self.a_key = private_key(seed * 2)
        self.b_key = private_key(seed * 2 + 1)
        self.a = WireGuardCore(self.a_key, rng=ScriptedRng(seed * 10))
        self.b = WireGuardCore(self.b_key, rng=ScriptedRng(seed * 10 + 1))
        self.a_pub = public_key(self.a_key)
        self.b_pub = public_key(self.b_key)
        self.a.add_peer(self.b_pub, preshared_key=psk, persistent_keepalive=keepalive)
        self.b.add_peer(self.a_pub, preshared_key=psk, persistent_keepalive=keepalive)
        self.now = 100.0
        self.rejected: list[str] = []

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    def deliver(self, *, drop: bool = False) -> list[tuple[str, Outgoing]]:
        """Exchange datagrams until both sides are quiet; returns what was sent by whom.

        Datagrams a core rejects are dropped (as an adapter would) and kept in ``rejected``.
        """
        log: list[tuple[str, Outgoing]] = []
        while True:
            from_a = self.a.datagrams_to_send(self.now)
            from_b = self.b.datagrams_to_send(self.now)
            if not from_a and not from_b:
                return log
            for out in from_a:
                log.append(("a", out))
                if not drop:
                    self._receive(self.b, out.data, self.A_ADDR)
            for out in from_b:
                log.append(("b", out))
                if not drop:
                    self._receive(self.a, out.data, self.B_ADDR)

    def _receive(self, core: WireGuardCore, data: bytes, source: bytes) -> None:
        try:
            core.receive_datagram(data, source, self.now, self.wall)
        except RemoteProtocolError as exc:
            self.rejected.append(exc.reason)

    def events(self, core: WireGuardCore) -> list[object]:
        found = []
        while (event := core.next_event()) is not None:
            found.append(event)
        return found

    def advance(self, seconds: float, *, deliver: bool = False) -> None:
        """Step time to ``now + seconds``, firing every timer due on the way.

        With ``deliver``, datagrams are exchanged after each step; otherwise they queue.
        """
        end = self.now + seconds
        while True:
            due = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            nxt = min(due) if due else None
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            self.a.handle_timer(self.now, self.wall)
            self.b.handle_timer(self.now, self.wall)
            if deliver:
                self.deliver()
        self.now = end

    def handshake(self) -> None:
        self.a.initiate(self.b_pub, self.now, self.wall)
        self.deliver()


def snapshot(core: WireGuardCore) -> object:
    """Everything observable about a core's protocol state (white-box), for equality checks.

    Leaves out the under-load message counter, which by design counts every handshake
    message with a valid mac1.
    """

    def keypair(kp: object) -> object:
        if kp is None:
            return None
        return (
            kp.local_index,  # type: ignore[attr-defined]
            kp.remote_index,  # type: ignore[attr-defined]
            kp.send_counter,  # type: ignore[attr-defined]
            bytes(kp.send_key),  # type: ignore[attr-defined]
            bytes(kp.receive_key),  # type: ignore[attr-defined]
            kp.replay.highest,  # type: ignore[attr-defined]
            tuple(kp.replay._ring),  # type: ignore[attr-defined]
        )

    peers = []
    for peer in core._peers.values():
        hs = peer.handshake
        peers.append(
            (
                peer.public_key,
                (hs.state, bytes(hs.chain_key), bytes(hs.hash), bytes(hs.local_ephemeral)),
                (hs.local_index, hs.last_timestamp, hs.last_initiation_consumed, hs.last_sent),
                repr(peer.timers),
                keypair(peer.current),
                keypair(peer.previous),
                keypair(peer.next),
                tuple(peer.staged),
                peer.endpoint,
                peer.rx_bytes,
                peer.tx_bytes,
                peer.last_handshake,
                peer.cookies._last_mac1,
                bytes(peer.cookies._cookie or b""),
            )
        )
    index = sorted((i, pk.public_key, keypair(kp)) for i, (pk, kp) in core._index.items())
    checker = core._cookie_checker
    return (
        peers,
        index,
        len(core._outgoing),
        len(core._events),
        bytes(checker._secret or b""),
        checker._secret_set,
        dict(core._rate_limiter._buckets),
    )
