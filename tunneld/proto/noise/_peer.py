"""Per-peer state of the WireGuard core: handshake, keypairs, timers, staged packets.

Key material is held in ``bytearray``s we own and overwritten with zeros when a
keypair or handshake is retired. That is best effort only: Python ``bytes`` are
immutable, every crypto call (pynacl, hashlib, cryptography) makes its own copies,
the ``cryptography`` cipher object keeps the key inside OpenSSL until it is
garbage-collected, and the interpreter may leave freed copies in memory. What we
guarantee is that the core drops every reference to retired keys.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunneld.proto.noise._cookie import CookieGenerator
from tunneld.proto.noise._crypto import AuthenticationFailed, nonce_for_counter, zero
from tunneld.proto.noise._replay import ReplayWindow

__all__ = ["HandshakeState", "Keypair", "PeerState", "PeerStatus", "Timers"]

_TRANSPORT_HEADER = struct.Struct("<IIQ")  # type 4, receiver index, counter
_NONCE = struct.Struct("<4xQ")


class HandshakeState(enum.Enum):
    """Where a peer's handshake stands (wireguard-go's handshakeState).

    ZEROED -> INITIATION_CREATED (we sent message 1) -> ZEROED (response consumed,
    session begun). A consumed initiation becomes a response and a session at once,
    so the responder never rests in an intermediate state.
    """

    ZEROED = "zeroed"
    INITIATION_CREATED = "initiation created"


@dataclass(slots=True)
class Handshake:
    """The handshake in progress with one peer, plus its replay/flood guards."""

    state: HandshakeState = HandshakeState.ZEROED
    chain_key: bytearray = field(default_factory=bytearray)
    hash: bytearray = field(default_factory=bytearray)
    local_ephemeral: bytearray = field(default_factory=bytearray)
    local_index: int | None = None
    last_timestamp: bytes = bytes(12)
    last_initiation_consumed: float | None = None
    last_sent: float | None = None

    def clear(self) -> None:
        """Forget the handshake in progress (the replay guards stay)."""
        zero(self.chain_key)
        zero(self.hash)
        zero(self.local_ephemeral)
        self.chain_key = bytearray()
        self.hash = bytearray()
        self.local_ephemeral = bytearray()
        self.state = HandshakeState.ZEROED
        self.local_index = None


class Keypair:
    """One session's transport keys, counters and replay window."""

    __slots__ = (
        "_receive_cipher",
        "_send_cipher",
        "created",
        "initiator",
        "local_index",
        "receive_key",
        "remote_index",
        "replay",
        "send_counter",
        "send_key",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        *,
        created: float,
        initiator: bool,
        local_index: int,
        remote_index: int,
    ) -> None:
        self.send_key = bytearray(send_key)
        self.receive_key = bytearray(receive_key)
        # cryptography's ChaCha20Poly1305 costs ~1.5 us a call against ~15 us for pynacl's
        # binding (see `tunneld bench noise`), so the data path uses it.
        self._send_cipher: ChaCha20Poly1305 | None = ChaCha20Poly1305(send_key)
        self._receive_cipher: ChaCha20Poly1305 | None = ChaCha20Poly1305(receive_key)
        self.created = created
        self.initiator = initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.send_counter = 0
        self.replay = ReplayWindow()

    def seal(self, counter: int, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` under the sending key with ``counter`` as the nonce."""
        assert self._send_cipher is not None, "keypair was destroyed"
        return self._send_cipher.encrypt(nonce_for_counter(counter), plaintext, None)

    def seal_transport(self, plaintext: bytes) -> bytes:
        """Message 4 carrying ``plaintext`` (already padded) under the next counter.

        The caller checks ``send_counter < REJECT_AFTER_MESSAGES`` first.
        """
        assert self._send_cipher is not None, "keypair was destroyed"
        counter = self.send_counter
        self.send_counter = counter + 1
        return _TRANSPORT_HEADER.pack(4, self.remote_index, counter) + self._send_cipher.encrypt(
            _NONCE.pack(counter), plaintext, None
        )

    def open(self, counter: int, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt under the receiving key; raises AuthenticationFailed on a bad tag."""
        if self._receive_cipher is None:
            raise AuthenticationFailed("keypair was destroyed")
        try:
            return self._receive_cipher.decrypt(nonce_for_counter(counter), ciphertext, None)
        except InvalidTag:
            raise AuthenticationFailed("aead") from None

    def destroy(self) -> None:
        """Zero the keys we hold and drop the ciphers (best effort, see module docs)."""
        zero(self.send_key)
        zero(self.receive_key)
        self._send_cipher = None
        self._receive_cipher = None


@dataclass(slots=True)
class Timers:
    """Absolute deadlines (``now`` units) of a peer's timers; None when not armed.

    Names and rules follow wireguard-go's ``timers.go``.
    """

    retransmit_handshake: float | None = None
    send_keepalive: float | None = None
    new_handshake: float | None = None
    zero_key_material: float | None = None
    persistent_keepalive: float | None = None
    handshake_attempts: int = 0
    need_another_keepalive: bool = False
    sent_last_minute_handshake: bool = False

    def earliest(self) -> float | None:
        deadlines = [
            t
            for t in (
                self.retransmit_handshake,
                self.send_keepalive,
                self.new_handshake,
                self.zero_key_material,
                self.persistent_keepalive,
            )
            if t is not None
        ]
        return min(deadlines) if deadlines else None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A snapshot of one peer for status displays (``WireGuardCore.peer_status``)."""

    public_key: bytes
    endpoint: bytes | None
    last_handshake: float | None
    has_session: bool
    tx_bytes: int
    rx_bytes: int


class PeerState:
    """Everything the core keeps about one configured peer."""

    def __init__(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes,
        static_static: bytes,
        persistent_keepalive: float | None,
        endpoint: bytes | None,
    ) -> None:
        self.public_key = public_key
        self.preshared_key = bytearray(preshared_key)
        self.static_static = bytearray(static_static)
        self.persistent_keepalive = persistent_keepalive
        self.endpoint = endpoint
        self.cookies = CookieGenerator(public_key)
        self.handshake = Handshake()
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.timers = Timers()
        self.staged: deque[bytes] = deque()
        self.last_handshake: float | None = None
        self.tx_bytes = 0
        self.rx_bytes = 0

    def keypairs(self) -> list[Keypair]:
        """The live keypairs (current, previous, next) that are set."""
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]
