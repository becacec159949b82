"""DERP v2 framing: 1-byte type, 4-byte big-endian length, payload (Tailscale derp.go).

Frames form a byte stream: over a WebSocket a frame may span several messages and a
message may carry several frames, so :class:`FrameDecoder` accepts bytes in any split.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from tunneld.proto.derp._errors import CLOSE_MESSAGE_TOO_BIG, RemoteProtocolError

__all__ = [
    "FRAME_HEADER_LEN",
    "KEY_LEN",
    "MAGIC",
    "MAX_PACKET_SIZE",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "PeerGoneReason",
    "encode_frame",
    "encode_health",
    "encode_keep_alive",
    "encode_note_preferred",
    "encode_peer_gone",
    "encode_peer_present",
    "encode_ping",
    "encode_pong",
    "encode_recv_packet",
    "encode_restarting",
    "encode_send_packet",
]

MAGIC: Final = "DERP🔑".encode()  # 8 bytes: 44 45 52 50 f0 9f 94 91
PROTOCOL_VERSION: Final = 2
KEY_LEN: Final = 32
NONCE_LEN: Final = 24
FRAME_HEADER_LEN: Final = 5
# The largest packet a client may relay (derp.go MaxPacketSize, 64 KiB); framing not included.
MAX_PACKET_SIZE: Final = 64 << 10
PING_LEN: Final = 8

_HEADER = struct.Struct(">BI")


class FrameType(enum.IntEnum):
    """The one-byte frame type (derp.go ``frameType``)."""

    SERVER_KEY = 0x01  # 8B magic + 32B server public key (+ bytes for future use)
    CLIENT_INFO = 0x02  # 32B client public key + 24B nonce + box(JSON)
    SERVER_INFO = 0x03  # 24B nonce + box(JSON)
    SEND_PACKET = 0x04  # 32B destination key + packet
    RECV_PACKET = 0x05  # 32B source key + packet (version 2)
    KEEP_ALIVE = 0x06  # no payload
    NOTE_PREFERRED = 0x07  # 1 byte: 1 if this relay is the client's home
    PEER_GONE = 0x08  # 32B key + optional 1-byte reason
    PEER_PRESENT = 0x09  # 32B key (+ optional address and flags)
    FORWARD_PACKET = 0x0A  # mesh only: 32B src + 32B dst + packet
    WATCH_CONNS = 0x10  # mesh only
    CLOSE_PEER = 0x11  # mesh only: 32B key
    PING = 0x12  # 8 bytes, echoed in PONG
    PONG = 0x13  # 8 bytes
    HEALTH = 0x14  # UTF-8 text; empty clears the problem
    RESTARTING = 0x15  # two big-endian uint32 milliseconds: reconnect in, try for


class PeerGoneReason(enum.IntEnum):
    """Why a PEER_GONE frame was sent (derp.go ``PeerGoneReasonType``)."""

    DISCONNECTED = 0x00  # the peer was connected and went away
    NOT_HERE = 0x01  # the destination of a SendPacket is not connected here


# Largest payload accepted per type, checked as soon as the header arrives so an
# attacker cannot make us buffer a 4 GiB frame. Handshake frames are bounded like
# derper's server (256 KiB of client info); a ping body up to 1000 bytes is allowed
# for future extensions, as derper does.
_INFO_MAX: Final = 256 << 10
_MAX_PAYLOAD: Final[dict[int, int]] = {
    FrameType.SERVER_KEY: 1024,
    FrameType.CLIENT_INFO: _INFO_MAX,
    FrameType.SERVER_INFO: _INFO_MAX,
    FrameType.SEND_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.RECV_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.FORWARD_PACKET: 2 * KEY_LEN + MAX_PACKET_SIZE,
    FrameType.PING: 1000,
    FrameType.PONG: 1000,
    FrameType.HEALTH: 4096,
}
# Anything else (keep-alives, small control frames, types from the future).
_DEFAULT_MAX_PAYLOAD: Final = 4096


def max_payload(frame_type: int) -> int:
    """The largest payload this implementation accepts for ``frame_type``."""
    return _MAX_PAYLOAD.get(frame_type, _DEFAULT_MAX_PAYLOAD)


def frame_name(frame_type: int) -> str:
    """A readable name for error messages, e.g. ``SEND_PACKET (0x04)``."""
    try:
        return f"{FrameType(frame_type).name} (0x{frame_type:02x})"
    except ValueError:
        return f"unknown frame type 0x{frame_type:02x}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its type byte (maybe unknown to us) and payload."""

    type: int
    payload: bytes


