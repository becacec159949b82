"""Per-stream state: the send buffer with acked/lost ranges and the receive reassembly."""

from __future__ import annotations

from collections import deque
from enum import Enum

from tunneld.proto.mux._errors import ErrorCode, RemoteProtocolError
from tunneld.proto.mux._ranges import RangeSet
from tunneld.proto.mux._sendbuf import SendBuffer

__all__ = ["ControlState", "Stream"]

# In-order frames this big are held as they came (recv_chunks); smaller ones go to
# recv_buf, so a peer's tiny frames cannot make one object each.
_CHUNK_MIN = 4096


class ControlState(Enum):
    """Life of a reliable control frame (RESET_STREAM, STOP_SENDING) of one stream."""

    NONE = 0
    PENDING = 1  # must be (re)sent
    SENT = 2
    ACKED = 3


class Stream:
    """Both directions of one bidirectional stream.

    Send side: ``send_buf`` holds bytes from offset ``send_base`` to ``send_end``;
    everything below ``send_base`` is acked; ``next_new`` is the first never-sent
    offset; ``lost`` holds ranges to retransmit. Receive side: from
    ``read_offset`` on, ``recv_chunks`` holds ``recv_chunked`` in-order bytes as
    they came (big frames that arrived in order while nothing else waited: no
    copy into a growing buffer, and a read takes one as it is), then ``recv_buf``
    holds the rest, with holes; ``received`` says which offsets arrived.
    """

    __slots__ = (
        "eof_delivered",
        "fin_acked",
        "fin_lost",
        "fin_requested",
        "fin_sent",
        "final_size",
        "header_pending",
        "highest_received",
        "local",
        "lost",
        "max_data_local",
        "max_data_pending",
        "max_data_remote",
        "needs_credit_check",
        "next_new",
        "no_delay",
        "read_offset",
        "readable_notified",
        "received",
        "recv_buf",
        "recv_chunked",
        "recv_chunks",
        "recv_reset_code",
        "send_acked",
        "send_base",
        "send_blocked_at",
        "send_buf",
        "send_reset_code",
        "send_reset_final",
        "send_reset_state",
        "stop_code",
        "stop_state",
        "stream_id",
        "window",
        "window_updated_at",
        "writer_blocked",
    )

    def __init__(
        self, stream_id: int, local: bool, max_data_local: int, max_data_remote: int
    ) -> None:
        self.stream_id = stream_id
        self.local = local
        # send side
        self.send_buf = SendBuffer()
        self.send_base = 0
        self.next_new = 0
        self.send_acked = RangeSet()
        self.lost = RangeSet()
        self.fin_requested = False
        self.fin_sent = False
        self.fin_lost = False
        self.fin_acked = False
        self.max_data_remote = max_data_remote
        self.send_blocked_at = -1
        self.writer_blocked = False
        self.no_delay = False  # every write is a whole message (pending_streams_final)
        self.send_reset_code: int | None = None
        self.send_reset_final = 0
        self.send_reset_state = ControlState.NONE
        # receive side
        self.recv_buf = bytearray()
        # bytes as they came, or a view of the rest of one a read took part of
        self.recv_chunks: deque[bytes | memoryview] = deque()
        self.recv_chunked = 0
        self.read_offset = 0
        self.received = RangeSet()
        self.highest_received = 0
        self.final_size: int | None = None
        self.eof_delivered = False
        self.max_data_local = max_data_local
        self.window = max_data_local
        self.window_updated_at: float | None = None
        self.max_data_pending = False
        self.needs_credit_check = False
        self.recv_reset_code: int | None = None
        self.stop_code: int | None = None
        self.stop_state = ControlState.NONE
        self.readable_notified = False
        self.header_pending = not local

    # -- send side ------------------------------------------------------------------

    @property
    def send_end(self) -> int:
        return self.send_buf.end

    @property
    def send_buffered(self) -> int:
        """Bytes not yet acked (unsent or in flight)."""
        return self.send_buf.end - self.send_base

    def send_terminal(self) -> bool:
        if self.send_reset_code is not None:
            return self.send_reset_state is ControlState.ACKED
        return self.fin_acked and self.send_base == self.send_end

    def has_retransmit(self) -> bool:
        return bool(self.lost) or self.fin_lost

    def on_data_acked(self, offset: int, length: int, fin: bool) -> int:
        """Record an acked range; returns how many buffered bytes were released."""
        if fin:
            self.fin_acked = True
            self.fin_lost = False
        if length == 0 or self.send_reset_code is not None:
            return 0
        end = offset + length
        if end <= self.send_base:
            return 0
        self.lost.subtract(offset, end)
        acked = self.send_acked
        acked.add(max(offset, self.send_base), end)
        first_start, first_end = acked[0]
        if first_start != self.send_base:
            return 0
        released = first_end - self.send_base
        self.send_buf.release_to(first_end)
        self.send_base = first_end
        acked.trim_below(first_end)
        return released

    def on_data_lost(self, offset: int, length: int, fin: bool) -> None:
        if self.send_reset_code is not None:
            return
        if fin and not self.fin_acked:
            self.fin_lost = True
        end = offset + length
        start = max(offset, self.send_base)
        if start >= end:
            return
        # Only the parts not acked since are retransmitted.
        self.lost.add(start, end)
        for a_start, a_end in self.send_acked:
            if a_start >= end:
                break
            self.lost.subtract(a_start, a_end)

    # -- receive side ---------------------------------------------------------------

    def recv_terminal(self) -> bool:
        if self.recv_reset_code is not None:
            return True
        if self.final_size is None or self.read_offset != self.final_size:
            return False
        # The application must have seen the end (read_stream said so), unless it
        # stopped reading; otherwise a stream could vanish under a StreamReadable.
        return self.eof_delivered or self.stop_code is not None

    def receive(self, offset: int, data: memoryview, fin: bool) -> int:
        """Store a STREAM frame; returns by how much the highest offset grew.

        Raises RemoteProtocolError for flow-control and final-size violations.
        """
        length = len(data)
        end = offset + length
        final = self.final_size
        if final is not None and (end > final or (fin and end != final)):
            raise RemoteProtocolError(
                ErrorCode.FINAL_SIZE_ERROR,
                f"stream {self.stream_id}: data to {end} but final size is {final}",
            )
        if fin and end < self.highest_received:
            raise RemoteProtocolError(
                ErrorCode.FINAL_SIZE_ERROR,
                f"stream {self.stream_id}: FIN at {end} below received {self.highest_received}",
            )
        if end > self.max_data_local:
            raise RemoteProtocolError(
                ErrorCode.FLOW_CONTROL_ERROR,
                f"stream {self.stream_id}: data to {end} beyond credit {self.max_data_local}",
            )
        grown = end - self.highest_received
        if grown > 0:
            self.highest_received = end
        else:
            grown = 0
        if fin:
            self.final_size = end
        # Where recv_buf starts: bytes below are read or held in recv_chunks.
        base = self.read_offset + self.recv_chunked
        if self.recv_reset_code is not None or self.stop_code is not None or end <= base:
            return grown
        if offset < base:
            data = data[base - offset :]
            offset = base
        rel = offset - base
        buf = self.recv_buf
        if not buf and not rel and len(data) >= _CHUNK_MIN:
            self.recv_chunks.append(bytes(data))
            self.recv_chunked += len(data)
        elif rel == len(buf):
            buf += data
        else:
            if rel + len(data) > len(buf):
                buf.extend(bytes(rel + len(data) - len(buf)))
            buf[rel : rel + len(data)] = data
        self.received.add(offset, end)
        return grown

    def all_received(self) -> bool:
        """Whether every byte up to the peer's FIN has arrived (read or not)."""
        final = self.final_size
        if final is None:
            return False
        if self.read_offset == final:
            return True
        received = self.received
        return len(received) == 1 and received[0] == (self.read_offset, final)

    def readable_bytes(self) -> int:
        received = self.received
        if received and received[0][0] == self.read_offset:
            return received[0][1] - self.read_offset
        return 0

    def at_eof(self) -> bool:
        return self.final_size is not None and self.read_offset == self.final_size

    def read(self, max_bytes: int, *, exact: bool = False) -> bytes:
        """Up to ``max_bytes`` in-order bytes (all of them with ``exact``, which the
        caller knows to be readable); without ``exact`` a held chunk is returned
        alone, as it came (no copy) when it fits."""
        size = min(max_bytes, self.readable_bytes())
        if size <= 0:
            return b""
        chunks = self.recv_chunks
        if chunks and not exact and len(chunks[0]) <= size:
            chunk = chunks.popleft()
            size = len(chunk)
            self.recv_chunked -= size
            data = chunk if type(chunk) is bytes else bytes(chunk)
        elif chunks:
            data = self._take_chunked(size)
        else:
            data = self._take_buffered(size)
        self.read_offset += size
        self.received.trim_below(self.read_offset)
        self.needs_credit_check = True
        return data

    def _take_chunked(self, size: int) -> bytes:
        """``size`` bytes off the front, starting in ``recv_chunks``."""
        chunks = self.recv_chunks
        parts: list[bytes | memoryview] = []
        left = size
        while chunks and left:
            first = chunks[0]
            if len(first) > left:
                # The rest stays a view: small reads of a big chunk copy each byte once.
                view = memoryview(first)
                parts.append(view[:left])
                chunks[0] = view[left:]
                self.recv_chunked -= left
                left = 0
                break
            parts.append(chunks.popleft())
            self.recv_chunked -= len(first)
            left -= len(first)
        if left:
            parts.append(self._take_buffered(left))
        return b"".join(parts)

    def _take_buffered(self, size: int) -> bytes:
        buf = self.recv_buf
        if size == len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:  # one copy (a slice, then bytes(), was two)
                data = view[:size].tobytes()
            del buf[:size]
        return data

    def peek(self, count: int) -> bytes:
        """The first ``count`` held in-order bytes, left in place (fewer if fewer)."""
        parts: list[bytes | bytearray | memoryview] = []
        for chunk in self.recv_chunks:
            if count <= 0:
                break
            parts.append(chunk[:count])
            count -= len(chunk)
        if count > 0:
            parts.append(self.recv_buf[:count])
        return b"".join(parts)

    def discard_receive_buffer(self) -> int:
        """Drop unread bytes (reset or stop-sending); returns how many offsets were freed."""
        freed = self.highest_received - self.read_offset
        self.recv_buf = bytearray()
        self.recv_chunks = deque()
        self.recv_chunked = 0
        self.received = RangeSet()
        self.read_offset = self.highest_received
        return freed
