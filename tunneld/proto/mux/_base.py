"""State shared by the halves of a mux connection, and the helpers both use."""

from __future__ import annotations

from collections import deque
from enum import Enum

from tunneld.proto.mux._config import (
    MIN_DATAGRAM_SIZE,
    MuxConfig,
)
from tunneld.proto.mux._errors import (
    ConnectionClosedError,
    ErrorCode,
    StreamError,
)
from tunneld.proto.mux._events import (
    ConnectionClosed,
    Event,
    Path,
)
from tunneld.proto.mux._ranges import RangeSet
from tunneld.proto.mux._recovery import LossRecovery, SentPacket
from tunneld.proto.mux._sendbuf import SendBuffer
from tunneld.proto.mux._stream import ControlState, Stream

__all__ = [
    "CONTROL_FRAME_MAX",
    "MAX_STREAM_COUNT",
    "MIN_PACKET_ROOM",
    "REC_ACK",
    "REC_CALL_ME_MAYBE",
    "REC_MAX_DATA",
    "REC_MAX_STREAMS",
    "REC_MAX_STREAM_DATA",
    "REC_PING",
    "REC_RESET",
    "REC_STOP",
    "REC_STREAM",
    "STREAM_FRAME_MIN",
    "ConnectionBase",
    "ConnectionState",
]

# Kinds of retransmittable frame records kept with each sent packet.
REC_STREAM = 0
REC_RESET = 1
REC_STOP = 2
REC_MAX_DATA = 3
REC_MAX_STREAM_DATA = 4
REC_MAX_STREAMS = 5
REC_CALL_ME_MAYBE = 6
REC_ACK = 7
REC_PING = 8

# Largest encoding of a control frame (type + three 8-byte varints).
CONTROL_FRAME_MAX = 25
# Smallest useful room for a STREAM frame: header (type, 8+8+2 varints) plus data.
STREAM_FRAME_MIN = 32
# Below this much congestion room we stop building in-flight packets.
MIN_PACKET_ROOM = 64
MAX_STREAM_COUNT = 1 << 60


class ConnectionState(Enum):
    """OPEN carries streams; CLOSING re-sends our CLOSE for a while; CLOSED is final."""

    OPEN = 0
    CLOSING = 1
    CLOSED = 2


