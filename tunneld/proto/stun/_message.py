"""RFC 5389 Binding requests and responses (the reflexive address of a node).

Header (section 6): 2-byte type (top two bits zero), 2-byte length of the attributes
(a multiple of 4), the magic cookie 0x2112A442 and a 12-byte transaction id.
Attributes (section 15) are type, length and value padded to 4 bytes. The answer
carries XOR-MAPPED-ADDRESS (15.2); MAPPED-ADDRESS (15.1) is read from old servers.
FINGERPRINT (15.5), when present, must be last and match.
"""

from __future__ import annotations

import binascii
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from tunneld.proto.stun._errors import RemoteProtocolError

__all__ = [
    "HEADER_LEN",
    "MAGIC_COOKIE",
    "TRANSACTION_ID_LEN",
    "BindingRequest",
    "BindingResponse",
    "build_binding_request",
    "build_binding_response",
    "looks_like_stun",
    "parse_binding_request",
    "parse_binding_response",
]

MAGIC_COOKIE: Final = 0x2112A442
HEADER_LEN: Final = 20
TRANSACTION_ID_LEN: Final = 12

BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
BINDING_ERROR: Final = 0x0111

ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_ERROR_CODE: Final = 0x0009
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
FINGERPRINT_XOR: Final = 0x5354554E  # "STUN", section 15.5

_FAMILY_IPV4: Final = 0x01
_FAMILY_IPV6: Final = 0x02
_HEADER = struct.Struct(">HHI12s")
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class BindingRequest:
    """A Binding request; ``software`` is the SOFTWARE attribute if sent."""

    transaction_id: bytes
    software: str | None = None


@dataclass(frozen=True, slots=True)
class BindingResponse:
    """A Binding success response: the address the server saw the request come from."""

    transaction_id: bytes
    address: tuple[str, int]


