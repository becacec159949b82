"""The Noise_IKpsk2 handshake of WireGuard as pure functions (whitepaper section 5.4.2-5.4.5).

Each step takes every input explicitly (keys, ephemeral, index, timestamp) and returns
the message (with mac1/mac2 left zero; ``_cookie`` adds them) and the new chaining key
and hash. Nothing here mutates state, so a message that fails half way through leaves
the caller's handshake untouched. The order of operations follows wireguard-go's
``noise-protocol.go`` line by line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunneld.proto.noise._crypto import (
    INITIAL_CHAIN_KEY,
    INITIAL_HASH,
    AuthenticationFailed,
    aead_open,
    aead_seal,
    dh,
    kdf1,
    kdf2,
    kdf3,
    mix_hash,
    public_key,
)
from tunneld.proto.noise._errors import RemoteProtocolError
from tunneld.proto.noise._messages import Initiation, Response

__all__ = [
    "ConsumedInitiation",
    "HandshakeOutput",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
    "derive_transport_keys",
]

_ZERO16 = bytes(16)


@dataclass(frozen=True, slots=True)
class HandshakeOutput:
    """A message built by one side, and the symmetric state after building it."""

    message: Initiation | Response
    chain_key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """What the responder learned from a valid initiation."""

    peer_static: bytes
    timestamp: bytes
    sender: int
    remote_ephemeral: bytes
    chain_key: bytes
    hash: bytes


def create_initiation(
    *,
    local_static_public: bytes,
    remote_static: bytes,
    static_static: bytes,
    ephemeral_private: bytes,
    sender_index: int,
    timestamp: bytes,
) -> HandshakeOutput:
    """Build message 1 (mac1/mac2 zero).

    ``static_static`` is DH(local static private, remote static), which wireguard-go
    precomputes per peer.
    """
    h = mix_hash(INITIAL_HASH, remote_static)
    ephemeral = public_key(ephemeral_private)
    ck = kdf1(INITIAL_CHAIN_KEY, ephemeral)
    h = mix_hash(h, ephemeral)
    try:
        ck, key = kdf2(ck, dh(ephemeral_private, remote_static))
    except AuthenticationFailed:
        raise ValueError("remote static key is a low-order point") from None
    encrypted_static = aead_seal(key, 0, local_static_public, h)
    h = mix_hash(h, encrypted_static)
    ck, key = kdf2(ck, static_static)
    encrypted_timestamp = aead_seal(key, 0, timestamp, h)
    h = mix_hash(h, encrypted_timestamp)
    message = Initiation(
        sender_index, ephemeral, encrypted_static, encrypted_timestamp, _ZERO16, _ZERO16
    )
    return HandshakeOutput(message, ck, h)


def consume_initiation(
    message: Initiation,
    *,
    local_static_private: bytes,
    local_static_public: bytes,
    static_static_for: Callable[[bytes], bytes | None],
) -> ConsumedInitiation:
    """Authenticate message 1 and recover the initiator's static key and timestamp.

    ``static_static_for(peer_static)`` returns the precomputed DH(local static,
    peer static) for a configured peer, or None for an unknown one.

    Raises:
        RemoteProtocolError: bad DH input, a tag that does not verify, or an
            unknown peer. Replay/flood checks are the caller's (they need state).
    """
    h = mix_hash(INITIAL_HASH, local_static_public)
    h = mix_hash(h, message.ephemeral)
    ck = kdf1(INITIAL_CHAIN_KEY, message.ephemeral)
    try:
        ck, key = kdf2(ck, dh(local_static_private, message.ephemeral))
        peer_static = aead_open(key, 0, message.encrypted_static, h)
    except AuthenticationFailed:
        raise RemoteProtocolError("initiation: cannot decrypt static key") from None
    h = mix_hash(h, message.encrypted_static)
    static_static = static_static_for(peer_static)
    if static_static is None:
        raise RemoteProtocolError("initiation: unknown peer")
    ck, key = kdf2(ck, static_static)
    try:
        timestamp = aead_open(key, 0, message.encrypted_timestamp, h)
    except AuthenticationFailed:
        raise RemoteProtocolError("initiation: cannot decrypt timestamp") from None
    h = mix_hash(h, message.encrypted_timestamp)
    return ConsumedInitiation(peer_static, timestamp, message.sender, message.ephemeral, ck, h)


def create_response(
    *,
    chain_key: bytes,
    hash: bytes,
    remote_ephemeral: bytes,
    remote_static: bytes,
    preshared_key: bytes,
    ephemeral_private: bytes,
    sender_index: int,
    receiver_index: int,
) -> HandshakeOutput:
    """Build message 2 (mac1/mac2 zero) from the state after consuming message 1.

    Raises:
        RemoteProtocolError: the initiator's ephemeral is a low-order point.
    """
    ephemeral = public_key(ephemeral_private)
    h = mix_hash(hash, ephemeral)
    ck = kdf1(chain_key, ephemeral)
    try:
        ck = kdf1(ck, dh(ephemeral_private, remote_ephemeral))
        ck = kdf1(ck, dh(ephemeral_private, remote_static))
    except AuthenticationFailed:
        raise RemoteProtocolError("initiation: low-order ephemeral") from None
    ck, tau, key = kdf3(ck, preshared_key)
    h = mix_hash(h, tau)
    encrypted_nothing = aead_seal(key, 0, b"", h)
    h = mix_hash(h, encrypted_nothing)
    message = Response(sender_index, receiver_index, ephemeral, encrypted_nothing, _ZERO16, _ZERO16)
    return HandshakeOutput(message, ck, h)


def consume_response(
    message: Response,
    *,
    chain_key: bytes,
    hash: bytes,
    local_ephemeral_private: bytes,
    local_static_private: bytes,
    preshared_key: bytes,
) -> tuple[bytes, bytes]:
    """Authenticate message 2 against the initiator's state; returns (chain key, hash).

    Raises:
        RemoteProtocolError: bad DH input or the empty payload's tag does not verify.
    """
    h = mix_hash(hash, message.ephemeral)
    ck = kdf1(chain_key, message.ephemeral)
    try:
        ck = kdf1(ck, dh(local_ephemeral_private, message.ephemeral))
        ck = kdf1(ck, dh(local_static_private, message.ephemeral))
        ck, tau, key = kdf3(ck, preshared_key)
        h = mix_hash(h, tau)
        aead_open(key, 0, message.encrypted_nothing, h)
    except AuthenticationFailed:
        raise RemoteProtocolError("response: authentication failed") from None
    h = mix_hash(h, message.encrypted_nothing)
    return ck, h


def derive_transport_keys(chain_key: bytes, *, initiator: bool) -> tuple[bytes, bytes]:
    """(sending key, receiving key) = KDF2(C, empty), swapped for the responder."""
    first, second = kdf2(chain_key, b"")
    return (first, second) if initiator else (second, first)
