"""Closing streams cheaply: close-only frames ride with other packets (the mux core)."""

from __future__ import annotations

from mux_harness import PATH

from tunneld.proto.mux import (
    Connection,
    MuxConfig,
    StopSending,
    StreamOpened,
    StreamReadable,
)
from tunneld.proto.mux._wire import FrameType, Reader

MAX_ACK_DELAY = MuxConfig().max_ack_delay


def frame_types(packet: bytes) -> list[int]:
    """The frame types of one packet (enough parsing for the frames used here)."""
    reader = Reader(packet)
    reader.varint("pn")
    types = []
    while not reader.at_end():
        ftype = reader.varint("type")
        if ftype == FrameType.PADDING:
            break
        types.append(ftype)
        if ftype == FrameType.ACK:
            reader.varint("largest")
            reader.varint("delay")
            count = reader.varint("count")
            reader.varint("first")
            for _ in range(2 * count):
                reader.varint("range")
        elif FrameType.STREAM <= ftype <= 0x0F:
            reader.varint("id")
            if ftype & FrameType.STREAM_OFF:
                reader.varint("offset")
            reader.take(reader.varint("length"), "data")
        elif ftype in (FrameType.MAX_DATA, FrameType.MAX_STREAMS):
            reader.varint("value")
        elif ftype in (FrameType.MAX_STREAM_DATA, FrameType.STOP_SENDING):
            reader.varint("id")
            reader.varint("value")
        elif ftype == FrameType.RESET_STREAM:
            for _ in range(3):
                reader.varint("field")
        elif ftype != FrameType.PING:
            raise AssertionError(f"unexpected frame {ftype:#x}")
    return types


def deliver(sender: Connection, receiver: Connection, now: float) -> list[list[int]]:
    """Send what ``sender`` has now; returns each packet's frame types."""
    sent = []
    for data, path in sender.datagrams_to_send(now):
        sent.append(frame_types(data))
        receiver.receive_datagram(data, path, now)
    return sent


def serve(server: Connection, reply: bytes) -> None:
    """The agent's side: answer every request, read every stream's end."""
    while (event := server.next_event()) is not None:
        if isinstance(event, StreamOpened):
            data, _ = server.read_stream(event.stream_id, 1 << 16)
            assert data
            server.send_stream_data(event.stream_id, reply)
        elif isinstance(event, StreamReadable) and event.stream_id in server.stream_ids():
            server.read_stream(event.stream_id, 1 << 16)


def test_request_reply_close_takes_one_datagram_each_way() -> None:
    # An rpc call: request, reply, then the client closes without reading to the end
    # (FIN + STOP_SENDING) and the server answers STOP_SENDING with RESET_STREAM.
    # Back to back, the closing frames ride with the next call's packets: two
    # datagrams per call instead of four, and no stream is left behind.
    client = Connection(is_initiator=True, path=PATH)
    server = Connection(is_initiator=False, path=PATH)
    now = 0.0
    per_call = []
    for _ in range(30):
        stream_id = client.open_stream("rpc")
        client.send_stream_data(stream_id, b"q" * 101)
        packets = deliver(client, server, now)
        serve(server, b"r" * 263)
        packets += deliver(server, client, now)
        data, eof = client.read_stream(stream_id, 1 << 16)
        assert data == b"r" * 263
        assert not eof
        client.send_eof(stream_id)
        client.stop_sending(stream_id, 0)
        assert not client.has_pending_output()  # nothing worth a packet of its own
        packets += deliver(client, server, now)
        serve(server, b"")
        assert not server.has_pending_output()
        packets += deliver(server, client, now)
        per_call.append(len(packets))
        now += 0.002  # the next call comes well within max_ack_delay
    assert per_call[5:] == [2] * 25
    # Left alone, everything closes within the delayed-ACK deadlines.
    for _ in range(4):
        now += MAX_ACK_DELAY
        for sender, receiver in ((client, server), (server, client)):
            timer = sender.get_timer()
            assert timer is not None
            if timer <= now:
                sender.handle_timer(now)
            deliver(sender, receiver, now)
            serve(server, b"")
    assert client.stream_ids() == []
    assert server.stream_ids() == []


