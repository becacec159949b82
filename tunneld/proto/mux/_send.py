"""The sending half of a mux connection: credit updates, ACKs and packet building."""

from __future__ import annotations

from tunneld.proto.mux._base import (
    CONTROL_FRAME_MAX,
    MIN_PACKET_ROOM,
    REC_ACK,
    REC_CALL_ME_MAYBE,
    REC_MAX_DATA,
    REC_MAX_STREAM_DATA,
    REC_MAX_STREAMS,
    REC_PING,
    REC_RESET,
    REC_STOP,
    REC_STREAM,
    STREAM_FRAME_MIN,
    ConnectionBase,
    ConnectionState,
)
from tunneld.proto.mux._config import (
    MAX_CLOSE_REASON,
)
from tunneld.proto.mux._events import (
    Path,
)
from tunneld.proto.mux._recovery import FrameRecord, SentPacket
from tunneld.proto.mux._sendbuf import SendBuffer
from tunneld.proto.mux._stream import ControlState
from tunneld.proto.mux._wire import MAX_VARINT, FrameType, push_varint, varint_size

__all__ = ["SendMixin"]


class SendMixin(ConnectionBase):
    """Builds packets within the congestion window, pacing and flow control."""

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

    def _lazy_may_wait(self) -> bool:
        """Whether the close-only frames of ``_lazy`` may wait (no ``now``: the ACK
        deadline is the timer's business): only while we owe the peer an ACK that is
        not due at once; they then leave with it or with anything sent before it,
        never later than ``max_ack_delay``. Owing nothing, they go at once."""
        return (
            self._ack_eliciting_unacked > 0
            and not self._ack_immediate
            and self._ack_deadline is not None
            and self._ack_eliciting_unacked < self._config.ack_eliciting_threshold
        )

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
            or (self._max_streams_pending and self._max_streams_urgent())
            or self._ping_pending
            or self._call_me_maybe_pending
            or self._data_blocked_pending
        )

    def has_pending_output(self) -> bool:
        """Whether ``datagrams_to_send`` may have something now (cheap; no side effects).

        Conservative: True can still yield nothing (congestion window, pacing); False
        means only a timer (``get_timer``) can make something due. Drivers use it to
        skip waking their sender after an event that changed nothing to send.
        """
        if self._state is not ConnectionState.OPEN or self._path_out or self._probes_wanted:
            return True
        if self._ack_eliciting_unacked and (
            self._ack_immediate
            or self._ack_eliciting_unacked >= self._config.ack_eliciting_threshold
        ):
            return True
        if self._has_control_work() or (self._sendable and self._has_stream_work()):
            return True
        if self._lazy and not self._lazy_may_wait():
            return True
        if self._max_data_local - self._conn_consumed <= self._conn_window * 0.75:
            return True
        for stream_id in self._credit_check:
            stream = self._streams.get(stream_id)
            if (
                stream is not None
                and stream.final_size is None
                and stream.max_data_local - stream.read_offset <= stream.window * 0.75
            ):
                return True
        return False

    def pending_streams_final(self) -> bool:
        """Whether stream frames wait to go and each of their streams has its FIN
        queued or is marked no-delay (``set_no_delay``).

        Then nothing more joins those frames (after FIN a stream takes no bytes; a
        no-delay stream's writes are whole messages): a driver holding a packet back
        for more frames (a writer about to add its FIN, a reader about to answer) can
        send it now. False when no stream frame waits.
        """
        sendable = self._sendable
        if not sendable:
            return False
        streams = self._streams
        for stream_id in sendable:
            stream = streams.get(stream_id)
            if (
                stream is not None
                and not stream.fin_requested
                and stream.send_reset_code is None
                and not stream.no_delay
            ):
                return False
        return True

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
            probe_path, frame, pad_to = self._path_out.popleft()
            buf = bytearray()
            push_varint(buf, self._next_pn)
            self._next_pn += 1
            buf += frame
            if pad_to > len(buf):
                buf += bytes(pad_to - len(buf))  # PADDING frames
            out.append((bytes(buf), probe_path))
        self._update_credit(now)
        if self._lazy and (
            not self._lazy_may_wait()
            or self._ack_due(now)
            or self._has_control_work()
            or (self._sendable and self._has_stream_work())
        ):
            self._flush_lazy()  # a packet goes anyway (or the ACK is due): join it
        recovery = self._recovery
        self._pacing_until = None
        # _has_control_work() is asked afresh each time: _flush_lazy may have added
        # control work since the check above, and each packet built takes some (or
        # queues DATA_BLOCKED). Within one pass it runs once at most (pacing breaks).
        while len(out) < max_datagrams:
            probe = self._probes_wanted > 0
            if probe:
                room = self._mss
            else:
                room = min(self._mss, recovery.congestion_room())
                if room >= MIN_PACKET_ROOM:
                    pacing = recovery.pacing_delay(now)
                    if pacing is not None:
                        # Only worth a timer if something is waiting to go out.
                        if self._has_stream_work() or self._has_control_work():
                            self._pacing_until = pacing
                        room = 0
            if room < MIN_PACKET_ROOM:
                if self._ack_due(now) and self._received_pns:
                    buf = bytearray()
                    push_varint(buf, self._next_pn)
                    self._next_pn += 1
                    self._write_ack(buf, now)
                    out.append((bytes(buf), path))
                break
            if probe or self._sendable or self._ack_eliciting_unacked or self._has_control_work():
                packet = self._build_packet(now, path, room, probe)
            else:
                packet = None  # what _build_packet would find, without building
            if packet is None:
                if not probe:
                    # Room in the window, nothing to send: rate samples from now on
                    # measure the application, not the path.
                    recovery.on_app_limited()
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
            frames.append((REC_ACK, 0, largest, 0, False))
        ack_end = len(buf)
        self._write_control_frames(buf, limit, frames)
        if self._sendable and limit - len(buf) >= STREAM_FRAME_MIN:
            self._write_stream_frames(buf, limit, frames)
        ack_eliciting = len(buf) > ack_end
        if ack_eliciting and self._max_streams_pending and limit - len(buf) >= CONTROL_FRAME_MAX:
            self._write_max_streams(buf, frames)  # not urgent, but the packet goes anyway
        if probe and not ack_eliciting:
            buf.append(FrameType.PING)
            frames.append((REC_PING, 0, 0, 0, False))
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

    def _write_max_streams(self, buf: bytearray, frames: list[FrameRecord]) -> None:
        self._max_streams_pending = False
        self._max_streams_announced = self._max_streams_local
        buf.append(FrameType.MAX_STREAMS)
        push_varint(buf, self._max_streams_local)
        frames.append((REC_MAX_STREAMS, 0, 0, 0, False))

    def _write_control_frames(self, buf: bytearray, limit: int, frames: list[FrameRecord]) -> None:
        if limit - len(buf) < CONTROL_FRAME_MAX:
            return
        if self._max_data_pending:
            self._max_data_pending = False
            buf.append(FrameType.MAX_DATA)
            push_varint(buf, self._max_data_local)
            frames.append((REC_MAX_DATA, 0, 0, 0, False))
        if (
            self._max_streams_pending
            and limit - len(buf) >= CONTROL_FRAME_MAX
            and self._max_streams_urgent()
        ):
            self._write_max_streams(buf, frames)
        if self._data_blocked_pending and limit - len(buf) >= CONTROL_FRAME_MAX:
            self._data_blocked_pending = False
            buf.append(FrameType.DATA_BLOCKED)
            push_varint(buf, self._max_data_remote)
        if self._ping_pending and limit - len(buf) >= CONTROL_FRAME_MAX:
            self._ping_pending = False
            buf.append(FrameType.PING)
            frames.append((REC_PING, 0, 0, 0, False))
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
                frames.append((REC_CALL_ME_MAYBE, 0, self._call_me_maybe_version, 0, False))
        if not self._control:
            return
        done: list[int] = []
        for stream_id in self._control:
            if limit - len(buf) < 3 * CONTROL_FRAME_MAX:
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
                frames.append((REC_RESET, stream_id, 0, 0, False))
            if stream.stop_state is ControlState.PENDING:
                stream.stop_state = ControlState.SENT
                buf.append(FrameType.STOP_SENDING)
                push_varint(buf, stream_id)
                push_varint(buf, stream.stop_code or 0)
                frames.append((REC_STOP, stream_id, 0, 0, False))
            if stream.max_data_pending:
                stream.max_data_pending = False
                buf.append(FrameType.MAX_STREAM_DATA)
                push_varint(buf, stream_id)
                push_varint(buf, stream.max_data_local)
                frames.append((REC_MAX_STREAM_DATA, stream_id, 0, 0, False))
        for stream_id in done:
            del self._control[stream_id]

    def _write_stream_frames(self, buf: bytearray, limit: int, frames: list[FrameRecord]) -> None:
        streams = self._streams
        sendable = self._sendable
        for stream_id in list(sendable):
            room = limit - len(buf)
            if room < STREAM_FRAME_MIN:
                return
            stream = streams.get(stream_id)
            if stream is None or stream.send_reset_code is not None:
                del sendable[stream_id]
                continue
            id_size = varint_size(stream_id)
            send_buf = stream.send_buf
            # Retransmissions first: frames, not packets, are resent.
            while stream.lost and limit - len(buf) >= STREAM_FRAME_MIN:
                offset = stream.lost[0][0]
                header = 1 + id_size + varint_size(offset) + varint_size(limit)
                start, end = stream.lost.pop_front(limit - len(buf) - header)
                fin = stream.fin_lost and end == stream.send_end and stream.fin_sent
                if fin:
                    stream.fin_lost = False
                self._put_stream_frame(buf, stream_id, start, send_buf, end - start, fin)
                frames.append((REC_STREAM, stream_id, start, end - start, fin))
            if stream.fin_lost and not stream.lost and limit - len(buf) >= STREAM_FRAME_MIN:
                stream.fin_lost = False
                end = stream.send_end
                self._put_stream_frame(buf, stream_id, end, send_buf, 0, True)
                frames.append((REC_STREAM, stream_id, end, 0, True))
            # New data, within stream and connection credit.
            next_new = stream.next_new
            send_end = send_buf.end
            room = limit - len(buf)
            if room >= STREAM_FRAME_MIN:
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
                    self._put_stream_frame(buf, stream_id, next_new, send_buf, take, fin)
                    frames.append((REC_STREAM, stream_id, next_new, take, fin))
                    stream.next_new = end
                    self._data_sent += take
                    if fin:
                        stream.fin_sent = True
                elif stream.fin_requested and not stream.fin_sent and next_new == send_end:
                    stream.fin_sent = True
                    self._put_stream_frame(buf, stream_id, next_new, send_buf, 0, True)
                    frames.append((REC_STREAM, stream_id, next_new, 0, True))
                if stream.next_new < send_end:
                    if stream.next_new >= stream.max_data_remote:
                        if (
                            stream.send_blocked_at != stream.max_data_remote
                            and limit - len(buf) >= CONTROL_FRAME_MAX
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
            next_new = stream.next_new
            more = (
                stream.lost
                or stream.fin_lost
                or (next_new < send_end and next_new < stream.max_data_remote)
                or (stream.fin_requested and not stream.fin_sent)
            )
            if more:
                sendable[stream_id] = None  # to the back of the round robin

    @staticmethod
    def _put_stream_frame(
        buf: bytearray,
        stream_id: int,
        offset: int,
        source: SendBuffer,
        length: int,
        fin: bool,
    ) -> None:
        buf.append(0x0E | fin)  # STREAM with OFF and LEN always present
        push_varint(buf, stream_id)
        push_varint(buf, offset)
        push_varint(buf, length)
        if length:
            source.copy_to(buf, offset, length)
