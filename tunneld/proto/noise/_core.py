"""``WireGuardCore``: one node's sans-IO WireGuard (handshakes, sessions, timers, cookies).

The rules follow the WireGuard whitepaper and, where it is silent, wireguard-go
(``send.go``, ``receive.go``, ``timers.go``, ``peer.go``, ``noise-protocol.go``):

* Handshake messages: mac1 must verify; under load mac2 must verify too, else a
  cookie reply goes back to the source; then a per-source token bucket applies.
* An initiation is accepted only with a TAI64N timestamp strictly newer than the
  last accepted from that peer, and at most once per 20 ms per peer.
* The responder's keypair goes into ``next`` and becomes ``current`` on the first
  transport packet received under it; the initiator's becomes ``current`` at once
  (the old current becomes ``previous``).
* Timers (wireguard-go names): retransmit handshake after RekeyTimeout + jitter,
  give up after RekeyAttemptTime; keepalive 10 s after data received with nothing
  sent; new handshake 15 s (+ jitter) after data sent with nothing received; zero
  everything 3 x RejectAfterTime after the last session was derived; persistent
  keepalive after every authenticated packet either way.

Randomness comes only from the injected ``rng(n) -> bytes``. Draw order, so a test
can script it: an initiation draws the ephemeral private key (32 bytes), then the
sender index (4 bytes, little-endian on the wire; redrawn while in use), then the
retransmit jitter (4 bytes). A response draws the sender index (4), then the
ephemeral (32). Other jitter (new-handshake timer) draws 4 bytes; a cookie reply
draws a 32-byte secret when rotating and a 24-byte nonce.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable

from tunneld.proto.noise._constants import (
    HANDSHAKE_INITIATION_RATE,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from tunneld.proto.noise._cookie import CookieChecker, LoadTracker, TokenBucket
from tunneld.proto.noise._crypto import (
    KEY_SIZE,
    AuthenticationFailed,
    clamp,
    dh,
    public_key,
    tai64n,
    zero,
)
from tunneld.proto.noise._errors import NoiseError, RemoteProtocolError
from tunneld.proto.noise._events import (
    DataReceived,
    Event,
    HandshakeCompleted,
    HandshakeTimedOut,
    Outgoing,
)
from tunneld.proto.noise._handshake import (
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
)
from tunneld.proto.noise._messages import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_TRANSPORT,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    unpack_transport_header,
)
from tunneld.proto.noise._peer import HandshakeState, Keypair, PeerState, PeerStatus
from tunneld.proto.noise._replay import WINDOW_SIZE

__all__ = ["WireGuardCore"]

_ZERO_PSK = bytes(32)
_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
# wireguard-go: under load when the handshake queue is >= 1/8 full (QueueHandshakeSize
# 1024). A sans-IO core has no queue, so we count handshake messages per second instead;
# the adapter may also report its backlog (note_handshake_backlog) or force the flag.
_DEFAULT_LOAD_THRESHOLD = 128


def _replay_reason(kp: Keypair, counter: int) -> str:
    if counter >= REJECT_AFTER_MESSAGES:
        return f"transport: counter {counter} at or past RejectAfterMessages"
    if kp.replay.highest - counter > WINDOW_SIZE:
        return f"transport: counter {counter} too old (window ends at {kp.replay.highest})"
    return f"transport: replayed counter {counter}"


class WireGuardCore:
    """One node's WireGuard: static key, peers, index table, cookies, timers.

    Feed datagrams with ``receive_datagram``; collect ``datagrams_to_send`` and
    ``next_event``; call ``handle_timer`` when ``get_timer`` says. ``now`` is a
    monotonic clock in seconds and ``wall`` UNIX time (only for TAI64N timestamps);
    the core never reads a clock.
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Callable[[int], bytes] = secrets.token_bytes,
        handshake_load_threshold: int = _DEFAULT_LOAD_THRESHOLD,
    ) -> None:
        if len(private_key) != KEY_SIZE:
            raise NoiseError(f"private key must be {KEY_SIZE} bytes, got {len(private_key)}")
        self._private = bytearray(private_key)
        self._public = public_key(private_key)
        self._rng = rng
        self._peers: dict[bytes, PeerState] = {}
        # receiver index -> (peer, keypair); keypair None while the index names a handshake.
        self._index: dict[int, tuple[PeerState, Keypair | None]] = {}
        self._cookie_checker = CookieChecker(self._public, rng)
        self._rate_limiter = TokenBucket()
        self._outgoing: list[Outgoing] = []
        self._events: deque[Event] = deque()
        self._load = LoadTracker(handshake_load_threshold)

    # ------------------------------------------------------------------ configuration

    @property
    def public_key(self) -> bytes:
        """Our static public key."""
        return self._public

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        persistent_keepalive: float | None = None,
        endpoint: bytes | None = None,
    ) -> None:
        """Configure a peer (replacing nothing: adding a known key raises NoiseError).

        Raises:
            NoiseError: wrong key sizes, a low-order public key, or a duplicate.
        """
        if len(public_key) != KEY_SIZE:
            raise NoiseError(f"peer public key must be {KEY_SIZE} bytes")
        if preshared_key is not None and len(preshared_key) != KEY_SIZE:
            raise NoiseError(f"preshared key must be {KEY_SIZE} bytes")
        if public_key in self._peers:
            raise NoiseError("peer already configured")
        try:
            static_static = dh(bytes(self._private), public_key)
        except AuthenticationFailed:
            raise NoiseError("peer public key is a low-order point") from None
        self._peers[public_key] = PeerState(
            public_key,
            preshared_key=preshared_key or _ZERO_PSK,
            static_static=static_static,
            persistent_keepalive=persistent_keepalive or None,
            endpoint=endpoint,
        )

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer, zeroing its keys and dropping its queued packets."""
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._zero_and_flush_all(peer)
        zero(peer.static_static)
        zero(peer.preshared_key)

    def close(self) -> None:
        """Forget every peer and zero our private key (best effort); the core is then unusable."""
        for key in list(self._peers):
            self.remove_peer(key)
        zero(self._private)
        self._outgoing.clear()
        self._events.clear()

    def peers(self) -> list[bytes]:
        """Public keys of the configured peers."""
        return list(self._peers)

    def peer_status(self, public_key: bytes) -> PeerStatus:
        """A snapshot of a peer; raises NoiseError for an unknown one."""
        peer = self._peer(public_key)
        return PeerStatus(
            public_key=peer.public_key,
            endpoint=peer.endpoint,
            last_handshake=peer.last_handshake,
            has_session=peer.current is not None,
            tx_bytes=peer.tx_bytes,
            rx_bytes=peer.rx_bytes,
        )

    def set_endpoint(self, public_key: bytes, endpoint: bytes | None) -> None:
        """Set where packets for a peer go (authenticated packets update it too)."""
        self._peer(public_key).endpoint = endpoint

    @property
    def force_under_load(self) -> bool:
        """Set to demand mac2 from every handshake message (e.g. from an operator switch)."""
        return self._load.force

    @force_under_load.setter
    def force_under_load(self, value: bool) -> None:
        self._load.force = value

    @property
    def handshake_load_threshold(self) -> int:
        """Handshake messages per second (valid mac1) that put the core under load."""
        return self._load.threshold

    @handshake_load_threshold.setter
    def handshake_load_threshold(self, value: int) -> None:
        self._load.threshold = value

    def note_handshake_backlog(self, queued: int, capacity: int, now: float) -> None:
        """Tell the core how many handshake datagrams wait in the adapter's queue.

        At 1/8 of ``capacity`` or more the core is under load for the next second
        (wireguard-go's rule), requiring mac2 from every handshake message.
        """
        self._load.note_backlog(queued, capacity, now)

    def under_load(self, now: float) -> bool:
        """Whether handshake messages must carry a valid mac2 right now."""
        return self._load.active(now)

    # ------------------------------------------------------------------ sans-IO surface

    def initiate(self, peer: bytes, now: float, wall: float) -> None:
        """Queue a handshake initiation to ``peer``.

        As in wireguard-go, nothing is sent if one went out less than RekeyTimeout
        (5 s) ago; retransmissions then follow from the timers.

        Raises:
            NoiseError: unknown peer.
        """
        self._send_initiation(self._peer(peer), now, wall, retry=False)

    def send(self, peer: bytes, payload: bytes, now: float, wall: float) -> None:
        """Encrypt ``payload`` (padded to 16 here) to ``peer`` and queue the packet.

        With no usable session the payload is staged (at most 128 per peer, oldest
        dropped first) and a handshake is started; staged packets go out when it
        completes and are dropped if it times out.

        Raises:
            NoiseError: unknown peer.
        """
        state = self._peer(peer)
        kp = state.current
        if (
            kp is not None
            and not state.staged
            and kp.send_counter < REJECT_AFTER_MESSAGES
            and now - kp.created < REJECT_AFTER_TIME
        ):
            # Fast path (the data plane): a usable session and nothing queued before us.
            self._transmit(state, kp, payload, now)
            self._keep_key_fresh_sending(state, now, wall)
            return
        self._stage(state, payload)
        self._send_staged(state, now, wall)

    def receive_datagram(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        """Process one datagram from ``source`` (opaque address bytes).

        Raises:
            RemoteProtocolError: the datagram is malformed, unauthenticated, replayed,
                from an unknown peer or not acceptable now; the core's state is then
                unchanged, except the under-load accounting (handshake messages with a
                valid mac1 are counted, and under load charge the source's token bucket).

        Under load, a handshake message without a valid mac2 is not an error: it is
        answered with a cookie reply (``Outgoing.destination`` = ``source``).
        """
        if len(data) >= TRANSPORT_MIN_SIZE and data[:4] == _TRANSPORT_TYPE:
            # The hot path: skip the general dispatch for transport packets.
            self._receive_transport(data, source, now, wall)
            return
        kind = message_type(data)
        if kind == MESSAGE_TRANSPORT:
            self._receive_transport(data, source, now, wall)
        elif kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
        else:
            self._receive_handshake(kind, data, source, now, wall)

    def datagrams_to_send(self, now: float) -> list[Outgoing]:
        """The datagrams queued since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The ``now`` at which ``handle_timer`` must next be called (None: no timer)."""
        deadlines = [d for p in self._peers.values() if (d := p.timers.earliest()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float, wall: float) -> None:
        """Run every timer due at ``now`` (calling it early or late is harmless)."""
        for peer in list(self._peers.values()):
            t = peer.timers
            if t.retransmit_handshake is not None and t.retransmit_handshake <= now:
                t.retransmit_handshake = None
                self._expired_retransmit_handshake(peer, now, wall)
            if t.send_keepalive is not None and t.send_keepalive <= now:
                t.send_keepalive = None
                self._send_keepalive(peer, now, wall)
                if t.need_another_keepalive:
                    t.need_another_keepalive = False
                    t.send_keepalive = now + KEEPALIVE_TIMEOUT
            if t.new_handshake is not None and t.new_handshake <= now:
                t.new_handshake = None
                self._send_initiation(peer, now, wall, retry=False)
            if t.zero_key_material is not None and t.zero_key_material <= now:
                t.zero_key_material = None
                self._zero_and_flush_all(peer)
            if t.persistent_keepalive is not None and t.persistent_keepalive <= now:
                t.persistent_keepalive = None
                if peer.persistent_keepalive:
                    self._send_keepalive(peer, now, wall)

    # ------------------------------------------------------------------ internals: send

    def _peer(self, public_key: bytes) -> PeerState:
        try:
            return self._peers[public_key]
        except KeyError:
            raise NoiseError("unknown peer") from None

    def _jitter(self) -> float:
        # wireguard-go: RekeyTimeout + rand(RekeyTimeoutJitterMaxMs) milliseconds.
        millis = int.from_bytes(self._rng(4), "little") % (int(REKEY_TIMEOUT_JITTER_MAX * 1000) + 1)
        return millis / 1000

    def _new_index(self, peer: PeerState) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index not in self._index:
                self._index[index] = (peer, None)
                return index

    def _stage(self, peer: PeerState, payload: bytes) -> None:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
        peer.staged.append(payload)

    def _send_keepalive(self, peer: PeerState, now: float, wall: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now, wall)

    def _send_staged(self, peer: PeerState, now: float, wall: float) -> None:
        kp = peer.current
        if (
            kp is None
            or kp.send_counter >= REJECT_AFTER_MESSAGES
            or now - kp.created >= REJECT_AFTER_TIME
        ):
            self._send_initiation(peer, now, wall, retry=False)
            return
        staged = peer.staged
        while staged and kp.send_counter < REJECT_AFTER_MESSAGES:
            self._transmit(peer, kp, staged.popleft(), now)
        self._keep_key_fresh_sending(peer, now, wall)

    def _transmit(self, peer: PeerState, kp: Keypair, payload: bytes, now: float) -> None:
        padding = -len(payload) % 16  # whitepaper 5.4.6: pad to a multiple of 16
        packet = kp.seal_transport(payload + bytes(padding) if padding else payload)
        peer.tx_bytes += len(packet)
        self._outgoing.append(Outgoing(peer.public_key, None, packet))
        # Inlined timer hooks (hot path): any authenticated packet traversal / sent.
        timers = peer.timers
        if peer.persistent_keepalive:
            timers.persistent_keepalive = now + peer.persistent_keepalive
        timers.send_keepalive = None
        if payload and timers.new_handshake is None:
            self._timers_data_sent(peer, now)

    def _keep_key_fresh_sending(self, peer: PeerState, now: float, wall: float) -> None:
        kp = peer.current
        if kp is None:
            return
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
            kp.initiator and now - kp.created > REKEY_AFTER_TIME
        ):
            self._send_initiation(peer, now, wall, retry=False)

    def _keep_key_fresh_receiving(self, peer: PeerState, now: float, wall: float) -> None:
        if peer.timers.sent_last_minute_handshake:
            return
        kp = peer.current
        if kp is not None and kp.initiator and now - kp.created > REKEY_ON_RECEIVE_AGE:
            peer.timers.sent_last_minute_handshake = True
            self._send_initiation(peer, now, wall, retry=False)

    def _send_initiation(self, peer: PeerState, now: float, wall: float, *, retry: bool) -> None:
        if not retry:
            peer.timers.handshake_attempts = 0
        hs = peer.handshake
        if hs.last_sent is not None and now - hs.last_sent < REKEY_TIMEOUT:
            return
        ephemeral = clamp(self._rng(32))
        self._drop_handshake_index(peer)
        index = self._new_index(peer)
        out = create_initiation(
            local_static_public=self._public,
            remote_static=peer.public_key,
            static_static=bytes(peer.static_static),
            ephemeral_private=ephemeral,
            sender_index=index,
            timestamp=tai64n(wall),
        )
        hs.clear()
        hs.state = HandshakeState.INITIATION_CREATED
        hs.chain_key = bytearray(out.chain_key)
        hs.hash = bytearray(out.hash)
        hs.local_ephemeral = bytearray(ephemeral)
        hs.local_index = index
        hs.last_sent = now
        packet = peer.cookies.add_macs(out.message.to_bytes(), now)
        self._outgoing.append(Outgoing(peer.public_key, None, packet))
        peer.tx_bytes += len(packet)
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer)
        peer.timers.retransmit_handshake = now + REKEY_TIMEOUT + self._jitter()

    def _drop_handshake_index(self, peer: PeerState) -> None:
        index = peer.handshake.local_index
        if index is not None:
            entry = self._index.get(index)
            if entry is not None and entry[1] is None:
                del self._index[index]
            peer.handshake.local_index = None

    # ------------------------------------------------------------------ internals: receive

    def _receive_handshake(
        self, kind: int, data: bytes, source: bytes, now: float, wall: float
    ) -> None:
        what = "initiation" if kind == MESSAGE_INITIATION else "response"
        if not self._cookie_checker.check_mac1(data):
            raise RemoteProtocolError(f"{what}: mac1 invalid")
        self._load.note_message(now)
        if self._load.active(now):
            if not self._cookie_checker.check_mac2(data, source, now):
                sender = int.from_bytes(data[4:8], "little")
                reply = self._cookie_checker.create_reply(data, sender, source, now)
                self._outgoing.append(Outgoing(None, source, reply))
                return
            if not self._rate_limiter.allow(source, now):
                raise RemoteProtocolError(f"{what}: rate limited (source over 20/s)")
        if kind == MESSAGE_INITIATION:
            self._receive_initiation(data, source, now, wall)
        else:
            self._receive_response(data, source, now, wall)

    def _receive_initiation(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        message = parse_initiation(data)
        consumed = consume_initiation(
            message,
            local_static_private=bytes(self._private),
            local_static_public=self._public,
            static_static_for=self._static_static_for,
        )
        peer = self._peers[consumed.peer_static]
        hs = peer.handshake
        if hs.state is HandshakeState.INITIATION_CREATED and self._public < peer.public_key:
            # Both sides initiated at once (the overlay starts handshakes from both ends
            # as soon as the coordinator introduces them). Consuming theirs would abandon
            # ours while they abandon theirs for ours: both responses then name dead
            # indices and nothing works until RekeyTimeout. The lower static key wins;
            # the other side answers ours. (wireguard-go has no tie-break; it accepts
            # our response either way, so interop is unchanged.)
            raise RemoteProtocolError(
                "initiation: crossed our own pending initiation (lower static key wins)"
            )
        if consumed.timestamp <= hs.last_timestamp:
            raise RemoteProtocolError("initiation: timestamp not newer than the last (replay)")
        if (
            hs.last_initiation_consumed is not None
            and now - hs.last_initiation_consumed <= HANDSHAKE_INITIATION_RATE
        ):
            raise RemoteProtocolError("initiation: under 20 ms since the last one (flood)")
        # Build the response before touching any state, so a failure leaves none changed.
        index = int.from_bytes(self._rng(4), "little")
        while index in self._index:
            index = int.from_bytes(self._rng(4), "little")
        ephemeral = clamp(self._rng(32))
        out = create_response(
            chain_key=consumed.chain_key,
            hash=consumed.hash,
            remote_ephemeral=consumed.remote_ephemeral,
            remote_static=peer.public_key,
            preshared_key=bytes(peer.preshared_key),
            ephemeral_private=ephemeral,
            sender_index=index,
            receiver_index=consumed.sender,
        )
        hs.last_timestamp = consumed.timestamp
        hs.last_initiation_consumed = now
        self._handshake_received(peer, source, len(data), now)
        # A simultaneous initiation of ours (we hold the higher key) is abandoned.
        self._drop_handshake_index(peer)
        hs.clear()
        hs.last_sent = now
        packet = peer.cookies.add_macs(out.message.to_bytes(), now)
        self._derive_session(
            peer,
            out.chain_key,
            initiator=False,
            local_index=index,
            remote_index=consumed.sender,
            now=now,
        )
        self._outgoing.append(Outgoing(peer.public_key, None, packet))
        peer.tx_bytes += len(packet)
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer)

    def _static_static_for(self, peer_static: bytes) -> bytes | None:
        peer = self._peers.get(peer_static)
        return bytes(peer.static_static) if peer is not None else None

    def _receive_response(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        message = parse_response(data)
        entry = self._index.get(message.receiver)
        if entry is None or entry[1] is not None:
            raise RemoteProtocolError(f"response: unknown receiver index {message.receiver:#010x}")
        peer = entry[0]
        hs = peer.handshake
        if hs.state is not HandshakeState.INITIATION_CREATED:
            raise RemoteProtocolError("response: no initiation in progress")
        chain_key, _ = consume_response(
            message,
            chain_key=bytes(hs.chain_key),
            hash=bytes(hs.hash),
            local_ephemeral_private=bytes(hs.local_ephemeral),
            local_static_private=bytes(self._private),
            preshared_key=bytes(peer.preshared_key),
        )
        local_index = message.receiver
        hs.clear()  # the index now names the keypair, not the handshake
        self._handshake_received(peer, source, len(data), now)
        self._derive_session(
            peer,
            chain_key,
            initiator=True,
            local_index=local_index,
            remote_index=message.sender,
            now=now,
        )
        self._timers_handshake_complete(peer, now)
        self._events.append(HandshakeCompleted(peer.public_key, True))
        self._send_keepalive(peer, now, wall)

    def _handshake_received(self, peer: PeerState, source: bytes, size: int, now: float) -> None:
        """An authenticated handshake message from ``peer``: roam to ``source``, count it."""
        peer.endpoint = source
        peer.rx_bytes += size
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_received(peer)

    def _derive_session(
        self,
        peer: PeerState,
        chain_key: bytes,
        *,
        initiator: bool,
        local_index: int,
        remote_index: int,
        now: float,
    ) -> None:
        """Split the finished handshake's chain key into a keypair (whitepaper 5.4.5)."""
        send_key, receive_key = derive_transport_keys(chain_key, initiator=initiator)
        keypair = Keypair(
            send_key,
            receive_key,
            created=now,
            initiator=initiator,
            local_index=local_index,
            remote_index=remote_index,
        )
        self._begin_session(peer, keypair)
        self._timers_session_derived(peer, now)

    def _begin_session(self, peer: PeerState, keypair: Keypair) -> None:
        self._index[keypair.local_index] = (peer, keypair)
        if keypair.initiator:
            if peer.next is not None:
                self._delete_keypair(peer.previous)
                peer.previous = peer.next
                peer.next = None
                self._delete_keypair(peer.current)
            else:
                self._delete_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = keypair
        else:
            self._delete_keypair(peer.next)
            peer.next = keypair
            self._delete_keypair(peer.previous)
            peer.previous = None

    def _delete_keypair(self, keypair: Keypair | None) -> None:
        if keypair is None:
            return
        entry = self._index.get(keypair.local_index)
        if entry is not None and entry[1] is keypair:
            del self._index[keypair.local_index]
        keypair.destroy()

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = parse_cookie_reply(data)
        entry = self._index.get(reply.receiver)
        if entry is None:
            raise RemoteProtocolError(
                f"cookie reply: unknown receiver index {reply.receiver:#010x}"
            )
        entry[0].cookies.consume_reply(reply, now)

    def _receive_transport(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        receiver, counter = unpack_transport_header(data)
        peer, kp = self._index.get(receiver, (None, None))
        if peer is None or kp is None:
            raise RemoteProtocolError(f"transport: unknown receiver index {receiver:#010x}")
        if now - kp.created > REJECT_AFTER_TIME:
            raise RemoteProtocolError("transport: session expired (RejectAfterTime)")
        if not kp.replay.check(counter, REJECT_AFTER_MESSAGES):
            raise RemoteProtocolError(_replay_reason(kp, counter))
        try:
            plaintext = kp.open(counter, memoryview(data)[TRANSPORT_HEADER_SIZE:])
        except AuthenticationFailed:
            raise RemoteProtocolError(
                f"transport: authentication failed (counter {counter})"
            ) from None
        kp.replay.validate(counter, REJECT_AFTER_MESSAGES)
        peer.endpoint = source
        peer.rx_bytes += len(data)
        if peer.next is kp:
            # Key confirmation: the initiator used the new keys (wireguard-go
            # ReceivedWithKeypair), so the responder's session is complete.
            self._delete_keypair(peer.previous)
            peer.previous = peer.current
            peer.current = kp
            peer.next = None
            self._timers_handshake_complete(peer, now)
            self._events.append(HandshakeCompleted(peer.public_key, False))
            if peer.staged:
                self._send_staged(peer, now, wall)
        timers = peer.timers
        if not timers.sent_last_minute_handshake and kp.initiator:
            self._keep_key_fresh_receiving(peer, now, wall)
        # Inlined timer hooks (hot path): any authenticated packet traversal / received.
        if peer.persistent_keepalive:
            timers.persistent_keepalive = now + peer.persistent_keepalive
        timers.new_handshake = None
        if not plaintext:
            return  # keepalive
        self._timers_data_received(peer, now)
        self._events.append(DataReceived(peer.public_key, plaintext))

    def _expired_retransmit_handshake(self, peer: PeerState, now: float, wall: float) -> None:
        t = peer.timers
        if t.handshake_attempts > MAX_TIMER_HANDSHAKES:
            t.send_keepalive = None
            peer.staged.clear()
            if t.zero_key_material is None:
                t.zero_key_material = now + 3 * REJECT_AFTER_TIME
            self._events.append(HandshakeTimedOut(peer.public_key))
            return
        t.handshake_attempts += 1
        self._send_initiation(peer, now, wall, retry=True)

    def _zero_and_flush_all(self, peer: PeerState) -> None:
        for kp in (peer.previous, peer.current, peer.next):
            self._delete_keypair(kp)
        peer.previous = peer.current = peer.next = None
        self._drop_handshake_index(peer)
        peer.handshake.clear()
        peer.staged.clear()

    # ------------------------------------------------------------------ timer hooks

    def _timers_data_sent(self, peer: PeerState, now: float) -> None:
        if peer.timers.new_handshake is None:
            peer.timers.new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()

    def _timers_data_received(self, peer: PeerState, now: float) -> None:
        if peer.timers.send_keepalive is None:
            peer.timers.send_keepalive = now + KEEPALIVE_TIMEOUT
        else:
            peer.timers.need_another_keepalive = True

    def _timers_any_authenticated_packet_sent(self, peer: PeerState) -> None:
        peer.timers.send_keepalive = None

    def _timers_any_authenticated_packet_received(self, peer: PeerState) -> None:
        peer.timers.new_handshake = None

    def _timers_handshake_complete(self, peer: PeerState, now: float) -> None:
        peer.timers.retransmit_handshake = None
        peer.timers.handshake_attempts = 0
        peer.timers.sent_last_minute_handshake = False
        peer.last_handshake = now

    def _timers_session_derived(self, peer: PeerState, now: float) -> None:
        peer.timers.zero_key_material = now + 3 * REJECT_AFTER_TIME

    def _timers_any_authenticated_packet_traversal(self, peer: PeerState, now: float) -> None:
        if peer.persistent_keepalive:
            peer.timers.persistent_keepalive = now + peer.persistent_keepalive