class FrameDecoder:
    """Reassembles frames from a byte stream split anywhere.

    :meth:`feed` appends bytes; :meth:`next_frame` returns the next complete frame or
    ``None``. A header announcing more than :func:`max_payload` for its type raises
    :class:`RemoteProtocolError` (close code 1009) before the payload is buffered.
    """

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        """Append ``data`` (any split of the stream)."""
        if self._offset and self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises:
            RemoteProtocolError: the header announces an oversized payload.
        """
        available = len(self._buffer) - self._offset
        if available < FRAME_HEADER_LEN:
            return None
        frame_type, length = _HEADER.unpack_from(self._buffer, self._offset)
        limit = max_payload(frame_type)
        if length > limit:
            raise RemoteProtocolError(
                f"{frame_name(frame_type)} frame announces {length} bytes, limit is {limit}",
                close_code=CLOSE_MESSAGE_TOO_BIG,
            )
        end = self._offset + FRAME_HEADER_LEN + length
        if end > len(self._buffer):
            return None
        payload = bytes(self._buffer[self._offset + FRAME_HEADER_LEN : end])
        self._offset = end
        # Compact once the consumed prefix dominates, so memory stays bounded by
        # one frame plus one read.
        if self._offset > 65536 and self._offset * 2 > len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0
        return Frame(frame_type, payload)


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    """A complete frame: header plus ``payload``."""
    return _HEADER.pack(frame_type, len(payload)) + payload


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")


def _check_packet(data: bytes) -> None:
    if len(data) > MAX_PACKET_SIZE:
        raise ValueError(f"packet of {len(data)} bytes exceeds DERP's {MAX_PACKET_SIZE}")


def encode_send_packet(dst: bytes, data: bytes) -> bytes:
    """SEND_PACKET to ``dst``; raises ValueError for a bad key or a packet over 64 KiB."""
    _check_key(dst, "destination key")
    _check_packet(data)
    return encode_frame(FrameType.SEND_PACKET, dst + data)


def encode_recv_packet(src: bytes, data: bytes) -> bytes:
    """RECV_PACKET from ``src``; raises ValueError for a bad key or a packet over 64 KiB."""
    _check_key(src, "source key")
    _check_packet(data)
    return encode_frame(FrameType.RECV_PACKET, src + data)


def encode_keep_alive() -> bytes:
    """KEEP_ALIVE (no payload)."""
    return encode_frame(FrameType.KEEP_ALIVE)


def encode_note_preferred(preferred: bool) -> bytes:
    """NOTE_PREFERRED: whether this relay is the sender's home relay."""
    return encode_frame(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def encode_peer_gone(peer: bytes, reason: PeerGoneReason) -> bytes:
    """PEER_GONE for ``peer`` with ``reason``."""
    _check_key(peer, "peer key")
    return encode_frame(FrameType.PEER_GONE, peer + bytes([reason]))


def encode_peer_present(peer: bytes) -> bytes:
    """PEER_PRESENT for ``peer``."""
    _check_key(peer, "peer key")
    return encode_frame(FrameType.PEER_PRESENT, peer)


def encode_ping(data: bytes) -> bytes:
    """PING with an 8-byte payload to be echoed."""
    if len(data) != PING_LEN:
        raise ValueError(f"ping payload must be {PING_LEN} bytes, got {len(data)}")
    return encode_frame(FrameType.PING, data)


def encode_pong(data: bytes) -> bytes:
    """PONG echoing an 8-byte ping payload."""
    if len(data) != PING_LEN:
        raise ValueError(f"pong payload must be {PING_LEN} bytes, got {len(data)}")
    return encode_frame(FrameType.PONG, data)


def encode_health(problem: str) -> bytes:
    """HEALTH: the text of a problem with this connection; empty clears it."""
    return encode_frame(FrameType.HEALTH, problem.encode())


def encode_restarting(reconnect_in_ms: int, try_for_ms: int) -> bytes:
    """RESTARTING: reconnect after ``reconnect_in_ms``, keep trying for ``try_for_ms``."""
    return encode_frame(
        FrameType.RESTARTING,
        struct.pack(">II", _clamp_u32(reconnect_in_ms), _clamp_u32(try_for_ms)),
    )


def _clamp_u32(value: int) -> int:
    return max(0, min(value, 0xFFFFFFFF))
