"""The receiving half of a mux connection: packet and frame parsing, ACK processing."""

from __future__ import annotations

from tunneld.proto.mux._base import (
    MAX_STREAM_COUNT,
    REC_ACK,
    REC_RESET,
    REC_STOP,
    REC_STREAM,
    ConnectionBase,
    ConnectionState,
)
from tunneld.proto.mux._config import (
    MAX_CALL_ME_MAYBE_ENDPOINTS,
    MAX_ENDPOINT_LENGTH,
    MAX_OUTSTANDING_PROBES,
    MAX_SERVICE_LENGTH,
)
from tunneld.proto.mux._errors import (
    ErrorCode,
    RemoteProtocolError,
)
from tunneld.proto.mux._events import (
    CallMeMaybe,
    Path,
    PathResponse,
    StopSending,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamWritable,
)
from tunneld.proto.mux._recovery import SentPacket
from tunneld.proto.mux._stream import ControlState, Stream
from tunneld.proto.mux._wire import MAX_VARINT, FrameType, Reader, push_varint

__all__ = ["ReceiveMixin"]

_STREAM = FrameType.STREAM
_PADDING = FrameType.PADDING
# Value bits of a QUIC varint by its encoded size (the top two bits give the size).
_VARINT_MASK = {1: 0x3F, 2: 0x3FFF, 4: 0x3FFFFFFF, 8: 0x3FFFFFFFFFFFFFFF}


class ReceiveMixin(ConnectionBase):
    """Turns datagrams into stream data, credit, acknowledgements and events."""

    def receive_datagram(self, data: bytes | memoryview, path: Path, now: float) -> None:
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

    def _receive(self, data: bytes | memoryview, path: Path, now: float) -> None:
        reader = Reader(data)
        pn = reader.varint("packet number")
        if pn < self._ack_floor or self._received_pns.contains(pn):
            return  # duplicate: every frame is idempotent, nothing to do
        if reader.at_end():
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"packet {pn} has no frames")
        ack_eliciting = False
        not_probe_only = False
        raw = reader.data
        end = reader.end
        # Where the trailing run of zero bytes starts (found at the first PADDING):
        # WireGuard pads every payload to 16 bytes, so most packets end in up to 15
        # PADDING frames, which are skipped at once instead of one loop turn each.
        padding_from = -1
        while reader.pos < end:
            frame_start = reader.pos
            ftype = raw[frame_start]
            if ftype < 0x40:  # every frame type we know fits one byte
                reader.pos = frame_start + 1
            else:
                ftype = reader.varint("frame type")
            if _STREAM <= ftype <= 0x0F:
                self._on_stream_frame(reader, ftype)
                ack_eliciting = True
            elif ftype == _PADDING:
                if padding_from < 0:
                    padding_from = frame_start + len(raw[frame_start:end].tobytes().rstrip(b"\0"))
                if frame_start >= padding_from:
                    break  # zeros to the end: nothing but PADDING left
                continue
            elif ftype == FrameType.ACK:
                self._on_ack_frame(reader, now)
                not_probe_only = True
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
                if value > MAX_STREAM_COUNT:
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
                    self._path_out.append((path, bytes(response), 0))
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
        raw = reader.data
        pos = reader.pos
        end = reader.end
        # The common layout inline (one-byte stream id, offset and length present, in
        # bounds); anything else goes through the Reader and its error messages.
        if ftype & 0x06 == 0x06 and pos + 1 < end and raw[pos] < 0x40:
            stream_id = raw[pos]
            first = raw[pos + 1]
            size = 1 << (first >> 6)
            pos += 1
            if pos + size <= end:
                offset = int.from_bytes(raw[pos : pos + size], "big") & _VARINT_MASK[size]
                pos += size
                if pos < end:
                    first = raw[pos]
                    size = 1 << (first >> 6)
                    if pos + size <= end:
                        length = int.from_bytes(raw[pos : pos + size], "big") & _VARINT_MASK[size]
                        pos += size
                        if length <= end - pos:
                            data = raw[pos : pos + length]
                            reader.pos = pos + length
                            self._on_stream_data(stream_id, offset, data, ftype)
                            return
        stream_id = reader.varint("STREAM stream id")
        offset = reader.varint("STREAM offset") if ftype & FrameType.STREAM_OFF else 0
        if ftype & FrameType.STREAM_LEN:
            data = reader.take(reader.varint("STREAM length"), "STREAM data")
        else:
            data = reader.rest()
        self._on_stream_data(stream_id, offset, data, ftype)

    def _on_stream_data(self, stream_id: int, offset: int, data: memoryview, ftype: int) -> None:
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
            size = stream.peek(1)[0] >> 6
            prefix = 1 << size
            if readable >= prefix:
                length = int.from_bytes(stream.peek(prefix), "big") & ((1 << (8 * prefix - 2)) - 1)
                if length > MAX_SERVICE_LENGTH:
                    raise RemoteProtocolError(
                        ErrorCode.PROTOCOL_VIOLATION,
                        f"stream {stream.stream_id}: service name of {length} bytes",
                    )
                if readable >= prefix + length:
                    raw = stream.read(prefix + length, exact=True)[prefix:]
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
        # RFC 9000 section 3.5: answer STOP_SENDING with RESET_STREAM. The peer stopped
        # reading, so nobody waits for it: it rides with the next packet (_lazy).
        self._reset_send_side(stream, code, lazy=True)
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
            if kind == REC_STREAM:
                stream = streams.get(stream_id)
                if stream is not None:
                    freed = stream.on_data_acked(offset, length, fin)
                    released += freed
                    if stream.fin_acked and stream.send_terminal():
                        self._maybe_remove(stream)
            elif kind == REC_RESET:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.send_reset_state = ControlState.ACKED
                    self._maybe_remove(stream)
            elif kind == REC_STOP:
                stream = streams.get(stream_id)
                if stream is not None and stream.stop_state is ControlState.SENT:
                    stream.stop_state = ControlState.ACKED
            elif kind == REC_ACK and offset > self._ack_floor:
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