def test_close_frames_wait_no_longer_than_the_ack_owed() -> None:
    client = Connection(is_initiator=True, path=PATH)
    server = Connection(is_initiator=False, path=PATH)
    stream_id = client.open_stream("rpc")
    client.send_stream_data(stream_id, b"q")
    deliver(client, server, 0.0)
    serve(server, b"r")
    deliver(server, client, 0.001)
    client.read_stream(stream_id, 10)
    client.send_eof(stream_id)
    client.stop_sending(stream_id, 7)
    assert client.datagrams_to_send(0.002) == []
    # The timer is the ACK's deadline; then ACK, FIN and STOP_SENDING go together.
    assert client.get_timer() == 0.001 + MAX_ACK_DELAY
    now = 0.001 + MAX_ACK_DELAY
    sent = deliver(client, server, now)
    assert len(sent) == 1
    assert FrameType.ACK in sent[0]
    assert FrameType.STOP_SENDING in sent[0]
    assert FrameType.STREAM | FrameType.STREAM_OFF | FrameType.STREAM_LEN | 1 in sent[0]
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert StopSending(stream_id, 7) in events


def test_close_frames_go_at_once_when_no_ack_is_owed() -> None:
    client = Connection(is_initiator=True, path=PATH)
    server = Connection(is_initiator=False, path=PATH)
    stream_id = client.open_stream("rpc")
    client.send_stream_data(stream_id, b"q")
    deliver(client, server, 0.0)
    serve(server, b"r")
    deliver(server, client, 0.001)
    client.read_stream(stream_id, 10)
    deliver(client, server, 0.001 + MAX_ACK_DELAY)  # the ACK left on its own
    client.stop_sending(stream_id, 7)
    assert client.has_pending_output()
    sent = deliver(client, server, 0.1)
    assert sent[0] == [FrameType.STOP_SENDING]
    # The server owes an ACK now, so its RESET_STREAM waits for it ...
    assert server.datagrams_to_send(0.1) == []
    # ... unless something else goes: then it rides along.
    other = client.open_stream("rpc")
    client.send_stream_data(other, b"q")
    deliver(client, server, 0.101)
    serve(server, b"r")
    sent = deliver(server, client, 0.101)
    assert len(sent) == 1
    assert FrameType.RESET_STREAM in sent[0]
    assert FrameType.ACK in sent[0]


def test_stop_sending_after_the_peer_finished_sends_nothing() -> None:
    # Every byte up to the peer's FIN arrived: STOP_SENDING would only cost the peer
    # a RESET_STREAM. Closing such a stream leaves just our FIN to send.
    client = Connection(is_initiator=True, path=PATH)
    server = Connection(is_initiator=False, path=PATH)
    stream_id = client.open_stream("rpc")
    client.send_stream_data(stream_id, b"q", end_stream=True)
    deliver(client, server, 0.0)
    server.next_event()
    server.read_stream(stream_id, 10)
    server.send_stream_data(stream_id, b"answer", end_stream=True)
    deliver(server, client, 0.001)
    data, _ = client.read_stream(stream_id, 3)  # the rest and the FIN stay unread
    assert data == b"ans"
    client.stop_sending(stream_id, 5)
    assert client.stream_ids() == []  # both directions are done
    sent = deliver(client, server, 0.001 + MAX_ACK_DELAY)
    assert sent == [[FrameType.ACK]]


def test_no_delay_stream_counts_as_final_and_idle_streams_are_known() -> None:
    client = Connection(is_initiator=True, path=PATH)
    server = Connection(is_initiator=False, path=PATH)
    stream_id = client.open_stream("rpc")
    client.send_stream_data(stream_id, b"request")
    assert not client.pending_streams_final()
    client.set_no_delay(stream_id)
    assert client.pending_streams_final()
    assert client.stream_idle(stream_id)
    deliver(client, server, 0.0)
    assert not server.stream_idle(stream_id)  # "request" waits unread
    assert isinstance(server.next_event(), StreamOpened)
    server.read_stream(stream_id, 100)
    assert server.stream_idle(stream_id)
    client.send_eof(stream_id)
    assert not client.stream_idle(stream_id)
    assert not client.stream_idle(stream_id + 4)  # unknown
