"""The sans-IO mux connection: streams, flow control, ACKs and loss recovery.

Shape follows aioquic: ``receive_datagram(data, path, now)``, ``datagrams_to_send(now)``,
``get_timer()``, ``handle_timer(now)``, ``next_event()``. The wire format is in
``docs/mux.md``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from enum import Enum

from tunneld.proto.mux._config import (
    MAX_CALL_ME_MAYBE_ENDPOINTS,
    MAX_CLOSE_REASON,
    MAX_ENDPOINT_LENGTH,
    MAX_OUTSTANDING_PROBES,
    MAX_SERVICE_LENGTH,
    MuxConfig,
)
from tunneld.proto.mux._errors import (
    ConnectionClosedError,
    ErrorCode,
    RemoteProtocolError,
    StreamError,
    StreamLimitError,
    StreamResetError,
)
from tunneld.proto.mux._events import (
    CallMeMaybe,
    ConnectionClosed,
    Event,
    Path,
    PathResponse,
    StopSending,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamWritable,
)
from tunneld.proto.mux._ranges import RangeSet
from tunneld.proto.mux._recovery import FrameRecord, LossRecovery, SentPacket
from tunneld.proto.mux._stream import ControlState, Stream
from tunneld.proto.mux._wire import MAX_VARINT, FrameType, Reader, push_varint, varint_size

__all__ = ["Connection", "ConnectionState"]

# Kinds of retransmittable frame records kept with each sent packet.
_K_STREAM = 0
_K_RESET = 1
_K_STOP = 2
_K_MAX_DATA = 3
_K_MAX_STREAM_DATA = 4
_K_MAX_STREAMS = 5
_K_CALL_ME_MAYBE = 6
_K_ACK = 7
_K_PING = 8

# Largest encoding of a control frame (type + three 8-byte varints).
_CONTROL_FRAME_MAX = 25
# Smallest useful room for a STREAM frame: header (type, 8+8+2 varints) plus data.
_STREAM_FRAME_MIN = 32
# Below this much congestion room we stop building in-flight packets.
_MIN_PACKET_ROOM = 64
_MAX_STREAM_COUNT = 1 << 60


class ConnectionState(Enum):
    """OPEN carries streams; CLOSING re-sends our CLOSE for a while; CLOSED is final."""

    OPEN = 0
    CLOSING = 1
    CLOSED = 2


class Connection:
    """One reliable, multiplexed connection to one peer.

    Args:
        is_initiator: exactly one side of a peer pair passes True; it decides the
            stream-id parity (initiator: even, other side: odd).
        config: limits and tunables (``MuxConfig()`` by default).
        path: the path to send on until ``set_path``; without it the connection
            follows the path of the newest packet it receives.

    Nothing here raises on bad network input: ``receive_datagram`` turns it into a
    CLOSE with a protocol error code and a ``ConnectionClosed`` event. Local misuse
    raises ``StreamError`` subclasses or ``ConnectionClosedError``.
    """

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
        self._path = path
        self._path_pinned = path is not None
        if path is not None:
            self._recovery.on_path_change(path.reliable)
        # stream counts (cumulative, as in QUIC MAX_STREAMS)
        self._local_next_index = 0
        self._max_streams_remote = config.max_concurrent_streams
        self._peer_next_index = 0
        self._max_streams_local = config.max_concurrent_streams
        self._max_streams_pending = False
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
        self._credit_check: dict[int, None] = {}
        self._blocked_writers: dict[int, None] = {}
        self._probes_wanted = 0
        self._ping_pending = False
        self._call_me_maybe: tuple[bytes, ...] | None = None
        self._call_me_maybe_version = 0
        self._call_me_maybe_pending = False
        self._path_out: deque[tuple[Path, bytes]] = deque()
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

    # -- public state ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def config(self) -> MuxConfig:
        return self._config

    @property
    def path(self) -> Path | None:
        """The path new packets go out on."""
        return self._path

    @property
    def congestion_window(self) -> int:
        return self._recovery.cwnd

    @property
    def bytes_in_flight(self) -> int:
        return self._recovery.bytes_in_flight

    @property
    def probe_bytes_in_flight(self) -> int:
        return self._recovery.probe_bytes_in_flight

    @property
    def smoothed_rtt(self) -> float:
        return self._recovery.smoothed_rtt

    @property
    def sent_packets_tracked(self) -> int:
        return len(self._recovery.sent)

    @property
    def ack_ranges_tracked(self) -> int:
        return len(self._received_pns)

    @property
    def send_buffered(self) -> int:
        """Bytes held in send buffers (unsent or unacked), all streams."""
        return self._send_buffered

    def stream_ids(self) -> list[int]:
        """Streams the core still keeps state for."""
        return list(self._streams)

    def receive_buffered(self, stream_id: int) -> int:
        """Bytes held in ``stream_id``'s reassembly buffer (0 if unknown)."""
        stream = self._streams.get(stream_id)
        return len(stream.recv_buf) if stream else 0

    def receive_credit(self, stream_id: int) -> int:
        """How many bytes beyond what the app read the peer may send on the stream."""
        stream = self._streams.get(stream_id)
        return stream.max_data_local - stream.read_offset if stream else 0

    # -- paths ------------------------------------------------------------------------

    def set_path(self, path: Path) -> None:
        """Send on ``path`` from now on (the overlay picked relay or a direct endpoint).

        Packet numbers continue; congestion and RTT state start over when the path
        changes; in-flight packets stay tracked and are retransmitted if lost.
        """
        self._path_pinned = True
        self._switch_path(path)

    def _switch_path(self, path: Path) -> None:
        if path == self._path and self._path is not None and path.reliable == self._path.reliable:
            self._path = path
            return
        self._path = path
        self._recovery.on_path_change(path.reliable)

    def send_path_probe(self, path: Path, challenge: bytes, now: float) -> None:
        """Queue a PATH_PROBE with an 8-byte ``challenge`` on ``path``.

        The answer arrives as a ``PathResponse`` event. Probes are not retransmitted;
        at most ``MAX_OUTSTANDING_PROBES`` are remembered (the oldest is forgotten).
        Raises ValueError if ``challenge`` is not 8 bytes.
        """
        if len(challenge) != 8:
            raise ValueError("a path challenge is 8 bytes")
        self._check_open()
        if len(self._outstanding_probes) >= MAX_OUTSTANDING_PROBES:
            del self._outstanding_probes[next(iter(self._outstanding_probes))]
        self._outstanding_probes[bytes(challenge)] = (path, now)
        self._path_out.append((path, bytes([FrameType.PATH_PROBE]) + bytes(challenge)))

    def send_call_me_maybe(self, endpoints: Sequence[bytes]) -> None:
        """Tell the peer our candidate endpoints (reliably; only the latest set counts).

        Raises ValueError beyond ``MAX_CALL_ME_MAYBE_ENDPOINTS`` endpoints or an
        endpoint longer than ``MAX_ENDPOINT_LENGTH`` bytes.
        """
        if len(endpoints) > MAX_CALL_ME_MAYBE_ENDPOINTS:
            raise ValueError(f"at most {MAX_CALL_ME_MAYBE_ENDPOINTS} endpoints")
        if any(len(e) > MAX_ENDPOINT_LENGTH for e in endpoints):
            raise ValueError(f"an endpoint is at most {MAX_ENDPOINT_LENGTH} bytes")
        self._check_open()
        self._call_me_maybe = tuple(bytes(e) for e in endpoints)
        self._call_me_maybe_version += 1
        self._call_me_maybe_pending = True

    def send_ping(self) -> None:
        """Queue an ack-eliciting PING (keepalive, or to sample the RTT)."""
        self._check_open()
        self._ping_pending = True

    # -- streams ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is not ConnectionState.OPEN:
            code, reason = self._close_frame or (ErrorCode.NO_ERROR, "closed")
            raise ConnectionClosedError(code, reason)

    def can_open_stream(self) -> bool:
        return self._local_next_index < self._max_streams_remote

    def open_stream(self, service: str) -> int:
        """Open a stream to ``service`` (sent ahead of the data); returns its id.

        Raises StreamLimitError when the peer's MAX_STREAMS is used up (wait for
        ``StreamsAvailable``), ValueError for a service name over 255 UTF-8 bytes,
        ConnectionClosedError once the connection is closing.
        """
        self._check_open()
        encoded = service.encode()
        if len(encoded) > MAX_SERVICE_LENGTH:
            raise ValueError(f"service name longer than {MAX_SERVICE_LENGTH} bytes")
        if not self.can_open_stream():
            raise StreamLimitError(
                f"peer allows {self._max_streams_remote} streams; all are in use"
            )
        stream_id = (self._local_next_index << 1) | self._side
        self._local_next_index += 1
        stream = Stream(
            stream_id,
            True,
            self._config.initial_stream_window,
            self._config.initial_stream_window,
        )
        self._streams[stream_id] = stream
        header = bytearray()
        push_varint(header, len(encoded))
        header += encoded
        stream.send_buf += header
        self._send_buffered += len(header)
        self._sendable[stream_id] = None
        return stream_id

    def _stream(self, stream_id: int) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamError(f"stream {stream_id} is not open")
        return stream

    def stream_send_capacity(self, stream_id: int) -> int:
        """How many bytes ``send_stream_data`` would accept now."""
        stream = self._stream(stream_id)
        return max(
            0,
            min(
                self._config.stream_send_buffer - len(stream.send_buf),
                self._config.connection_send_buffer - self._send_buffered,
            ),
        )

    def send_stream_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> int:
        """Buffer ``data`` for sending; returns how many bytes were accepted.

        Accepts no more than the send-buffer room (bounded memory); the rest must be
        offered again after a ``StreamWritable`` event. ``end_stream`` sends FIN once
        all of ``data`` was accepted. Raises StreamResetError if the send direction
        was reset (our ``reset_stream`` or the peer's STOP_SENDING), StreamError after
        FIN or on an unknown stream, ConnectionClosedError once closing.
        """
        self._check_open()
        stream = self._stream(stream_id)
        if stream.send_reset_code is not None:
            raise StreamResetError(
                stream_id,
                stream.send_reset_code,
                f"stream {stream_id}: sending was reset (code {stream.send_reset_code})",
            )
        if stream.fin_requested:
            raise StreamError(f"stream {stream_id}: write after end of stream")
        accepted = min(len(data), self.stream_send_capacity(stream_id))
        if accepted:
            stream.send_buf += data[:accepted] if accepted < len(data) else data
            self._send_buffered += accepted
            self._sendable[stream_id] = None
        if accepted < len(data):
            stream.writer_blocked = True
            self._blocked_writers[stream_id] = None
        elif end_stream:
            stream.fin_requested = True
            self._sendable[stream_id] = None
        return accepted

    def send_eof(self, stream_id: int) -> None:
        """Half-close: FIN after the buffered bytes. Idempotent; see send_stream_data."""
        stream = self._stream(stream_id)
        if stream.fin_requested and stream.send_reset_code is None:
            return
        self.send_stream_data(stream_id, b"", end_stream=True)

    def read_stream(self, stream_id: int, max_bytes: int) -> tuple[bytes, bool]:
        """Take up to ``max_bytes`` in-order bytes; returns (data, end_of_stream).

        Reading is what grows the peer's credit (backpressure). ``(b"", False)``
        means nothing is ready yet (a ``StreamReadable`` event will follow). Raises
        StreamResetError if the peer reset the stream, StreamError for an unknown
        stream (e.g. already fully closed).
        """
        stream = self._stream(stream_id)
        if stream.recv_reset_code is not None:
            raise StreamResetError(
                stream_id,
                stream.recv_reset_code,
                f"stream {stream_id}: peer reset it (code {stream.recv_reset_code})",
            )
        stream.readable_notified = False
        data = stream.read(max_bytes)
        if data:
            self._conn_consumed += len(data)
            self._credit_check[stream_id] = None
        eof = stream.at_eof()
        if eof:
            self._maybe_remove(stream)
        return data, eof

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abandon sending: RESET_STREAM with ``error_code``; unsent bytes are dropped.

        No-op if everything was already delivered and acknowledged.
        """
        stream = self._stream(stream_id)
        self._reset_send_side(stream, error_code)

    def _reset_send_side(self, stream: Stream, error_code: int) -> None:
        if stream.send_reset_code is not None or stream.send_terminal():
            return
        stream.send_reset_code = error_code
        stream.send_reset_final = stream.next_new
        stream.send_reset_state = ControlState.PENDING
        self._send_buffered -= len(stream.send_buf)
        stream.send_buf = bytearray()
        stream.lost = RangeSet()
        stream.fin_lost = False
        self._sendable.pop(stream.stream_id, None)
        self._control[stream.stream_id] = None

    def stop_sending(self, stream_id: int, error_code: int) -> None:
        """Stop reading: STOP_SENDING asks the peer to reset; unread bytes are dropped."""
        stream = self._stream(stream_id)
        if stream.recv_terminal() or stream.stop_code is not None:
            return
        stream.stop_code = error_code
        stream.stop_state = ControlState.PENDING
        self._conn_consumed += stream.discard_receive_buffer()
        self._credit_check[stream_id] = None
        self._control[stream_id] = None
        self._maybe_remove(stream)

    def _maybe_remove(self, stream: Stream) -> None:
        if not (stream.send_terminal() and stream.recv_terminal()):
            return
        stream_id = stream.stream_id
        if self._streams.pop(stream_id, None) is None:
            return
        self._sendable.pop(stream_id, None)
        self._control.pop(stream_id, None)
        self._credit_check.pop(stream_id, None)
        self._blocked_writers.pop(stream_id, None)
        self._send_buffered -= len(stream.send_buf)
        if (stream_id & 1) != self._side:
            # A peer stream ended: let the peer open another (RFC 9000 section 4.6).
            self._max_streams_local += 1
            self._max_streams_pending = True

    # -- closing --------------------------------------------------------------------

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection with a CLOSE frame; emits ``ConnectionClosed``.

        Idempotent. Streams die with it (the peer sees ConnectionClosed too).
        """
        if self._state is not ConnectionState.OPEN:
            return
        self._enter_closing(error_code, reason, by_peer=False)

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

    # -- events and timers ------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def _touch(self, now: float) -> None:
        if self._started_at is None:
            self._started_at = now
            self._recovery.time_of_last_ack_eliciting = now

    def get_timer(self) -> float | None:
        """The ``now`` at which ``handle_timer`` must be called next (None: no timer)."""
        if self._state is ConnectionState.CLOSED:
            return None
        if self._state is ConnectionState.CLOSING:
            return self._close_deadline
        timers: list[float] = []
        config = self._config
        idle_base = self._last_received if self._last_received is not None else self._started_at
        if idle_base is not None:
            timers.append(idle_base + config.idle_timeout)
            if config.keepalive_interval is not None and not self._ping_pending:
                timers.append(self._recovery.time_of_last_ack_eliciting + config.keepalive_interval)
        loss = self._recovery.loss_detection_timer()
        if loss is not None:
            timers.append(loss)
        if self._ack_eliciting_unacked and self._ack_deadline is not None:
            timers.append(self._ack_deadline)
        if self._pacing_until is not None:
            timers.append(self._pacing_until)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Run whatever timers are due at ``now``: loss/PTO, idle, keepalive, closing."""
        self._touch(now)
        if self._state is ConnectionState.CLOSED:
            return
        if self._state is ConnectionState.CLOSING:
            if self._close_deadline is not None and now >= self._close_deadline:
                self._state = ConnectionState.CLOSED
            return
        config = self._config
        idle_base = self._last_received if self._last_received is not None else self._started_at
        if idle_base is not None and now >= idle_base + config.idle_timeout:
            self._enter_closed_silently(ErrorCode.IDLE_TIMEOUT, "idle timeout")
            return
        if (
            config.keepalive_interval is not None
            and now >= self._recovery.time_of_last_ack_eliciting + config.keepalive_interval
        ):
            self._ping_pending = True
        if self._pacing_until is not None and now >= self._pacing_until:
            self._pacing_until = None
        timer = self._recovery.loss_detection_timer()
        if timer is not None and now >= timer:
            lost, probe = self._recovery.on_loss_detection_timeout(now, self._path)
            self._on_lost(lost)
            if probe:
                self._probes_wanted = 2
                self._requeue_oldest_for_probe()

    def _requeue_oldest_for_probe(self) -> None:
        # A PTO probe carries the oldest unacked data again (RFC 9002 section 6.2.4)
        # without declaring it lost, so a lost tail is repaired even when packet- and
        # time-threshold detection cannot fire.
        count = 0
        for packet in self._recovery.sent.values():
            if not packet.ack_eliciting:
                continue
            for record in packet.frames:
                if record[0] == _K_STREAM:
                    stream = self._streams.get(record[1])
                    if stream is not None:
                        stream.on_data_lost(record[2], record[3], record[4])
                        if stream.has_retransmit():
                            self._sendable[stream.stream_id] = None
            count += 1
            if count >= 2:
                break

    # -- receiving --------------------------------------------------------------------

    def receive_datagram(self, data: bytes, path: Path, now: float) -> None:
        """Process one datagram payload that arrived on ``path`` at ``now``.

        Never raises for bad input: garbage closes the connection with a protocol
        error CLOSE (and a ``ConnectionClosed`` event).
        """
        self._touch(now)
        if self._state is ConnectionState.CLOSED:
            return
        if self._state is ConnectionState.CLOSING:
            # Answer stray packets with our CLOSE again (RFC 9000 section 10.2.1).
            self._close_send_pending = True
            return
        try:
            self._receive(data, path, now)
        except RemoteProtocolError as exc:
            self._enter_closing(exc.error_code, exc.reason, by_peer=False)

    def _receive(self, data: bytes, path: Path, now: float) -> None:
        reader = Reader(data)
        pn = reader.varint("packet number")
        if pn < self._ack_floor or self._received_pns.contains(pn):
            return  # duplicate: every frame is idempotent, nothing to do
        if reader.at_end():
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"packet {pn} has no frames")
        ack_eliciting = False
        not_probe_only = False
        while not reader.at_end():
            frame_start = reader.pos
            ftype = reader.varint("frame type")
            if FrameType.STREAM <= ftype <= 0x0F:
                self._on_stream_frame(reader, ftype)
                ack_eliciting = True
            elif ftype == FrameType.ACK:
                self._on_ack_frame(reader, now)
                not_probe_only = True
            elif ftype == FrameType.PADDING:
                pass
            elif ftype == FrameType.PING:
                ack_eliciting = True
            elif ftype == FrameType.MAX_DATA:
                value = reader.varint("MAX_DATA")
                if value > self._max_data_remote:
                    self._max_data_remote = value
                    for stream_id, stream in self._streams.items():
                        if stream.next_new < stream.send_end:
                            self._sendable[stream_id] = None
                ack_eliciting = True
            elif ftype == FrameType.MAX_STREAM_DATA:
                self._on_max_stream_data(reader)
                ack_eliciting = True
            elif ftype == FrameType.MAX_STREAMS:
                value = reader.varint("MAX_STREAMS")
                if value > _MAX_STREAM_COUNT:
                    raise RemoteProtocolError(
                        ErrorCode.FRAME_ENCODING_ERROR, f"MAX_STREAMS {value} exceeds 2**60"
                    )
                if value > self._max_streams_remote:
                    self._max_streams_remote = value
                    self._events.append(StreamsAvailable(value))
                ack_eliciting = True
            elif ftype == FrameType.DATA_BLOCKED:
                reader.varint("DATA_BLOCKED")
                ack_eliciting = True
            elif ftype == FrameType.STREAM_DATA_BLOCKED:
                self._stream_for_frame(reader.varint("STREAM_DATA_BLOCKED stream id"))
                reader.varint("STREAM_DATA_BLOCKED limit")
                ack_eliciting = True
            elif ftype == FrameType.RESET_STREAM:
                self._on_reset_stream(reader)
                ack_eliciting = True
            elif ftype == FrameType.STOP_SENDING:
                self._on_stop_sending(reader)
                ack_eliciting = True
            elif ftype == FrameType.CLOSE:
                code = reader.varint("CLOSE error code")
                length = reader.varint("CLOSE reason length")
                reason = bytes(reader.take(length, "CLOSE reason")).decode(errors="replace")
                self._enter_closing(code, reason, by_peer=True)
                return
            elif ftype == FrameType.PATH_PROBE:
                challenge = bytes(reader.take(8, "PATH_PROBE challenge"))
                response = bytearray([FrameType.PATH_RESPONSE])
                response += challenge
                push_varint(response, len(path.address))
                response += path.address
                if len(self._path_out) < MAX_OUTSTANDING_PROBES:
                    self._path_out.append((path, bytes(response)))
            elif ftype == FrameType.PATH_RESPONSE:
                challenge = bytes(reader.take(8, "PATH_RESPONSE challenge"))
                length = reader.varint("PATH_RESPONSE address length")
                if length > MAX_ENDPOINT_LENGTH:
                    raise RemoteProtocolError(
                        ErrorCode.FRAME_ENCODING_ERROR,
                        f"PATH_RESPONSE address of {length} bytes (max {MAX_ENDPOINT_LENGTH})",
                    )
                observed = bytes(reader.take(length, "PATH_RESPONSE address"))
                probe = self._outstanding_probes.pop(challenge, None)
                if probe is not None:
                    self._events.append(PathResponse(probe[0], challenge, observed, now - probe[1]))
            elif ftype == FrameType.CALL_ME_MAYBE:
                self._on_call_me_maybe(reader)
                ack_eliciting = True
            else:
                raise RemoteProtocolError(
                    ErrorCode.FRAME_ENCODING_ERROR,
                    f"unknown frame type {ftype:#x} at byte {frame_start} of packet {pn}",
                )
            if ack_eliciting:
                not_probe_only = True
        self._on_packet_received(pn, path, now, ack_eliciting, not_probe_only)

    def _on_packet_received(
        self, pn: int, path: Path, now: float, ack_eliciting: bool, not_probe_only: bool
    ) -> None:
        self._last_received = now
        received = self._received_pns
        received.add(pn, pn + 1)
        received.drop_oldest(self._config.max_ack_ranges)
        if pn > self._largest_received:
            if self._largest_received >= 0 and pn != self._largest_received + 1:
                self._ack_immediate = True  # a gap: tell the sender at once
            self._largest_received = pn
            self._largest_received_time = now
            if not_probe_only and not self._path_pinned and path != self._path:
                self._switch_path(path)
        else:
            self._ack_immediate = True  # filled a hole
        if self._path is None:
            self._switch_path(path)
        if ack_eliciting:
            self._ack_eliciting_unacked += 1
            if self._ack_deadline is None:
                self._ack_deadline = now + self._config.max_ack_delay

    def _stream_for_frame(self, stream_id: int) -> Stream | None:
        """The stream a frame names; None if it existed and is gone; creates peer streams."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        index = stream_id >> 1
        if (stream_id & 1) == self._side:
            if index < self._local_next_index:
                return None
            raise RemoteProtocolError(
                ErrorCode.STREAM_STATE_ERROR, f"frame for stream {stream_id} we never opened"
            )
        if index < self._peer_next_index:
            return None
        if index >= self._max_streams_local:
            raise RemoteProtocolError(
                ErrorCode.STREAM_LIMIT_ERROR,
                f"stream {stream_id} beyond the {self._max_streams_local} streams allowed",
            )
        window = self._config.initial_stream_window
        # Opening stream n implicitly opens every lower one (RFC 9000 section 3.2).
        for new_index in range(self._peer_next_index, index + 1):
            new_id = (new_index << 1) | (1 - self._side)
            self._streams[new_id] = Stream(new_id, False, window, window)
        self._peer_next_index = index + 1
        return self._streams[stream_id]

    def _on_stream_frame(self, reader: Reader, ftype: int) -> None:
        stream_id = reader.varint("STREAM stream id")
        offset = reader.varint("STREAM offset") if ftype & FrameType.STREAM_OFF else 0
        if ftype & FrameType.STREAM_LEN:
            data = reader.take(reader.varint("STREAM length"), "STREAM data")
        else:
            data = reader.rest()
        if offset + len(data) > MAX_VARINT:
            raise RemoteProtocolError(
                ErrorCode.FRAME_ENCODING_ERROR, f"stream {stream_id}: offset beyond 2**62"
            )
        stream = self._stream_for_frame(stream_id)
        if stream is None:
            return
        grown = stream.receive(offset, data, bool(ftype & FrameType.STREAM_FIN))
        if grown:
            self._conn_received += grown
            if self._conn_received > self._max_data_local:
                raise RemoteProtocolError(
                    ErrorCode.FLOW_CONTROL_ERROR,
                    f"connection data {self._conn_received} beyond credit {self._max_data_local}",
                )
            if stream.stop_code is not None or stream.recv_reset_code is not None:
                # Discarded bytes still count, and their credit comes straight back.
                self._conn_consumed += grown
                stream.read_offset = stream.highest_received
                self._credit_check[stream_id] = None
        if stream.header_pending:
            self._parse_stream_header(stream)
        self._notify_readable(stream)
        if stream.stop_code is not None:
            self._maybe_remove(stream)

    def _parse_stream_header(self, stream: Stream) -> None:
        readable = stream.readable_bytes()
        if readable:
            buf = stream.recv_buf
            size = buf[0] >> 6
            prefix = 1 << size
            if readable >= prefix:
                length = int.from_bytes(buf[:prefix], "big") & ((1 << (8 * prefix - 2)) - 1)
                if length > MAX_SERVICE_LENGTH:
                    raise RemoteProtocolError(
                        ErrorCode.PROTOCOL_VIOLATION,
                        f"stream {stream.stream_id}: service name of {length} bytes",
                    )
                if readable >= prefix + length:
                    raw = stream.read(prefix + length)[prefix:]
                    self._conn_consumed += prefix + length
                    self._credit_check[stream.stream_id] = None
                    try:
                        service = raw.decode()
                    except UnicodeDecodeError:
                        raise RemoteProtocolError(
                            ErrorCode.PROTOCOL_VIOLATION,
                            f"stream {stream.stream_id}: service name is not UTF-8",
                        ) from None
                    stream.header_pending = False
                    self._events.append(StreamOpened(stream.stream_id, service))
                    return
        if (
            stream.final_size is not None
            and stream.read_offset + readable == stream.final_size
            and stream.stop_code is None
            and stream.recv_reset_code is None
        ):
            raise RemoteProtocolError(
                ErrorCode.PROTOCOL_VIOLATION,
                f"stream {stream.stream_id} ended inside its open header",
            )

    def _notify_readable(self, stream: Stream) -> None:
        if stream.readable_notified or stream.header_pending:
            return
        if stream.stop_code is not None or stream.recv_reset_code is not None:
            return
        if stream.readable_bytes() or stream.at_eof():
            stream.readable_notified = True
            self._events.append(StreamReadable(stream.stream_id))

    def _on_max_stream_data(self, reader: Reader) -> None:
        stream_id = reader.varint("MAX_STREAM_DATA stream id")
        value = reader.varint("MAX_STREAM_DATA limit")
        stream = self._stream_for_frame(stream_id)
        if stream is not None and value > stream.max_data_remote:
            stream.max_data_remote = value
            if stream.next_new < stream.send_end:
                self._sendable[stream_id] = None

    def _on_reset_stream(self, reader: Reader) -> None:
        stream_id = reader.varint("RESET_STREAM stream id")
        code = reader.varint("RESET_STREAM error code")
        final = reader.varint("RESET_STREAM final size")
        stream = self._stream_for_frame(stream_id)
        if stream is None or stream.recv_reset_code is not None:
            return
        if final < stream.highest_received or (
            stream.final_size is not None and final != stream.final_size
        ):
            raise RemoteProtocolError(
                ErrorCode.FINAL_SIZE_ERROR,
                f"stream {stream_id}: reset with final size {final}, "
                f"received up to {stream.highest_received}",
            )
        if final > stream.max_data_local:
            raise RemoteProtocolError(
                ErrorCode.FLOW_CONTROL_ERROR,
                f"stream {stream_id}: final size {final} beyond credit {stream.max_data_local}",
            )
        grown = final - stream.highest_received
        self._conn_received += grown
        if self._conn_received > self._max_data_local:
            raise RemoteProtocolError(
                ErrorCode.FLOW_CONTROL_ERROR,
                f"connection data {self._conn_received} beyond credit {self._max_data_local}",
            )
        stream.highest_received = final
        stream.final_size = final
        was_announced = not stream.header_pending
        stopped = stream.stop_code is not None
        stream.recv_reset_code = code
        self._conn_consumed += stream.discard_receive_buffer()
        self._credit_check[stream_id] = None
        if was_announced and not stopped:
            self._events.append(StreamReset(stream_id, code))
        if not was_announced:
            # The application never saw this stream: close our side too.
            self._reset_send_side(stream, ErrorCode.NO_ERROR)
        self._maybe_remove(stream)

    def _on_stop_sending(self, reader: Reader) -> None:
        stream_id = reader.varint("STOP_SENDING stream id")
        code = reader.varint("STOP_SENDING error code")
        stream = self._stream_for_frame(stream_id)
        if stream is None or stream.send_reset_code is not None or stream.send_terminal():
            return
        # RFC 9000 section 3.5: answer STOP_SENDING with RESET_STREAM.
        self._reset_send_side(stream, code)
        if not stream.header_pending:
            self._events.append(StopSending(stream_id, code))
        self._blocked_writers.pop(stream_id, None)

    def _on_call_me_maybe(self, reader: Reader) -> None:
        count = reader.varint("CALL_ME_MAYBE count")
        if count > MAX_CALL_ME_MAYBE_ENDPOINTS:
            raise RemoteProtocolError(
                ErrorCode.FRAME_ENCODING_ERROR,
                f"CALL_ME_MAYBE with {count} endpoints (max {MAX_CALL_ME_MAYBE_ENDPOINTS})",
            )
        endpoints = []
        for _ in range(count):
            length = reader.varint("CALL_ME_MAYBE endpoint length")
            if length > MAX_ENDPOINT_LENGTH:
                raise RemoteProtocolError(
                    ErrorCode.FRAME_ENCODING_ERROR,
                    f"CALL_ME_MAYBE endpoint of {length} bytes (max {MAX_ENDPOINT_LENGTH})",
                )
            endpoints.append(bytes(reader.take(length, "CALL_ME_MAYBE endpoint")))
        self._events.append(CallMeMaybe(tuple(endpoints)))

    def _on_ack_frame(self, reader: Reader, now: float) -> None:
        largest = reader.varint("ACK largest")
        delay_us = reader.varint("ACK delay")
        count = reader.varint("ACK range count")
        first = reader.varint("ACK first range")
        if largest >= self._next_pn:
            raise RemoteProtocolError(
                ErrorCode.PROTOCOL_VIOLATION, f"ACK of packet {largest} that was never sent"
            )
        smallest = largest - first
        if smallest < 0:
            raise RemoteProtocolError(ErrorCode.FRAME_ENCODING_ERROR, "ACK range below zero")
        ranges = [(smallest, largest)]
        for _ in range(count):
            gap = reader.varint("ACK gap")
            length = reader.varint("ACK range length")
            high = smallest - gap - 2
            low = high - length
            if low < 0:
                raise RemoteProtocolError(ErrorCode.FRAME_ENCODING_ERROR, "ACK range below zero")
            ranges.append((low, high))
            smallest = low
        acked, lost = self._recovery.on_ack_received(
            reversed(ranges), largest, delay_us / 1e6, now, self._path
        )
        for packet in acked:
            self._on_packet_acked(packet)
        self._on_lost(lost)

    def _on_packet_acked(self, packet: SentPacket) -> None:
        released = 0
        streams = self._streams
        for kind, stream_id, offset, length, fin in packet.frames:
            if kind == _K_STREAM:
                stream = streams.get(stream_id)
                if stream is not None:
                    freed = stream.on_data_acked(offset, length, fin)
                    released += freed
                    if stream.fin_acked and stream.send_terminal():
                        self._maybe_remove(stream)
            elif kind == _K_RESET:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.send_reset_state = ControlState.ACKED
                    self._maybe_remove(stream)
            elif kind == _K_STOP:
                stream = streams.get(stream_id)
                if stream is not None and stream.stop_state is ControlState.SENT:
                    stream.stop_state = ControlState.ACKED
            elif kind == _K_ACK and offset > self._ack_floor:
                # The peer saw our ACK up to `offset`: stop repeating older ranges.
                self._ack_floor = offset
                self._received_pns.trim_below(offset)
        if released:
            self._send_buffered -= released
            if self._blocked_writers:
                for stream_id in self._blocked_writers:
                    stream = streams.get(stream_id)
                    if stream is not None and stream.writer_blocked:
                        stream.writer_blocked = False
                        self._events.append(StreamWritable(stream_id))
                self._blocked_writers.clear()

    def _on_lost(self, lost: list[SentPacket]) -> None:
        streams = self._streams
        for packet in lost:
            for kind, stream_id, offset, length, fin in packet.frames:
                if kind == _K_STREAM:
                    stream = streams.get(stream_id)
                    if stream is not None:
                        stream.on_data_lost(offset, length, fin)
                        if stream.has_retransmit():
                            self._sendable[stream_id] = None
                elif kind == _K_RESET:
                    stream = streams.get(stream_id)
                    if stream is not None and stream.send_reset_state is ControlState.SENT:
                        stream.send_reset_state = ControlState.PENDING
                        self._control[stream_id] = None
                elif kind == _K_STOP:
                    stream = streams.get(stream_id)
                    if (
                        stream is not None
                        and stream.stop_state is ControlState.SENT
                        and not stream.recv_terminal()
                    ):
                        stream.stop_state = ControlState.PENDING
                        self._control[stream_id] = None
                elif kind == _K_MAX_DATA:
                    self._max_data_pending = True
                elif kind == _K_MAX_STREAM_DATA:
                    stream = streams.get(stream_id)
                    if stream is not None and stream.final_size is None:
                        stream.max_data_pending = True
                        self._control[stream_id] = None
                elif kind == _K_MAX_STREAMS:
                    self._max_streams_pending = True
                elif kind == _K_CALL_ME_MAYBE and offset == self._call_me_maybe_version:
                    self._call_me_maybe_pending = True

    # -- sending ----------------------------------------------------------------------

    def _update_credit(self, now: float) -> None:
        """Extend flow-control credit once 25% of a window was read (SPECS.md "mux")."""
        config = self._config
        srtt = self._recovery.smoothed_rtt
        for stream_id in self._credit_check:
            stream = self._streams.get(stream_id)
            if stream is None or stream.final_size is not None:
                continue
            stream.needs_credit_check = False
            if stream.max_data_local - stream.read_offset > stream.window * 0.75:
                continue
            updated = stream.window_updated_at
            if updated is not None and now - updated < config.autotune_rtts * srtt:
                # Consumed a window within a few RTTs: the window limits us, grow it.
                stream.window = min(stream.window * 2, config.max_stream_window)
                wanted = int(stream.window * config.connection_window_factor)
                self._conn_window = min(max(self._conn_window, wanted), self._conn_max_window)
            stream.window_updated_at = now
            stream.max_data_local = stream.read_offset + stream.window
            stream.max_data_pending = True
            self._control[stream_id] = None
        self._credit_check.clear()
        if self._max_data_local - self._conn_consumed <= self._conn_window * 0.75:
            updated = self._conn_window_updated_at
            if updated is not None and now - updated < config.autotune_rtts * srtt:
                self._conn_window = min(self._conn_window * 2, self._conn_max_window)
            self._conn_window_updated_at = now
            self._max_data_local = self._conn_consumed + self._conn_window
            self._max_data_pending = True

    def _ack_due(self, now: float) -> bool:
        if not self._ack_eliciting_unacked:
            return False
        return (
            self._ack_immediate
            or self._ack_eliciting_unacked >= self._config.ack_eliciting_threshold
            or (self._ack_deadline is not None and now >= self._ack_deadline)
        )

    def _write_ack(self, buf: bytearray, now: float) -> int:
        ranges = self._received_pns
        high_start, high_end = ranges[-1]
        largest = high_end - 1
        buf.append(FrameType.ACK)
        push_varint(buf, largest)
        push_varint(buf, int(max(0.0, now - self._largest_received_time) * 1e6))
        push_varint(buf, len(ranges) - 1)
        push_varint(buf, largest - high_start)
        smallest = high_start
        for index in range(len(ranges) - 2, -1, -1):
            start, end = ranges[index]
            push_varint(buf, smallest - (end - 1) - 2)
            push_varint(buf, end - 1 - start)
            smallest = start
        self._ack_eliciting_unacked = 0
        self._ack_immediate = False
        self._ack_deadline = None
        return largest

    def _has_stream_work(self) -> bool:
        conn_credit = self._max_data_remote - self._data_sent
        for stream_id in self._sendable:
            stream = self._streams.get(stream_id)
            if stream is None or stream.send_reset_code is not None:
                continue
            if stream.lost or stream.fin_lost:
                return True
            if stream.fin_requested and not stream.fin_sent and stream.next_new == stream.send_end:
                return True
            if (
                stream.next_new < stream.send_end
                and stream.next_new < stream.max_data_remote
                and conn_credit > 0
            ):
                return True
        return False

    def _has_control_work(self) -> bool:
        return bool(
            self._control
            or self._max_data_pending
            or self._max_streams_pending
            or self._ping_pending
            or self._call_me_maybe_pending
            or self._data_blocked_pending
        )

    def datagrams_to_send(self, now: float, max_datagrams: int = 64) -> list[tuple[bytes, Path]]:
        """Up to ``max_datagrams`` payloads to send now, each with the path to send on.

        Obeys the congestion window and pacing (PTO probes excepted); afterwards
        ``get_timer`` says when to come back.
        """
        self._touch(now)
        out: list[tuple[bytes, Path]] = []
        path = self._path
        if self._state is ConnectionState.CLOSED or path is None:
            return out
        if self._state is ConnectionState.CLOSING:
            if self._close_send_pending and self._close_frame is not None:
                self._close_send_pending = False
                out.append((self._build_close_packet(), path))
                if self._close_deadline is None:
                    multiplier = self._config.close_pto_multiplier
                    self._close_deadline = now + multiplier * self._recovery.pto_interval()
            return out
        while self._path_out and len(out) < max_datagrams:
            probe_path, frame = self._path_out.popleft()
            buf = bytearray()
            push_varint(buf, self._next_pn)
            self._next_pn += 1
            buf += frame
            out.append((bytes(buf), probe_path))
        self._update_credit(now)
        recovery = self._recovery
        self._pacing_until = None
        while len(out) < max_datagrams:
            probe = self._probes_wanted > 0
            if probe:
                room = self._mss
            else:
                room = min(self._mss, recovery.congestion_room())
                if room >= _MIN_PACKET_ROOM and (
                    self._has_stream_work() or self._has_control_work()
                ):
                    pacing = recovery.pacing_delay(now)
                    if pacing is not None:
                        self._pacing_until = pacing
                        room = 0
            if room < _MIN_PACKET_ROOM:
                if self._ack_due(now):
                    buf = bytearray()
                    push_varint(buf, self._next_pn)
                    self._next_pn += 1
                    self._write_ack(buf, now)
                    out.append((bytes(buf), path))
                break
            packet = self._build_packet(now, path, room, probe)
            if packet is None:
                break
            out.append((packet, path))
            if probe:
                self._probes_wanted -= 1
        return out

    def _build_close_packet(self) -> bytes:
        assert self._close_frame is not None
        code, reason = self._close_frame
        encoded = reason.encode()[:MAX_CLOSE_REASON]
        buf = bytearray()
        push_varint(buf, self._next_pn)
        self._next_pn += 1
        buf.append(FrameType.CLOSE)
        push_varint(buf, min(code, MAX_VARINT))
        push_varint(buf, len(encoded))
        buf += encoded
        return bytes(buf)

    def _build_packet(self, now: float, path: Path, limit: int, probe: bool) -> bytes | None:
        """One packet of at most ``limit`` bytes, or None if there is nothing to send."""
        pn = self._next_pn
        buf = bytearray()
        push_varint(buf, pn)
        header_size = len(buf)
        frames: list[FrameRecord] = []
        ack_due = self._ack_due(now)
        saved_ack = (self._ack_eliciting_unacked, self._ack_immediate, self._ack_deadline)
        if self._ack_eliciting_unacked and self._received_pns:
            largest = self._write_ack(buf, now)
            frames.append((_K_ACK, 0, largest, 0, False))
        ack_end = len(buf)
        self._write_control_frames(buf, limit, frames)
        if self._sendable and limit - len(buf) >= _STREAM_FRAME_MIN:
            self._write_stream_frames(buf, limit, frames)
        ack_eliciting = len(buf) > ack_end
        if probe and not ack_eliciting:
            buf.append(FrameType.PING)
            frames.append((_K_PING, 0, 0, 0, False))
            ack_eliciting = True
        if not ack_eliciting and (len(buf) == header_size or not ack_due):
            # An ACK alone is not worth a packet yet (RFC 9000 section 13.2.1).
            self._ack_eliciting_unacked, self._ack_immediate, self._ack_deadline = saved_ack
            return None
        self._next_pn = pn + 1
        data = bytes(buf)
        if ack_eliciting:
            self._recovery.on_packet_sent(
                SentPacket(pn, now, len(data), True, True, probe, path, frames)
            )
        return data

    def _write_control_frames(self, buf: bytearray, limit: int, frames: list[FrameRecord]) -> None:
        if limit - len(buf) < _CONTROL_FRAME_MAX:
            return
        if self._max_data_pending:
            self._max_data_pending = False
            buf.append(FrameType.MAX_DATA)
            push_varint(buf, self._max_data_local)
            frames.append((_K_MAX_DATA, 0, 0, 0, False))
        if self._max_streams_pending and limit - len(buf) >= _CONTROL_FRAME_MAX:
            self._max_streams_pending = False
            buf.append(FrameType.MAX_STREAMS)
            push_varint(buf, self._max_streams_local)
            frames.append((_K_MAX_STREAMS, 0, 0, 0, False))
        if self._data_blocked_pending and limit - len(buf) >= _CONTROL_FRAME_MAX:
            self._data_blocked_pending = False
            buf.append(FrameType.DATA_BLOCKED)
            push_varint(buf, self._max_data_remote)
        if self._ping_pending and limit - len(buf) >= _CONTROL_FRAME_MAX:
            self._ping_pending = False
            buf.append(FrameType.PING)
            frames.append((_K_PING, 0, 0, 0, False))
        if self._call_me_maybe_pending and self._call_me_maybe is not None:
            endpoints = self._call_me_maybe
            size = 2 + sum(1 + len(e) for e in endpoints)
            if limit - len(buf) >= size:
                self._call_me_maybe_pending = False
                buf.append(FrameType.CALL_ME_MAYBE)
                push_varint(buf, len(endpoints))
                for endpoint in endpoints:
                    push_varint(buf, len(endpoint))
                    buf += endpoint
                frames.append((_K_CALL_ME_MAYBE, 0, self._call_me_maybe_version, 0, False))
        if not self._control:
            return
        done: list[int] = []
        for stream_id in self._control:
            if limit - len(buf) < 3 * _CONTROL_FRAME_MAX:
                break
            done.append(stream_id)
            stream = self._streams.get(stream_id)
            if stream is None:
                continue
            if stream.send_reset_state is ControlState.PENDING:
                stream.send_reset_state = ControlState.SENT
                buf.append(FrameType.RESET_STREAM)
                push_varint(buf, stream_id)
                push_varint(buf, stream.send_reset_code or 0)
                push_varint(buf, stream.send_reset_final)
                frames.append((_K_RESET, stream_id, 0, 0, False))
            if stream.stop_state is ControlState.PENDING:
                stream.stop_state = ControlState.SENT
                buf.append(FrameType.STOP_SENDING)
                push_varint(buf, stream_id)
                push_varint(buf, stream.stop_code or 0)
                frames.append((_K_STOP, stream_id, 0, 0, False))
            if stream.max_data_pending:
                stream.max_data_pending = False
                buf.append(FrameType.MAX_STREAM_DATA)
                push_varint(buf, stream_id)
                push_varint(buf, stream.max_data_local)
                frames.append((_K_MAX_STREAM_DATA, stream_id, 0, 0, False))
        for stream_id in done:
            del self._control[stream_id]

    def _write_stream_frames(self, buf: bytearray, limit: int, frames: list[FrameRecord]) -> None:
        streams = self._streams
        sendable = self._sendable
        for stream_id in list(sendable):
            room = limit - len(buf)
            if room < _STREAM_FRAME_MIN:
                return
            stream = streams.get(stream_id)
            if stream is None or stream.send_reset_code is not None:
                del sendable[stream_id]
                continue
            id_size = varint_size(stream_id)
            base = stream.send_base
            # Retransmissions first: frames, not packets, are resent.
            while stream.lost and limit - len(buf) >= _STREAM_FRAME_MIN:
                offset = stream.lost[0][0]
                header = 1 + id_size + varint_size(offset) + varint_size(limit)
                start, end = stream.lost.pop_front(limit - len(buf) - header)
                fin = stream.fin_lost and end == stream.send_end and stream.fin_sent
                if fin:
                    stream.fin_lost = False
                self._put_stream_frame(
                    buf, stream_id, start, stream.send_buf, start - base, end - start, fin
                )
                frames.append((_K_STREAM, stream_id, start, end - start, fin))
            if stream.fin_lost and not stream.lost and limit - len(buf) >= _STREAM_FRAME_MIN:
                stream.fin_lost = False
                end = stream.send_end
                self._put_stream_frame(buf, stream_id, end, stream.send_buf, 0, 0, True)
                frames.append((_K_STREAM, stream_id, end, 0, True))
            # New data, within stream and connection credit.
            next_new = stream.next_new
            send_end = stream.send_end
            room = limit - len(buf)
            if room >= _STREAM_FRAME_MIN:
                credit_end = min(
                    send_end,
                    stream.max_data_remote,
                    next_new + self._max_data_remote - self._data_sent,
                )
                header = 1 + id_size + varint_size(next_new) + varint_size(limit)
                take = min(credit_end - next_new, room - header)
                if take > 0:
                    end = next_new + take
                    fin = stream.fin_requested and end == send_end
                    self._put_stream_frame(
                        buf, stream_id, next_new, stream.send_buf, next_new - base, take, fin
                    )
                    frames.append((_K_STREAM, stream_id, next_new, take, fin))
                    stream.next_new = end
                    self._data_sent += take
                    if fin:
                        stream.fin_sent = True
                elif stream.fin_requested and not stream.fin_sent and next_new == send_end:
                    stream.fin_sent = True
                    self._put_stream_frame(buf, stream_id, next_new, stream.send_buf, 0, 0, True)
                    frames.append((_K_STREAM, stream_id, next_new, 0, True))
                if stream.next_new < send_end:
                    if stream.next_new >= stream.max_data_remote:
                        if (
                            stream.send_blocked_at != stream.max_data_remote
                            and limit - len(buf) >= _CONTROL_FRAME_MAX
                        ):
                            stream.send_blocked_at = stream.max_data_remote
                            buf.append(FrameType.STREAM_DATA_BLOCKED)
                            push_varint(buf, stream_id)
                            push_varint(buf, stream.max_data_remote)
                    elif (
                        self._data_sent >= self._max_data_remote
                        and self._data_blocked_at != self._max_data_remote
                    ):
                        self._data_blocked_at = self._max_data_remote
                        self._data_blocked_pending = True
            del sendable[stream_id]
            more = (
                stream.lost
                or stream.fin_lost
                or (stream.next_new < stream.send_end and stream.next_new < stream.max_data_remote)
                or (stream.fin_requested and not stream.fin_sent)
            )
            if more:
                sendable[stream_id] = None  # to the back of the round robin

    @staticmethod
    def _put_stream_frame(
        buf: bytearray,
        stream_id: int,
        offset: int,
        source: bytearray,
        source_index: int,
        length: int,
        fin: bool,
    ) -> None:
        buf.append(0x0E | fin)  # STREAM with OFF and LEN always present
        push_varint(buf, stream_id)
        push_varint(buf, offset)
        push_varint(buf, length)
        if length:
            buf += memoryview(source)[source_index : source_index + length]
