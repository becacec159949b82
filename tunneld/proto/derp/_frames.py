"""DERP v2 framing: 1-byte type, 4-byte big-endian length, payload (Tailscale derp.go).

Frames form a byte stream: over a WebSocket a frame may span several messages and a
message may carry several frames, so :class:`FrameDecoder` accepts bytes in any split.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
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
    "frame_header",
    "recv_packet_parts",
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
# Fed chunks kept apart before the decoder joins them (bounds per-chunk overhead).
_MAX_CHUNKS: Final = 64


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

    Fed chunks are kept as they came (no copy into one growing buffer): a frame
    inside one chunk is a view of it, one that spans chunks is joined once. Relayed
    packets are up to 64 KiB, so each copy saved is one 64 KiB copy per packet.
    """

    __slots__ = ("_available", "_chunks", "_header", "_offset")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already consumed
        self._available = 0
        self._header: tuple[int, int] | None = None  # (type, length) of the next frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._available

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (any split of the stream)."""
        if not data:
            return
        # bytes are immutable, so views into them stay valid; anything else is copied.
        chunk = data if type(data) is bytes else bytes(data)
        chunks = self._chunks
        chunks.append(chunk)
        self._available += len(chunk)
        if len(chunks) > _MAX_CHUNKS:
            # Many tiny pieces (one-byte WebSocket messages, say): keep the memory per
            # buffered byte bounded by joining them.
            joined = b"".join([memoryview(chunks[0])[self._offset :], *list(chunks)[1:]])
            chunks.clear()
            chunks.append(joined)
            self._offset = 0

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises:
            RemoteProtocolError: the header announces an oversized payload.
        """
        found = self.next_view()
        if found is None:
            return None
        return Frame(found[0], bytes(found[1]))

    def next_view(self) -> tuple[int, memoryview] | None:
        """As :meth:`next_frame`, as ``(type, payload)`` with the payload a read-only
        view (of immutable bytes: valid for as long as it is kept); copy what you keep.

        Raises:
            RemoteProtocolError: the header announces an oversized payload.
        """
        header = self._header
        if header is None:
            if self._available < FRAME_HEADER_LEN:
                return None
            first = self._chunks[0]
            if len(first) - self._offset >= FRAME_HEADER_LEN:
                header = _HEADER.unpack_from(first, self._offset)
            else:
                header = _HEADER.unpack(self._peek(FRAME_HEADER_LEN))
            frame_type, length = header
            limit = max_payload(frame_type)
            if length > limit:
                raise RemoteProtocolError(
                    f"{frame_name(frame_type)} frame announces {length} bytes, limit is {limit}",
                    close_code=CLOSE_MESSAGE_TOO_BIG,
                )
            self._header = header
        frame_type, length = header
        total = FRAME_HEADER_LEN + length
        if self._available < total:
            return None
        self._header = None
        return frame_type, self._take(total)[FRAME_HEADER_LEN:]

    def _peek(self, size: int) -> bytes:
        """The next ``size`` buffered bytes (they are there), not consumed."""
        parts = []
        offset = self._offset
        for chunk in self._chunks:
            parts.append(chunk[offset : offset + size])
            size -= len(parts[-1])
            offset = 0
            if not size:
                break
        return b"".join(parts)

    def _take(self, size: int) -> memoryview:
        """Consume the next ``size`` buffered bytes (they are there)."""
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        end = offset + size
        self._available -= size
        if end <= len(first):
            if end == len(first):
                chunks.popleft()
                self._offset = 0
            else:
                self._offset = end
            return memoryview(first)[offset:end]
        parts = []
        while size:
            chunk = chunks[0]
            take = min(len(chunk) - offset, size)
            parts.append(memoryview(chunk)[offset : offset + take])
            size -= take
            if offset + take == len(chunk):
                chunks.popleft()
                offset = 0
            else:
                offset += take
        self._offset = offset
        return memoryview(b"".join(parts))


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    """A complete frame: header plus ``payload``."""
    return _HEADER.pack(frame_type, len(payload)) + payload


def frame_header(frame_type: int, length: int) -> bytes:
    """The 5-byte header of a frame whose payload is ``length`` bytes."""
    return _HEADER.pack(frame_type, length)


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
    return b"".join((_HEADER.pack(FrameType.SEND_PACKET, KEY_LEN + len(data)), dst, data))


def encode_recv_packet(src: bytes, data: bytes) -> bytes:
    """RECV_PACKET from ``src``; raises ValueError for a bad key or a packet over 64 KiB."""
    return b"".join(recv_packet_parts(src, data))


def recv_packet_parts(src: bytes, data: bytes) -> tuple[bytes, bytes]:
    """RECV_PACKET from ``src`` as (header and source key, ``data``): joined, the frame
    (a relay writes several at once and joins them only then: one copy of ``data``).
    Raises ValueError for a bad key or a packet over 64 KiB."""
    _check_key(src, "source key")
    _check_packet(data)
    return _HEADER.pack(FrameType.RECV_PACKET, KEY_LEN + len(data)) + src, data


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
