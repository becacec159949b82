"""WireGuard message formats (whitepaper section 5.4): parse and build, nothing else.

Every multi-byte integer is little-endian. The first four bytes are the message type
(1 byte) and three reserved zero bytes. Parsers accept exactly the sizes below and
raise ``RemoteProtocolError`` for anything else; they check structure only, never
authenticity.

=================  ======  =====================================================
message            bytes   layout after the 4-byte type
=================  ======  =====================================================
1 initiation       148     sender 4, ephemeral 32, static 32+16, timestamp 12+16,
                           mac1 16, mac2 16
2 response         92      sender 4, receiver 4, ephemeral 32, empty 0+16,
                           mac1 16, mac2 16
3 cookie reply     64      receiver 4, nonce 24, cookie 16+16
4 transport        32+     receiver 4, counter 8, AEAD(payload padded to 16)
=================  ======  =====================================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tunneld.proto.noise._errors import RemoteProtocolError

__all__ = [
    "COOKIE_REPLY_SIZE",
    "INITIATION_SIZE",
    "MESSAGE_COOKIE_REPLY",
    "MESSAGE_INITIATION",
    "MESSAGE_RESPONSE",
    "MESSAGE_TRANSPORT",
    "RESPONSE_SIZE",
    "TRANSPORT_HEADER_SIZE",
    "TRANSPORT_MIN_SIZE",
    "CookieReply",
    "Initiation",
    "Response",
    "TransportHeader",
    "build_transport",
    "message_type",
    "padded_length",
    "parse_cookie_reply",
    "parse_initiation",
    "parse_response",
    "parse_transport",
    "unpack_transport_header",
]

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = 32  # header + Poly1305 tag of an empty (keepalive) payload

_NAMES = {
    MESSAGE_INITIATION: "initiation",
    MESSAGE_RESPONSE: "response",
    MESSAGE_COOKIE_REPLY: "cookie reply",
    MESSAGE_TRANSPORT: "transport",
}
_SIZES = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}

_INITIATION = struct.Struct("<I I 32s 48s 28s 16s 16s")
_RESPONSE = struct.Struct("<I I I 32s 16s 16s 16s")
_COOKIE_REPLY = struct.Struct("<I I 24s 32s")
_TRANSPORT_HEADER = struct.Struct("<I I Q")


def message_type(data: bytes) -> int:
    """The message type of a datagram, checking the reserved bytes and the size.

    Raises:
        RemoteProtocolError: too short, unknown type, non-zero reserved bytes, or a
            handshake message whose size is not exactly its fixed size.
    """
    if len(data) < 4:
        raise RemoteProtocolError(f"datagram too short ({len(data)} bytes)")
    kind = data[0]
    if kind not in _NAMES or data[1:4] != b"\x00\x00\x00":
        raise RemoteProtocolError(f"unknown message type {data[0:4].hex()}")
    expected = _SIZES.get(kind)
    if expected is not None and len(data) != expected:
        raise RemoteProtocolError(f"{_NAMES[kind]}: {len(data)} bytes, expected {expected}")
    if kind == MESSAGE_TRANSPORT and len(data) < TRANSPORT_MIN_SIZE:
        raise RemoteProtocolError(
            f"transport: {len(data)} bytes, expected at least {TRANSPORT_MIN_SIZE}"
        )
    return kind


@dataclass(frozen=True, slots=True)
class Initiation:
    """Message 1, as on the wire (``sender`` is the initiator's index)."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    def to_bytes(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    """Message 2 (``receiver`` is the initiator's index, ``sender`` the responder's)."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    def to_bytes(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Message 3 (``receiver`` is the sender index of the message that triggered it)."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def to_bytes(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The 16-byte header of message 4; the AEAD ciphertext follows it."""

    receiver: int
    counter: int


def parse_initiation(data: bytes) -> Initiation:
    """Parse message 1; raises RemoteProtocolError if it is not one."""
    if message_type(data) != MESSAGE_INITIATION:
        raise RemoteProtocolError("initiation: wrong message type")
    _, sender, eph, static, stamp, mac1, mac2 = _INITIATION.unpack(data)
    return Initiation(sender, eph, static, stamp, mac1, mac2)


def parse_response(data: bytes) -> Response:
    """Parse message 2; raises RemoteProtocolError if it is not one."""
    if message_type(data) != MESSAGE_RESPONSE:
        raise RemoteProtocolError("response: wrong message type")
    _, sender, receiver, eph, empty, mac1, mac2 = _RESPONSE.unpack(data)
    return Response(sender, receiver, eph, empty, mac1, mac2)


def parse_cookie_reply(data: bytes) -> CookieReply:
    """Parse message 3; raises RemoteProtocolError if it is not one."""
    if message_type(data) != MESSAGE_COOKIE_REPLY:
        raise RemoteProtocolError("cookie reply: wrong message type")
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
    return CookieReply(receiver, nonce, cookie)


def parse_transport(data: bytes) -> TransportHeader:
    """Parse the header of message 4; raises RemoteProtocolError if it is not one."""
    if message_type(data) != MESSAGE_TRANSPORT:
        raise RemoteProtocolError("transport: wrong message type")
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    return TransportHeader(receiver, counter)


def unpack_transport_header(data: bytes) -> tuple[int, int]:
    """(receiver, counter) of a datagram already known to be a transport message."""
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    return receiver, counter


def build_transport(receiver: int, counter: int, ciphertext: bytes) -> bytes:
    """Message 4: header ‖ ciphertext (the AEAD output of the padded payload)."""
    return _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver, counter) + ciphertext


def padded_length(length: int) -> int:
    """``length`` rounded up to a multiple of 16 (whitepaper 5.4.6)."""
    return (length + 15) & ~15
