"""WireGuard (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s) as a sans-IO core.

``WireGuardCore`` is one node: its static key, its peers, the index table, cookies
and timers. Bytes, ``now`` (monotonic seconds) and ``wall`` (UNIX seconds, only for
TAI64N) go in; ``Outgoing`` datagrams, events and the next timer come out. The
low-level pieces (KDF, MACs, TAI64N, message parse/build, the handshake steps as
pure functions, the replay window) are exported for tests and tools.

Reproducing a recorded initiation: the core draws from its ``rng`` in a documented
order (ephemeral private key 32 bytes, sender index 4 bytes little-endian, then the
retransmit jitter 4 bytes; see ``_core``), and the timestamp is ``tai64n(wall)``.
Or call ``create_initiation`` with every input explicit.

Where this differs from wireguard-go, and why:

* "Under load" cannot be a queue length in a sans-IO core. It is on when the caller
  sets ``force_under_load``, when ``note_handshake_backlog(queued, capacity, now)``
  reports a queue at least 1/8 full, or when 128 handshake messages with a valid
  mac1 arrive within a second; it stays on for 1 s (wireguard-go's stickiness).
* The per-source token bucket (20/s, burst 5) is keyed by the opaque ``source``
  bytes (address and port), not the IP alone.
* ``HandshakeCompleted(initiator=False)`` is emitted at key confirmation (the first
  transport packet under the new keys), when wireguard-go calls
  timersHandshakeComplete for the responder.
* Padding is always to a multiple of 16 (no MTU cap; the caller sends packets that
  fit). At most 128 packets per peer are staged while a handshake is pending.
* ``initiate`` obeys the same one-initiation-per-RekeyTimeout rule as every other
  trigger; a persistent keepalive starts with the first authenticated packet.
* Key material lives in ``bytearray``s that are overwritten when retired. Python
  cannot do better than best effort: ``bytes`` are immutable and every crypto call
  makes copies, and the cryptography cipher objects keep their key inside OpenSSL
  until collected. The core drops every reference to retired keys.

Errors: ``RemoteProtocolError`` (a ``NoiseError``) for any bad datagram, with a
short ``reason``; nothing else escapes ``receive_datagram``, and a rejected
datagram leaves the core as it was (except the under-load counters and a
rate-limiter token, which exist to count such datagrams). ``NoiseError`` itself is
for local misuse (unknown peer, bad key sizes).
"""

from __future__ import annotations

from tunneld.proto.noise._constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)
from tunneld.proto.noise._cookie import (
    CookieChecker,
    CookieGenerator,
    TokenBucket,
    compute_mac1,
    compute_mac2,
    mac1_key,
)
from tunneld.proto.noise._core import WireGuardCore
from tunneld.proto.noise._crypto import (
    CONSTRUCTION,
    IDENTIFIER,
    INITIAL_CHAIN_KEY,
    INITIAL_HASH,
    LABEL_COOKIE,
    LABEL_MAC1,
    aead_open,
    aead_seal,
    dh,
    hash_,
    hmac_blake2s,
    kdf1,
    kdf2,
    kdf3,
    mac,
    public_key,
    tai64n,
    tai64n_decode,
    xaead_open,
    xaead_seal,
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
    ConsumedInitiation,
    HandshakeOutput,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
)
from tunneld.proto.noise._messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    CookieReply,
    Initiation,
    Response,
    TransportHeader,
    build_transport,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    parse_transport,
)
from tunneld.proto.noise._peer import PeerStatus
from tunneld.proto.noise._replay import WINDOW_SIZE, ReplayWindow

__all__ = [
    "CONSTRUCTION",
    "COOKIE_REPLY_SIZE",
    "IDENTIFIER",
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "INITIATION_SIZE",
    "KEEPALIVE_TIMEOUT",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "RESPONSE_SIZE",
    "TRANSPORT_HEADER_SIZE",
    "WINDOW_SIZE",
    "ConsumedInitiation",
    "CookieChecker",
    "CookieGenerator",
    "CookieReply",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "HandshakeOutput",
    "HandshakeTimedOut",
    "Initiation",
    "NoiseError",
    "Outgoing",
    "PeerStatus",
    "RemoteProtocolError",
    "ReplayWindow",
    "Response",
    "TokenBucket",
    "TransportHeader",
    "WireGuardCore",
    "aead_open",
    "aead_seal",
    "build_transport",
    "compute_mac1",
    "compute_mac2",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
    "derive_transport_keys",
    "dh",
    "hash_",
    "hmac_blake2s",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "mac1_key",
    "message_type",
    "parse_cookie_reply",
    "parse_initiation",
    "parse_response",
    "parse_transport",
    "public_key",
    "tai64n",
    "tai64n_decode",
    "xaead_open",
    "xaead_seal",
]