class ConnectionBase:
    """Everything a connection remembers; see ``Connection`` for the public API."""

    def __init__(
        self, *, is_initiator: bool, config: MuxConfig | None = None, path: Path | None = None
    ) -> None:
        self._config = config = config or MuxConfig()
        self._mss = config.max_datagram_size
        self._side = 0 if is_initiator else 1
        self._state = ConnectionState.OPEN
        self._events: deque[Event] = deque()
        self._streams: dict[int, Stream] = {}
        self._recovery = LossRecovery(config)
        self._path: Path | None = None
        self._path_pinned = path is not None
        if path is not None:
            self._switch_path(path)
        # stream counts (cumulative, as in QUIC MAX_STREAMS)
        self._local_next_index = 0
        self._max_streams_remote = config.max_concurrent_streams
        self._peer_next_index = 0
        self._max_streams_local = config.max_concurrent_streams
        self._max_streams_pending = False
        # What the peer was last told (or will be once a lost frame is repeated):
        # MAX_STREAMS rides along in packets sent anyway and gets a packet of its own
        # only when the peer is down to less than half its streams (_max_streams_urgent).
        self._max_streams_announced = config.max_concurrent_streams
        # connection flow control, receive side (credit grows with bytes *read*)
        self._conn_window = int(config.initial_stream_window * config.connection_window_factor)
        self._conn_max_window = int(config.max_stream_window * config.connection_window_factor)
        self._max_data_local = self._conn_window
        self._conn_received = 0
        self._conn_consumed = 0
        self._conn_window_updated_at: float | None = None
        self._max_data_pending = False
        # connection flow control, send side
        self._max_data_remote = self._conn_window
        self._data_sent = 0
        self._data_blocked_at = -1
        self._data_blocked_pending = False
        self._send_buffered = 0
        # scheduling
        self._sendable: dict[int, None] = {}  # ordered set: round robin over streams
        self._control: dict[int, None] = {}  # streams with control frames to send
        # Streams whose only news is their closing (STOP_SENDING, the RESET_STREAM
        # answering the peer's STOP_SENDING, a FIN with no data after the application
        # stopped reading): nobody waits for those, so they ride in the next packet
        # that goes anyway, at the latest with the ACK we owe (see _flush_lazy).
        self._lazy: dict[int, None] = {}
        self._credit_check: dict[int, None] = {}
        self._blocked_writers: dict[int, None] = {}
        self._probes_wanted = 0
        self._ping_pending = False
        self._call_me_maybe: tuple[bytes, ...] | None = None
        self._call_me_maybe_version = 0
        self._call_me_maybe_pending = False
        # Path frames to send alone in a packet: (path, frame, pad the packet to this).
        self._path_out: deque[tuple[Path, bytes, int]] = deque()
        self._outstanding_probes: dict[bytes, tuple[Path, float]] = {}
        # packet numbers we send and receive
        self._next_pn = 0
        self._received_pns = RangeSet()
        self._largest_received = -1
        self._largest_received_time = 0.0
        self._ack_floor = 0
        self._ack_eliciting_unacked = 0
        self._ack_immediate = False
        self._ack_deadline: float | None = None
        # liveness and closing
        self._started_at: float | None = None
        self._last_received: float | None = None
        self._close_frame: tuple[int, str] | None = None
        self._close_send_pending = False
        self._close_deadline: float | None = None
        self._pacing_until: float | None = None

    def _switch_path(self, path: Path) -> None:
        size = path.max_datagram_size or self._config.max_datagram_size
        self._mss = max(size, MIN_DATAGRAM_SIZE)
        self._recovery.set_mss(self._mss)
        self._recovery.max_in_flight = path.max_in_flight
        if path == self._path and self._path is not None and path.reliable == self._path.reliable:
            # The same path with a new datagram size (path MTU discovery): congestion
            # state carries on. Packets already sent keep their size; frames of lost
            # ones are resent in packets of the new size (frames are split to fit).
            self._path = path
            return
        self._path = path
        self._recovery.on_path_change(path.reliable)

    def _check_open(self) -> None:
        if self._state is not ConnectionState.OPEN:
            code, reason = self._close_frame or (ErrorCode.NO_ERROR, "closed")
            raise ConnectionClosedError(code, reason)

    def _stream(self, stream_id: int) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamError(f"stream {stream_id} is not open")
        return stream

    def _reset_send_side(self, stream: Stream, error_code: int, *, lazy: bool = False) -> None:
        if stream.send_reset_code is not None or stream.send_terminal():
            return
        stream.send_reset_code = error_code
        stream.send_reset_final = stream.next_new
        stream.send_reset_state = ControlState.PENDING
        self._send_buffered -= stream.send_buffered
        stream.send_buf = SendBuffer(stream.send_base)
        stream.lost = RangeSet()
        stream.fin_lost = False
        self._sendable.pop(stream.stream_id, None)
        if lazy and stream.stream_id not in self._control:
            self._lazy[stream.stream_id] = None
        else:
            self._control[stream.stream_id] = None

    def _flush_lazy(self) -> None:
        """Queue the close-only frames of ``_lazy`` for the packet being built."""
        for stream_id in self._lazy:
            if stream_id in self._streams:
                self._control[stream_id] = None
                self._sendable[stream_id] = None
        self._lazy.clear()

    def _maybe_remove(self, stream: Stream) -> None:
        if not (stream.send_terminal() and stream.recv_terminal()):
            return
        stream_id = stream.stream_id
        if self._streams.pop(stream_id, None) is None:
            return
        self._sendable.pop(stream_id, None)
        self._control.pop(stream_id, None)
        self._lazy.pop(stream_id, None)
        self._credit_check.pop(stream_id, None)
        self._blocked_writers.pop(stream_id, None)
        self._send_buffered -= stream.send_buffered
        if (stream_id & 1) != self._side:
            # A peer stream ended: let the peer open another (RFC 9000 section 4.6).
            self._max_streams_local += 1
            self._max_streams_pending = True

    def _max_streams_urgent(self) -> bool:
        """Whether MAX_STREAMS news deserves a packet of its own: the peer has less
        than half of ``max_concurrent_streams`` left to open (RFC 9000 section 4.6 lets
        the receiver choose when; one frame per closed stream doubled the packets of
        a short request/response)."""
        left = self._max_streams_announced - self._peer_next_index
        return 2 * left < self._config.max_concurrent_streams

    def _enter_closing(self, error_code: int, reason: str, *, by_peer: bool) -> None:
        self._close_frame = (error_code, reason)
        self._events.append(ConnectionClosed(error_code, reason, by_peer))
        if by_peer or self._path is None:
            self._state = ConnectionState.CLOSED
            return
        self._state = ConnectionState.CLOSING
        self._close_send_pending = True
        self._close_deadline = None  # set when the CLOSE goes out

    def _enter_closed_silently(self, error_code: int, reason: str) -> None:
        self._close_frame = (error_code, reason)
        self._events.append(ConnectionClosed(error_code, reason, False))
        self._state = ConnectionState.CLOSED

    def _touch(self, now: float) -> None:
        if self._started_at is None:
            self._started_at = now
            self._recovery.time_of_last_ack_eliciting = now

    def _on_lost(self, lost: list[SentPacket]) -> None:
        streams = self._streams
        for packet in lost:
            for kind, stream_id, offset, length, fin in packet.frames:
                if kind == REC_STREAM:
                    stream = streams.get(stream_id)
                    if stream is not None:
                        stream.on_data_lost(offset, length, fin)
                        if stream.has_retransmit():
                            self._sendable[stream_id] = None
                elif kind == REC_RESET:
                    stream = streams.get(stream_id)
                    if stream is not None and stream.send_reset_state is ControlState.SENT:
                        stream.send_reset_state = ControlState.PENDING
                        self._control[stream_id] = None
                elif kind == REC_STOP:
                    stream = streams.get(stream_id)
                    if (
                        stream is not None
                        and stream.stop_state is ControlState.SENT
                        and not stream.recv_terminal()
                    ):
                        stream.stop_state = ControlState.PENDING
                        self._control[stream_id] = None
                elif kind == REC_MAX_DATA:
                    self._max_data_pending = True
                elif kind == REC_MAX_STREAM_DATA:
                    stream = streams.get(stream_id)
                    if stream is not None and stream.final_size is None:
                        stream.max_data_pending = True
                        self._control[stream_id] = None
                elif kind == REC_MAX_STREAMS:
                    self._max_streams_pending = True
                    # The peer may be waiting for it: repeat it at once.
                    self._max_streams_announced = self._peer_next_index
                elif kind == REC_CALL_ME_MAYBE and offset == self._call_me_maybe_version:
                    self._call_me_maybe_pending = True

    def _requeue_oldest_for_probe(self) -> None:
        # A PTO probe carries the oldest unacked data again (RFC 9002 section 6.2.4)
        # without declaring it lost, so a lost tail is repaired even when packet- and
        # time-threshold detection cannot fire.
        count = 0
        for packet in self._recovery.sent.values():
            if not packet.ack_eliciting:
                continue
            for record in packet.frames:
                if record[0] == REC_STREAM:
                    stream = self._streams.get(record[1])
                    if stream is not None:
                        stream.on_data_lost(record[2], record[3], record[4])
                        if stream.has_retransmit():
                            self._sendable[stream.stream_id] = None
            count += 1
            if count >= 2:
                break