def looks_like_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (section 6): top bits zero and the magic cookie."""
    return len(data) >= HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == _COOKIE_BYTES


def _attribute(attr_type: int, value: bytes) -> bytes:
    padding = -len(value) % 4
    return struct.pack(">HH", attr_type, len(value)) + value + b"\x00" * padding


def _build(msg_type: int, transaction_id: bytes, attrs: bytes, fingerprint: bool) -> bytes:
    if len(transaction_id) != TRANSACTION_ID_LEN:
        raise ValueError(f"transaction id must be {TRANSACTION_ID_LEN} bytes")
    if not fingerprint:
        return _HEADER.pack(msg_type, len(attrs), MAGIC_COOKIE, transaction_id) + attrs
    # The length covers the FINGERPRINT attribute while the CRC is computed (15.5).
    head = _HEADER.pack(msg_type, len(attrs) + 8, MAGIC_COOKIE, transaction_id) + attrs
    crc = (binascii.crc32(head) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + _attribute(ATTR_FINGERPRINT, crc.to_bytes(4, "big"))


def build_binding_request(
    transaction_id: bytes, *, software: str | None = None, fingerprint: bool = True
) -> bytes:
    """A Binding request with ``transaction_id`` (12 bytes)."""
    attrs = _attribute(ATTR_SOFTWARE, software.encode()) if software is not None else b""
    return _build(BINDING_REQUEST, transaction_id, attrs, fingerprint)


def _xor_address(address: tuple[str, int], transaction_id: bytes) -> bytes:
    host, port = address
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    xport = port ^ (MAGIC_COOKIE >> 16)
    if isinstance(ip, ipaddress.IPv4Address):
        xaddr = int(ip) ^ MAGIC_COOKIE
        return struct.pack(">BBHI", 0, _FAMILY_IPV4, xport, xaddr)
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    return struct.pack(">BBH", 0, _FAMILY_IPV6, xport) + (int(ip) ^ mask).to_bytes(16, "big")


def build_binding_response(
    transaction_id: bytes, address: tuple[str, int], *, fingerprint: bool = True
) -> bytes:
    """A Binding success response telling the client its reflexive ``address``."""
    attrs = _attribute(ATTR_XOR_MAPPED_ADDRESS, _xor_address(address, transaction_id))
    return _build(BINDING_SUCCESS, transaction_id, attrs, fingerprint)


def _parse(data: bytes) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError(f"STUN message of {len(data)} bytes is shorter than the header")
    msg_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise RemoteProtocolError(f"first two bits of the message type 0x{msg_type:04x} are set")
    if cookie != MAGIC_COOKIE:
        raise RemoteProtocolError(f"magic cookie is 0x{cookie:08x}, expected 0x2112a442")
    if length % 4 or HEADER_LEN + length != len(data):
        raise RemoteProtocolError(
            f"message length field {length} does not match the {len(data) - HEADER_LEN} "
            "bytes after the header (or is not a multiple of 4)"
        )
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER_LEN
    while pos < len(data):
        if pos + 4 > len(data):
            raise RemoteProtocolError(f"attribute header at offset {pos} is truncated")
        attr_type, attr_len = struct.unpack_from(">HH", data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            raise RemoteProtocolError(
                f"attribute 0x{attr_type:04x} at offset {pos} claims {attr_len} bytes, "
                f"only {len(data) - pos - 4} left"
            )
        if attrs and attrs[-1][0] == ATTR_FINGERPRINT:
            raise RemoteProtocolError("FINGERPRINT is not the last attribute")
        if attr_type == ATTR_FINGERPRINT:
            expected = (binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if attr_len != 4 or int.from_bytes(data[pos + 4 : end], "big") != expected:
                raise RemoteProtocolError("FINGERPRINT does not match the message")
        attrs.append((attr_type, data[pos + 4 : end]))
        pos = end + (-attr_len % 4)
    return msg_type, transaction_id, attrs


def parse_binding_request(data: bytes) -> BindingRequest:
    """Parse a Binding request; raises RemoteProtocolError for anything else."""
    msg_type, transaction_id, attrs = _parse(data)
    if msg_type != BINDING_REQUEST:
        raise RemoteProtocolError(f"message type 0x{msg_type:04x} is not a Binding request")
    software = None
    for attr_type, value in attrs:
        if attr_type == ATTR_SOFTWARE:
            software = value.decode("utf-8", errors="replace")
    return BindingRequest(transaction_id, software)


def _read_address(value: bytes, transaction_id: bytes, *, xor: bool) -> tuple[str, int]:
    name = "XOR-MAPPED-ADDRESS" if xor else "MAPPED-ADDRESS"
    if len(value) < 4:
        raise RemoteProtocolError(f"{name} of {len(value)} bytes is truncated")
    family = value[1]
    port = int.from_bytes(value[2:4], "big")
    raw = value[4:]
    if family == _FAMILY_IPV4:
        size = 4
    elif family == _FAMILY_IPV6:
        size = 16
    else:
        raise RemoteProtocolError(f"{name} has unknown address family 0x{family:02x}")
    if len(raw) != size:
        raise RemoteProtocolError(f"{name} address is {len(raw)} bytes, expected {size}")
    number = int.from_bytes(raw, "big")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        number ^= int.from_bytes((_COOKIE_BYTES + transaction_id)[:size], "big")
    host = ipaddress.IPv4Address(number) if size == 4 else ipaddress.IPv6Address(number)
    return str(host), port


def parse_binding_response(data: bytes) -> BindingResponse:
    """Parse a Binding success response and its (XOR-)MAPPED-ADDRESS.

    Raises:
        RemoteProtocolError: not a well-formed success response, an error response
            (the reason carries its code), or no address attribute.
    """
    msg_type, transaction_id, attrs = _parse(data)
    if msg_type == BINDING_ERROR:
        code = next((v for t, v in attrs if t == ATTR_ERROR_CODE), b"")
        detail = f"{code[2] * 100 + code[3]}" if len(code) >= 4 else "without a code"
        raise RemoteProtocolError(f"server answered a Binding error response {detail}")
    if msg_type != BINDING_SUCCESS:
        raise RemoteProtocolError(f"message type 0x{msg_type:04x} is not a Binding response")
    mapped = None
    for attr_type, value in attrs:
        if attr_type == ATTR_XOR_MAPPED_ADDRESS:
            return BindingResponse(transaction_id, _read_address(value, transaction_id, xor=True))
        if attr_type == ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = _read_address(value, transaction_id, xor=False)
    if mapped is None:
        raise RemoteProtocolError("Binding response carries no XOR-MAPPED-ADDRESS")
    return BindingResponse(transaction_id, mapped)
