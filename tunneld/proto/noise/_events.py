"""What the WireGuard core hands back: datagrams to send and events."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataReceived", "Event", "HandshakeCompleted", "HandshakeTimedOut", "Outgoing"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A datagram to send.

    ``peer`` (a static public key) is set for packets to a known peer: send to its
    current endpoint. ``destination`` is set instead, to the ``source`` bytes the
    triggering datagram came from, for cookie replies to an address.
    """

    peer: bytes | None
    destination: bytes | None
    data: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session with ``peer`` is usable.

    For the initiator: on consuming the response. For the responder: on the first
    transport packet under the new keys (the key confirmation), as in wireguard-go.
    """

    peer: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """A transport packet from ``peer`` with a non-empty payload (padding included)."""

    peer: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class HandshakeTimedOut:
    """No handshake with ``peer`` completed within RekeyAttemptTime; queued data is dropped."""

    peer: bytes


Event = HandshakeCompleted | DataReceived | HandshakeTimedOut
