"""Length-prefixed framing: a 4-byte big-endian length, then that many bytes of msgpack."""

from __future__ import annotations

from tunneld.proto.agentrpc._errors import RemoteProtocolError

__all__ = ["HEADER_SIZE", "MAX_FRAME_SIZE", "FrameDecoder", "frame"]

HEADER_SIZE = 4
# Large enough for a read_file/write_file payload of several MiB plus the map around it;
# small enough that one peer cannot make the other buffer unbounded memory.
MAX_FRAME_SIZE = 16 * 2**20


def frame(payload: bytes, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Prefix ``payload`` with its length.

    Raises:
        ValueError: the payload is larger than ``max_frame_size`` (local misuse).
    """
    if len(payload) > max_frame_size:
        raise ValueError(f"frame of {len(payload)} bytes exceeds the {max_frame_size}-byte limit")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Splits a byte stream into frame payloads (h11 shape: ``receive_data``/``next_frame``).

    An oversized length prefix raises ``RemoteProtocolError`` as soon as the header is
    seen, before any of the body is buffered. After an error the decoder stays broken:
    the stream cannot be resynchronised, so the caller closes it.
    """

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._max = max_frame_size
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the stream; ``b""`` means the peer sent EOF."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RemoteProtocolError("data after end of stream")
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete payload, or ``None`` if more bytes are needed (or at clean EOF).

        Raises:
            RemoteProtocolError: the length prefix exceeds the limit, or the stream ended
                inside a frame.
        """
        if self._error is not None:
            raise self._error
        if len(self._buffer) >= HEADER_SIZE:
            length = int.from_bytes(self._buffer[:HEADER_SIZE], "big")
            if length > self._max:
                self._error = RemoteProtocolError(
                    f"frame length {length} exceeds the {self._max}-byte limit"
                )
                raise self._error
            if len(self._buffer) >= HEADER_SIZE + length:
                payload = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + length])
                del self._buffer[: HEADER_SIZE + length]
                return payload
        if self._eof and self._buffer:
            self._error = RemoteProtocolError(
                f"stream ended inside a frame ({len(self._buffer)} bytes pending)"
            )
            raise self._error
        return None

    @property
    def at_eof(self) -> bool:
        """The peer sent EOF and every complete frame has been returned."""
        return self._eof and not self._buffer
