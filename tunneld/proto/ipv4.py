"""IPv4 and ICMP echo packets, built and parsed without I/O (for probes inside a tunnel).

Only what a diagnostic needs: an IPv4 header without options on the way out (RFC 791
§3.1), any valid unfragmented IPv4 packet on the way in, and ICMP echo request/reply
(RFC 792). Bad input from the network raises :class:`RemoteProtocolError` and nothing
else. Trailing bytes after the IPv4 total length are ignored on purpose: WireGuard pads
every payload to a multiple of 16 bytes (WireGuard paper §5.4.6), and the receiver uses
the inner header's length to strip the padding.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

__all__ = [
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "PROTOCOL_ICMP",
    "IPv4Error",
    "IPv4Packet",
    "IcmpEcho",
    "IcmpEchoKind",
    "RemoteProtocolError",
    "build_icmp_echo",
    "build_ipv4",
    "echo_reply_for",
    "internet_checksum",
    "parse_icmp_echo",
    "parse_ipv4",
]

PROTOCOL_ICMP = 1
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8

_HEADER = struct.Struct("!BBHHHBBH4s4s")  # RFC 791 §3.1, without options
_ICMP_ECHO_HEADER = struct.Struct("!BBHHH")  # RFC 792: type, code, checksum, id, seq
_MAX_TOTAL_LENGTH = 0xFFFF
_FLAG_MORE_FRAGMENTS = 0x2000
_FRAGMENT_OFFSET_MASK = 0x1FFF


class IPv4Error(Exception):
    """Base of every error this module raises."""


class RemoteProtocolError(IPv4Error):
    """A packet from the network that is not valid IPv4/ICMP; the message says what is wrong."""


class IcmpEchoKind(enum.IntEnum):
    """The two ICMP echo message types (RFC 792)."""

    REPLY = ICMP_ECHO_REPLY
    REQUEST = ICMP_ECHO_REQUEST


@dataclass(frozen=True, slots=True)
class IPv4Packet:
    """A parsed IPv4 packet; ``payload`` excludes the header and any padding."""

    source: IPv4Address
    destination: IPv4Address
    protocol: int
    ttl: int
    identification: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    """An ICMP echo request or reply (RFC 792)."""

    kind: IcmpEchoKind
    identifier: int
    sequence: int
    data: bytes


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's complement of the one's complement sum (RFC 1071).

    Over a buffer that already holds a correct checksum the result is 0.
    """
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_ipv4(
    source: IPv4Address,
    destination: IPv4Address,
    protocol: int,
    payload: bytes,
    *,
    ttl: int = 64,
    identification: int = 0,
) -> bytes:
    """An IPv4 packet (20-byte header, no options, Don't Fragment set) around ``payload``.

    Raises:
        ValueError: the payload is too large for one packet, or a field is out of range.
    """
    total_length = _HEADER.size + len(payload)
    if total_length > _MAX_TOTAL_LENGTH:
        raise ValueError(f"IPv4 payload of {len(payload)} bytes does not fit in one packet")
    if not 0 <= ttl <= 255 or not 0 <= protocol <= 255 or not 0 <= identification <= 0xFFFF:
        raise ValueError("IPv4 ttl, protocol and identification must fit their fields")
    header = bytearray(
        _HEADER.pack(
            0x45,  # version 4, IHL 5 words
            0,  # DSCP/ECN
            total_length,
            identification,
            0x4000,  # Don't Fragment
            ttl,
            protocol,
            0,  # checksum, filled in below
            source.packed,
            destination.packed,
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
    return bytes(header) + payload


def parse_ipv4(data: bytes) -> IPv4Packet:
    """Parse one IPv4 packet; bytes after its total length (tunnel padding) are ignored.

    Raises:
        RemoteProtocolError: not IPv4, truncated, bad header checksum, or a fragment.
    """
    if len(data) < _HEADER.size:
        raise RemoteProtocolError(
            f"IPv4 packet truncated: {len(data)} bytes, a header needs {_HEADER.size}"
        )
    (
        version_ihl,
        _tos,
        total_length,
        identification,
        flags_fragment,
        ttl,
        protocol,
        _checksum,
        source,
        destination,
    ) = _HEADER.unpack_from(data)
    version = version_ihl >> 4
    if version != 4:
        raise RemoteProtocolError(f"not an IPv4 packet: version field is {version}")
    header_length = (version_ihl & 0x0F) * 4
    if header_length < _HEADER.size:
        raise RemoteProtocolError(f"IPv4 header length {header_length} is below the minimum 20")
    if total_length < header_length:
        raise RemoteProtocolError(
            f"IPv4 total length {total_length} is shorter than its header ({header_length})"
        )
    if total_length > len(data):
        raise RemoteProtocolError(
            f"IPv4 packet truncated: total length says {total_length} bytes, got {len(data)}"
        )
    if internet_checksum(bytes(data[:header_length])) != 0:
        raise RemoteProtocolError("IPv4 header checksum does not match")
    if flags_fragment & (_FLAG_MORE_FRAGMENTS | _FRAGMENT_OFFSET_MASK):
        raise RemoteProtocolError("IPv4 fragments are not supported")
    return IPv4Packet(
        source=IPv4Address(source),
        destination=IPv4Address(destination),
        protocol=protocol,
        ttl=ttl,
        identification=identification,
        payload=bytes(data[header_length:total_length]),
    )


def build_icmp_echo(kind: IcmpEchoKind, identifier: int, sequence: int, data: bytes) -> bytes:
    """An ICMP echo request or reply with its checksum (RFC 792).

    Raises:
        ValueError: identifier or sequence does not fit in 16 bits.
    """
    if not 0 <= identifier <= 0xFFFF or not 0 <= sequence <= 0xFFFF:
        raise ValueError("ICMP echo identifier and sequence must fit in 16 bits")
    message = bytearray(_ICMP_ECHO_HEADER.pack(int(kind), 0, 0, identifier, sequence) + data)
    struct.pack_into("!H", message, 2, internet_checksum(bytes(message)))
    return bytes(message)


def parse_icmp_echo(data: bytes) -> IcmpEcho:
    """Parse an ICMP echo request or reply (the payload of an IPv4 packet).

    Raises:
        RemoteProtocolError: truncated, bad checksum, or another ICMP type.
    """
    if len(data) < _ICMP_ECHO_HEADER.size:
        raise RemoteProtocolError(
            f"ICMP message truncated: {len(data)} bytes, an echo header needs "
            f"{_ICMP_ECHO_HEADER.size}"
        )
    icmp_type, code, _checksum, identifier, sequence = _ICMP_ECHO_HEADER.unpack_from(data)
    if icmp_type not in (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST):
        raise RemoteProtocolError(f"ICMP type {icmp_type} is not an echo request or reply")
    if code != 0:
        raise RemoteProtocolError(f"ICMP echo with code {code}, expected 0")
    if internet_checksum(bytes(data)) != 0:
        raise RemoteProtocolError("ICMP checksum does not match")
    return IcmpEcho(
        kind=IcmpEchoKind(icmp_type),
        identifier=identifier,
        sequence=sequence,
        data=bytes(data[_ICMP_ECHO_HEADER.size :]),
    )


def echo_reply_for(packet: bytes, *, address: IPv4Address | None = None) -> bytes | None:
    """The IPv4 echo reply answering ``packet`` if it is an echo request, else ``None``.

    With ``address``, only requests sent to that address are answered (as a host would).

    Raises:
        RemoteProtocolError: ``packet`` is not valid IPv4, or is ICMP but malformed.
    """
    parsed = parse_ipv4(packet)
    if parsed.protocol != PROTOCOL_ICMP:
        return None
    if address is not None and parsed.destination != address:
        return None
    if len(parsed.payload) >= 1 and parsed.payload[0] != ICMP_ECHO_REQUEST:
        return None
    echo = parse_icmp_echo(parsed.payload)
    reply = build_icmp_echo(IcmpEchoKind.REPLY, echo.identifier, echo.sequence, echo.data)
    return build_ipv4(
        parsed.destination,
        parsed.source,
        PROTOCOL_ICMP,
        reply,
        identification=parsed.identification,
    )
