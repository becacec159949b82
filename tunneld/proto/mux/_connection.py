"""The sans-IO mux connection: streams, flow control, ACKs and loss recovery.

Shape follows aioquic: ``receive_datagram(data, path, now)``, ``datagrams_to_send(now)``,
``get_timer()``, ``handle_timer(now)``, ``next_event()``. The wire format is in
``docs/mux.md``. The receiving half lives in ``_receive.py``, the sending half in
``_send.py``, shared state in ``_base.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunneld.proto.mux._base import ConnectionState
from tunneld.proto.mux._config import (
    MAX_CALL_ME_MAYBE_ENDPOINTS,
    MAX_ENDPOINT_LENGTH,
    MAX_OUTSTANDING_PROBES,
    MAX_PROBE_SIZE,
    MAX_SERVICE_LENGTH,
    MuxConfig,
)
from tunneld.proto.mux._errors import (
    ErrorCode,
    StreamError,
    StreamLimitError,
    StreamResetError,
)
from tunneld.proto.mux._events import (
    Event,
    Path,
)
from tunneld.proto.mux._receive import ReceiveMixin
from tunneld.proto.mux._send import SendMixin
from tunneld.proto.mux._stream import ControlState, Stream
from tunneld.proto.mux._wire import FrameType, push_varint

__all__ = ["Connection", "ConnectionState"]


class Connection(ReceiveMixin, SendMixin):
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
        return len(stream.recv_buf) + stream.recv_chunked if stream else 0

    def receive_credit(self, stream_id: int) -> int:
        """How many bytes beyond what the app read the peer may send on the stream."""
        stream = self._streams.get(stream_id)
        return stream.max_data_local - stream.read_offset if stream else 0

    def set_path(self, path: Path) -> None:
        """Send on ``path`` from now on (the overlay picked relay or a direct endpoint).

        Packet numbers continue; congestion and RTT state start over when the path
        changes; in-flight packets stay tracked and are retransmitted if lost.
        """
        self._path_pinned = True
        self._switch_path(path)

    def send_path_probe(self, path: Path, challenge: bytes, now: float, size: int = 0) -> None:
        """Queue a PATH_PROBE with an 8-byte ``challenge`` on ``path``.

        ``size`` pads the probe's packet with PADDING frames to exactly that many bytes
        (0: no padding): its answer then proves the path carries a datagram that big
        (path MTU discovery; a probe is never in flight, so its loss costs no window).
        The answer arrives as a ``PathResponse`` event. Probes are not retransmitted;
        at most ``MAX_OUTSTANDING_PROBES`` are remembered (the oldest is forgotten).
        Raises ValueError if ``challenge`` is not 8 bytes or ``size`` exceeds
        ``MAX_PROBE_SIZE``.
        """
        if len(challenge) != 8:
            raise ValueError("a path challenge is 8 bytes")
        if not 0 <= size <= MAX_PROBE_SIZE:
            raise ValueError(f"a probe is padded to at most {MAX_PROBE_SIZE} bytes")
        self._check_open()
        if len(self._outstanding_probes) >= MAX_OUTSTANDING_PROBES:
            del self._outstanding_probes[next(iter(self._outstanding_probes))]
        self._outstanding_probes[bytes(challenge)] = (path, now)
        if len(self._path_out) >= 2 * MAX_OUTSTANDING_PROBES:
            self._path_out.popleft()  # bounded: a probe nobody sent is worth little
        frame = bytes([FrameType.PATH_PROBE]) + bytes(challenge)
        self._path_out.append((path, frame, size))

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
        stream.send_buf.append(header)
        self._send_buffered += len(header)
        self._sendable[stream_id] = None
        return stream_id

    def stream_send_capacity(self, stream_id: int) -> int:
        """How many bytes ``send_stream_data`` would accept now."""
        stream = self._stream(stream_id)
        return max(
            0,
            min(
                self._config.stream_send_buffer - stream.send_buffered,
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
            stream.send_buf.append(data[:accepted] if accepted < len(data) else data)
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

    def set_no_delay(self, stream_id: int, enabled: bool = True) -> None:
        """Mark ``stream_id``'s writes as whole messages (or not; off by default).

        ``pending_streams_final`` then counts the stream as having nothing more to
        add, so a driver that holds packets back for more frames sends its data at
        once, as TCP_NODELAY does. For a stream that carries several request/response
        messages (no FIN after each). Raises StreamError for an unknown stream.
        """
        self._stream(stream_id).no_delay = enabled

    def stream_idle(self, stream_id: int) -> bool:
        """Whether ``stream_id`` could carry a new exchange as if fresh: known, open
        both ways (no FIN, reset or STOP_SENDING either way, its open header read),
        and nothing received that the application has not read. False otherwise."""
        stream = self._streams.get(stream_id)
        return (
            stream is not None
            and self._state is ConnectionState.OPEN
            and not stream.fin_requested
            and stream.send_reset_code is None
            and stream.final_size is None
            and stream.recv_reset_code is None
            and stream.stop_code is None
            and not stream.header_pending
            and not stream.recv_buf
            and not stream.recv_chunks
        )

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
            stream.eof_delivered = True
            self._maybe_remove(stream)
        return data, eof

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abandon sending: RESET_STREAM with ``error_code``; unsent bytes are dropped.

        No-op if everything was already delivered and acknowledged.
        """
        stream = self._stream(stream_id)
        self._reset_send_side(stream, error_code)

    def stop_sending(self, stream_id: int, error_code: int) -> None:
        """Stop reading: STOP_SENDING asks the peer to reset; unread bytes are dropped.

        If every byte up to the peer's FIN has arrived, nothing is sent. Otherwise the
        STOP_SENDING (and a FIN queued without data) may wait for the next packet,
        at most until the ACK we owe is due (``max_ack_delay``).
        """
        stream = self._stream(stream_id)
        if stream.recv_terminal() or stream.stop_code is not None:
            return
        stream.stop_code = error_code
        # Once every byte up to the peer's FIN is here, the peer has nothing left to
        # send or resend: STOP_SENDING would only cost it a RESET_STREAM in answer
        # (RFC 9000 section 3.5 sends it in the Recv and Size Known states only).
        if not stream.all_received():
            stream.stop_state = ControlState.PENDING
            self._lazy[stream_id] = None
            if (
                stream_id in self._sendable
                and stream.fin_requested
                and not stream.fin_sent
                and stream.next_new == stream.send_end
                and not stream.has_retransmit()
            ):
                # The FIN alone is left to send: it is closing news too.
                del self._sendable[stream_id]
        self._conn_consumed += stream.discard_receive_buffer()
        self._credit_check[stream_id] = None
        self._maybe_remove(stream)

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection with a CLOSE frame; emits ``ConnectionClosed``.

        Idempotent. Streams die with it (the peer sees ConnectionClosed too).
        """
        if self._state is not ConnectionState.OPEN:
            return
        self._enter_closing(error_code, reason, by_peer=False)

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The ``now`` at which ``handle_timer`` must be called next (None: no timer)."""
        if self._state is ConnectionState.CLOSED:
            return None
        if self._state is ConnectionState.CLOSING:
            return self._close_deadline
        # A running minimum, not a list and min(): drivers ask after every packet
        # and every read (about ten times per request/response).
        config = self._config
        earliest = math.inf
        idle_base = self._last_received if self._last_received is not None else self._started_at
        if idle_base is not None:
            earliest = idle_base + config.idle_timeout
            if config.keepalive_interval is not None and not self._ping_pending:
                keepalive = self._recovery.time_of_last_ack_eliciting + config.keepalive_interval
                if keepalive < earliest:
                    earliest = keepalive
        loss = self._recovery.loss_detection_timer()
        if loss is not None and loss < earliest:
            earliest = loss
        ack = self._ack_deadline
        if self._ack_eliciting_unacked and ack is not None and ack < earliest:
            earliest = ack
        pacing = self._pacing_until
        if pacing is not None and pacing < earliest:
            earliest = pacing
        return None if earliest == math.inf else earliest

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
