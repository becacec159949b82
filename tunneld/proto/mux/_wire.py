"""Wire encoding: QUIC variable-length integers (RFC 9000 section 16) and frame types.

The layout of every frame is documented in ``docs/mux.md``; this module holds the
type numbers and the primitive readers and writers the connection uses.
"""

from __future__ import annotations

from tunneld.proto.mux._errors import ErrorCode, RemoteProtocolError

__all__ = [
    "MAX_VARINT",
    "FrameType",
    "Reader",
    "push_varint",
    "varint_size",
]

MAX_VARINT = (1 << 62) - 1


class FrameType:
    """Frame type numbers (one byte each; STREAM uses 0x08-0x0f with flag bits)."""

    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    RESET_STREAM = 0x04
    STOP_SENDING = 0x05
    STREAM = 0x08  # | OFF 0x04 | LEN 0x02 | FIN 0x01
    STREAM_OFF = 0x04
    STREAM_LEN = 0x02
    STREAM_FIN = 0x01
    MAX_DATA = 0x10
    MAX_STREAM_DATA = 0x11
    MAX_STREAMS = 0x12
    DATA_BLOCKED = 0x14
    STREAM_DATA_BLOCKED = 0x15
    CLOSE = 0x1C
    PATH_PROBE = 0x30
    PATH_RESPONSE = 0x31
    CALL_ME_MAYBE = 0x32


def varint_size(value: int) -> int:
    """How many bytes ``value`` takes as a varint."""
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x40000000:
        return 4
    return 8


def push_varint(buf: bytearray, value: int) -> None:
    """Append ``value`` (0 <= value < 2**62) to ``buf`` as a varint."""
    if value < 0x40:
        buf.append(value)
    elif value < 0x4000:
        buf += (value | 0x4000).to_bytes(2, "big")
    elif value < 0x40000000:
        buf += (value | 0x80000000).to_bytes(4, "big")
    else:
        buf += (value | 0xC000000000000000).to_bytes(8, "big")


class Reader:
    """Reads varints and byte strings from one datagram.

    Every read past the end raises ``RemoteProtocolError(FRAME_ENCODING_ERROR)``
    naming what was being read and where, so truncation never surfaces as
    IndexError.
    """

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.end = len(data)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def truncated(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(
            ErrorCode.FRAME_ENCODING_ERROR, f"truncated {what} at byte {self.pos} of {self.end}"
        )

    def varint(self, what: str) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.truncated(what)
        first = self.data[pos]
        prefix = first >> 6
        if prefix == 0:
            self.pos = pos + 1
            return first
        size = 1 << prefix
        if pos + size > self.end:
            raise self.truncated(what)
        self.pos = pos + size
        value = int.from_bytes(self.data[pos : pos + size], "big")
        return value & ((1 << (8 * size - 2)) - 1)

    def take(self, length: int, what: str) -> memoryview:
        pos = self.pos
        if length > self.end - pos:
            raise self.truncated(what)
        self.pos = pos + length
        return self.data[pos : pos + length]

    def rest(self) -> memoryview:
        pos = self.pos
        self.pos = self.end
        return self.data[pos : self.end]
