"""WireGuard (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s) as a sans-IO core.

``WireGuardCore`` is one node: its static key, its peers, the index table, cookies
and timers. The low-level pieces (KDF, MACs, TAI64N, message parse/build, the
handshake steps, the replay window) are exported for tests and tools.

Key material is zeroed on retirement as far as Python allows (see ``_peer``).
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
