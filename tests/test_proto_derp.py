"""DERP v2 sans-IO cores: framing in any split, the sealed handshake, fuzzing."""

from __future__ import annotations

import json
import os
import random
import struct

import nacl.public
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.keys import generate_private_key, public_key
from tunneld.proto.derp import (
    MAGIC,
    MAX_PACKET_SIZE,
    ClientConnection,
    ClientHello,
    Connected,
    ConnectionState,
    FrameDecoder,
    FrameType,
    Health,
    KeepAlive,
    LocalProtocolError,
    NotePreferred,
    PeerGone,
    PeerGoneReason,
    PeerPresent,
    Ping,
    Pong,
    RecvPacket,
    RemoteProtocolError,
    Restarting,
    SendPacket,
    ServerConnection,
    ServerInfo,
    encode_frame,
    encode_health,
    encode_keep_alive,
    encode_peer_gone,
    encode_peer_present,
    encode_ping,
    encode_recv_packet,
    encode_restarting,
)

CI_SETTINGS = settings(
    derandomize=True,
    max_examples=200 if os.environ.get("CI") else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SERVER_PRIVATE = bytes(range(1, 33))
CLIENT_PRIVATE = bytes(range(33, 65))


def drain(conn: ClientConnection | ServerConnection) -> list[object]:
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


def handshake() -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(CLIENT_PRIVATE)
    server = ServerConnection(SERVER_PRIVATE)
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    (hello,) = drain(server)
    assert isinstance(hello, ClientHello)
    server.accept()
    client.receive_data(server.data_to_send())
    assert [type(e) for e in drain(client)] == [Connected]
    return client, server


# --- framing ---


def test_magic_is_the_eight_bytes_derper_sends() -> None:
    assert bytes.fromhex("44455250f09f9491") == MAGIC


def test_frame_layout_is_type_then_big_endian_length() -> None:
    assert encode_frame(FrameType.PING, b"12345678") == b"\x12\x00\x00\x00\x0812345678"
    assert encode_keep_alive() == b"\x06\x00\x00\x00\x00"
    assert encode_restarting(1500, 60000) == b"\x15\x00\x00\x00\x08" + struct.pack(
        ">II", 1500, 60000
    )


def _stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    frames = [
        (FrameType.RECV_PACKET, b"k" * 32 + b"hello"),
        (FrameType.KEEP_ALIVE, b""),
        (FrameType.PING, b"abcdefgh"),
        (0x7F, b"future"),
        (FrameType.RECV_PACKET, b"k" * 32 + os.urandom(3000)),
    ]
    return b"".join(encode_frame(t, p) for t, p in frames), frames


def test_decoder_byte_at_a_time() -> None:
    data, frames = _stream()
    decoder = FrameDecoder()
    got = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            got.append((frame.type, frame.payload))
    assert got == frames
    assert decoder.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_decoder_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    data, frames = _stream()
    decoder = FrameDecoder()
    got = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 700)
        decoder.feed(data[pos : pos + step])
        pos += step
        while (frame := decoder.next_frame()) is not None:
            got.append((frame.type, frame.payload))
    assert got == frames


def test_oversized_frame_is_refused_at_the_header() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x04" + struct.pack(">I", 32 + MAX_PACKET_SIZE + 1))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert "SEND_PACKET (0x04) frame announces 65569 bytes, limit is 65568" in info.value.reason
    assert info.value.close_code == 1009


def test_largest_packet_is_accepted() -> None:
    client, server = handshake()
    client.send_packet(b"d" * 32, b"x" * MAX_PACKET_SIZE)
    server.receive_data(client.data_to_send())
    (event,) = drain(server)
    assert event == SendPacket(b"d" * 32, b"x" * MAX_PACKET_SIZE)


# --- handshake ---


def test_handshake_connects_both_sides() -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    server = ServerConnection(SERVER_PRIVATE)
    server_key_frame = server.data_to_send()
    assert server_key_frame[:5] == b"\x01\x00\x00\x00\x28"
    assert server_key_frame[5:13] == MAGIC
    assert server_key_frame[13:] == public_key(SERVER_PRIVATE)
    client.receive_data(server_key_frame)
    assert client.state is ConnectionState.AWAIT_SERVER_INFO
    server.receive_data(client.data_to_send())
    (hello,) = drain(server)
    assert hello == ClientHello(public_key(CLIENT_PRIVATE), hello.info)
    assert hello.info.version == 2
    assert hello.info.can_ack_pings
    assert server.state is ConnectionState.AWAIT_ACCEPT
    server.accept(ServerInfo(2, token_bucket_bytes_per_second=1000, token_bucket_bytes_burst=9))
    client.receive_data(server.data_to_send())
    assert drain(client) == [
        Connected(public_key(SERVER_PRIVATE), ServerInfo(2, 1000, 9)),
    ]
    assert client.state is server.state is ConnectionState.CONNECTED


def test_client_info_box_is_json_version_2_openable_by_server_key() -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    server = ServerConnection(SERVER_PRIVATE)
    client.receive_data(server.data_to_send())
    frame = client.data_to_send()
    assert frame[0] == FrameType.CLIENT_INFO
    payload = frame[5:]
    assert payload[:32] == public_key(CLIENT_PRIVATE)
    box = nacl.public.Box(
        nacl.public.PrivateKey(SERVER_PRIVATE), nacl.public.PublicKey(payload[:32])
    )
    assert json.loads(box.decrypt(payload[32:])) == {"version": 2, "CanAckPings": True}


def test_frames_sent_before_accept_wait_in_the_buffer() -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    server = ServerConnection(SERVER_PRIVATE)
    client.receive_data(server.data_to_send())
    early = client.data_to_send() + encode_frame(FrameType.SEND_PACKET, b"d" * 32 + b"early")
    server.receive_data(early)
    assert [type(e) for e in drain(server)] == [ClientHello]
    server.accept()
    server.receive_data(b"")
    assert drain(server) == [SendPacket(b"d" * 32, b"early")]


def test_client_events_after_connect() -> None:
    client, _ = handshake()
    peer = b"p" * 32
    client.receive_data(
        encode_recv_packet(peer, b"data")
        + encode_keep_alive()
        + encode_peer_gone(peer, PeerGoneReason.NOT_HERE)
        + encode_frame(FrameType.PEER_GONE, peer)  # old servers: no reason byte
        + encode_peer_present(peer)
        + encode_ping(b"12345678")
        + encode_frame(FrameType.PONG, b"abcdefgh")
        + encode_health("duplicate connection")
        + encode_restarting(2000, 30000)
        + encode_frame(0x55, b"from the future")
    )
    assert drain(client) == [
        RecvPacket(peer, b"data"),
        KeepAlive(),
        PeerGone(peer, PeerGoneReason.NOT_HERE),
        PeerGone(peer, PeerGoneReason.DISCONNECTED),
        PeerPresent(peer),
        Ping(b"12345678"),
        Pong(b"abcdefgh"),
        Health("duplicate connection"),
        Restarting(2000, 30000),
    ]
    # Server pings are answered automatically.
    assert client.data_to_send() == encode_frame(FrameType.PONG, b"12345678")


def test_server_events_after_connect() -> None:
    client, server = handshake()
    client.send_packet(b"d" * 32, b"pkt")
    client.note_preferred(True)
    client.ping(b"pingpong")
    client.pong(b"87654321")
    server.receive_data(client.data_to_send() + encode_keep_alive())
    assert drain(server) == [
        SendPacket(b"d" * 32, b"pkt"),
        NotePreferred(True),
        Ping(b"pingpong"),
        Pong(b"87654321"),
    ]


def test_data_to_send_parts_are_the_same_bytes_unjoined() -> None:
    client, server = handshake()
    packet = b"p" * 60_000
    client.send_packet(b"d" * 32, packet)
    client.ping(b"pingpong")
    parts = client.data_to_send_parts()
    assert any(part is packet for part in parts)  # the packet itself, not a copy
    assert client.data_to_send_parts() == []
    assert client.data_to_send() == b""
    server.receive_data(b"".join(parts))
    assert drain(server) == [SendPacket(b"d" * 32, packet), Ping(b"pingpong")]


def test_local_misuse_is_local_protocol_error() -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    with pytest.raises(LocalProtocolError, match="cannot send a packet in state AWAIT_SERVER_KEY"):
        client.send_packet(b"d" * 32, b"x")
    client, _ = handshake()
    with pytest.raises(LocalProtocolError, match="exceeds DERP's maximum of 65536"):
        client.send_packet(b"d" * 32, b"x" * (MAX_PACKET_SIZE + 1))
    with pytest.raises(LocalProtocolError, match="destination key must be 32 bytes"):
        client.send_packet(b"d", b"x")
    with pytest.raises(LocalProtocolError, match="cannot accept in state AWAIT_CLIENT_INFO"):
        ServerConnection(SERVER_PRIVATE).accept()


# --- bad input: each with its reason ---


def _client_info_frame(json_body: bytes, *, key: bytes = CLIENT_PRIVATE) -> bytes:
    box = nacl.public.Box(
        nacl.public.PrivateKey(key), nacl.public.PublicKey(public_key(SERVER_PRIVATE))
    )
    return encode_frame(FrameType.CLIENT_INFO, public_key(key) + bytes(box.encrypt(json_body)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            encode_frame(FrameType.SEND_PACKET, b"x" * 40),
            "expected CLIENT_INFO (0x02), got SEND_PACKET",
        ),
        (encode_frame(0x42, b""), "expected CLIENT_INFO (0x02), got unknown frame type 0x42"),
        (encode_frame(FrameType.CLIENT_INFO, b"k" * 40), "too short for client key, nonce and box"),
        (
            encode_frame(FrameType.CLIENT_INFO, public_key(CLIENT_PRIVATE) + os.urandom(80)),
            "client info: box does not open",
        ),
        (
            encode_frame(FrameType.CLIENT_INFO, b"\x00" * 32 + os.urandom(80)),
            "client info: box does not open",
        ),
        (_client_info_frame(b"not json"), "client info: not JSON"),
        (_client_info_frame(b"[" * 100000), "client info: not JSON (RecursionError)"),
        (_client_info_frame(b"[2]"), "client info: JSON is a list, not an object"),
        (_client_info_frame(b'{"version":1}'), "protocol version 1 is not supported (need 2)"),
        (_client_info_frame(b"{}"), "protocol version 0 is not supported"),
        (_client_info_frame(b'{"version":"2"}'), "version must be a non-negative integer"),
        (_client_info_frame(b'{"version":2,"meshKey":"ab"}'), "mesh keys are not supported"),
        (b"\x02\xff\xff\xff\xff", "CLIENT_INFO (0x02) frame announces 4294967295 bytes"),
    ],
)
def test_server_rejects_bad_handshake(data: bytes, reason: str) -> None:
    server = ServerConnection(SERVER_PRIVATE)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(data)
    assert reason in info.value.reason
    assert server.state is ConnectionState.CLOSED
    # The error is sticky: the connection stays dead but well-behaved.
    with pytest.raises(RemoteProtocolError):
        server.receive_data(b"")


def test_server_accepts_go_field_names_case_insensitively() -> None:
    server = ServerConnection(SERVER_PRIVATE)
    server.receive_data(_client_info_frame(b'{"Version":2,"canackpings":true,"IsProber":true}'))
    (hello,) = drain(server)
    assert isinstance(hello, ClientHello)
    assert hello.info.is_prober
    assert hello.info.can_ack_pings


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode_frame(FrameType.NOTE_PREFERRED, b"\x01\x01"), "payload is 2 bytes, expected 1"),
        (encode_frame(FrameType.SEND_PACKET, b"short"), "too short for a destination key"),
        (encode_frame(FrameType.PING, b"1234"), "too short for ping data"),
        (encode_frame(FrameType.FORWARD_PACKET, b"x" * 70), "mesh frames need a mesh key"),
        (encode_frame(FrameType.WATCH_CONNS), "mesh frames need a mesh key"),
    ],
)
def test_server_rejects_bad_frames_after_connect(data: bytes, reason: str) -> None:
    _, server = handshake()
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(data)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode_frame(FrameType.SERVER_INFO, b""), "expected SERVER_KEY (0x01), got SERVER_INFO"),
        (encode_frame(FrameType.SERVER_KEY, MAGIC), "too short for magic and server key"),
        (encode_frame(FrameType.SERVER_KEY, b"HTTP/1.1" + b"k" * 32), "magic is 485454502f312e31"),
    ],
)
def test_client_rejects_bad_server_key(data: bytes, reason: str) -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(data)
    assert reason in info.value.reason


def test_client_rejects_server_info_sealed_by_another_key() -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    client.receive_data(encode_frame(FrameType.SERVER_KEY, MAGIC + public_key(SERVER_PRIVATE)))
    impostor = nacl.public.Box(
        nacl.public.PrivateKey(generate_private_key()),
        nacl.public.PublicKey(public_key(CLIENT_PRIVATE)),
    )
    frame = encode_frame(FrameType.SERVER_INFO, bytes(impostor.encrypt(b'{"version":2}')))
    with pytest.raises(RemoteProtocolError, match="server info: box does not open"):
        client.receive_data(frame)


def test_client_rejects_wrong_server_version() -> None:
    client = ClientConnection(CLIENT_PRIVATE)
    client.receive_data(encode_frame(FrameType.SERVER_KEY, MAGIC + public_key(SERVER_PRIVATE)))
    box = nacl.public.Box(
        nacl.public.PrivateKey(SERVER_PRIVATE), nacl.public.PublicKey(public_key(CLIENT_PRIVATE))
    )
    frame = encode_frame(FrameType.SERVER_INFO, bytes(box.encrypt(b'{"version":3}')))
    with pytest.raises(RemoteProtocolError, match="server info: protocol version 3"):
        client.receive_data(frame)


# --- fuzzing: only RemoteProtocolError escapes ---


def _feed_all(conn: ClientConnection | ServerConnection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            drain(conn)
            conn.data_to_send()
    except RemoteProtocolError as exc:
        assert exc.reason  # noqa: PT017 - fuzz: any input may legitimately fail
        assert conn.state is ConnectionState.CLOSED


@CI_SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_server_random_bytes(chunks: list[bytes]) -> None:
    _feed_all(ServerConnection(SERVER_PRIVATE), chunks)


@CI_SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_client_random_bytes(chunks: list[bytes]) -> None:
    _feed_all(ClientConnection(CLIENT_PRIVATE), chunks)


def _valid_client_stream() -> bytes:
    client = ClientConnection(CLIENT_PRIVATE)
    server = ServerConnection(SERVER_PRIVATE)
    client.receive_data(server.data_to_send())
    hello = client.data_to_send()
    return (
        hello
        + encode_frame(FrameType.SEND_PACKET, b"d" * 32 + b"payload")
        + encode_frame(FrameType.NOTE_PREFERRED, b"\x01")
        + encode_frame(FrameType.PING, b"12345678")
    )


VALID_CLIENT_STREAM = _valid_client_stream()


@CI_SETTINGS
@given(
    st.data(),
    st.sampled_from(["truncate", "extend", "flip", "splice"]),
)
def test_fuzz_server_mutated_handshake(data: st.DataObject, how: str) -> None:
    stream = bytearray(VALID_CLIENT_STREAM)
    if how == "truncate":
        del stream[data.draw(st.integers(0, len(stream))) :]
    elif how == "extend":
        stream += data.draw(st.binary(min_size=1, max_size=200))
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(stream) - 1))
            stream[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        i = data.draw(st.integers(0, len(stream)))
        stream[i:i] = data.draw(st.binary(min_size=1, max_size=40))
    splits = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [bytes(stream[a:b]) for a, b in zip([0, *splits], [*splits, len(stream)], strict=True)]
    server = ServerConnection(SERVER_PRIVATE)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            for event in drain(server):
                if isinstance(event, ClientHello):
                    server.accept()
    except RemoteProtocolError as exc:
        assert exc.reason  # noqa: PT017 - fuzz: any input may legitimately fail


@CI_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 0x20), st.binary(max_size=80)), max_size=10))
def test_fuzz_connected_client_frames(frames: list[tuple[int, bytes]]) -> None:
    client, _ = handshake()
    _feed_all(client, [encode_frame(t, p) for t, p in frames])


@CI_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 0x20), st.binary(max_size=80)), max_size=10))
def test_fuzz_connected_server_frames(frames: list[tuple[int, bytes]]) -> None:
    _, server = handshake()
    _feed_all(server, [encode_frame(t, p) for t, p in frames])


def test_server_info_json_is_what_derper_marshals() -> None:
    from tunneld.proto.derp import ClientInfo
    from tunneld.proto.derp._info import encode_client_info, encode_server_info

    assert encode_server_info(ServerInfo(2)) == b'{"version":2}'
    assert (
        encode_server_info(ServerInfo(2, 1000, 5000))
        == b'{"version":2,"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":5000}'
    )
    assert encode_client_info(ClientInfo(2, can_ack_pings=True)) == (
        b'{"version":2,"CanAckPings":true}'
    )


def test_server_info_carries_our_queue_depth_and_derpers_json_reads_as_unsaid() -> None:
    from tunneld.proto.derp._info import encode_server_info, parse_server_info

    ours = ServerInfo(2, send_queue_packets=96)
    assert encode_server_info(ours) == b'{"version":2,"TunneldSendQueuePackets":96}'
    assert parse_server_info(encode_server_info(ours)) == ours
    # What Tailscale's derper sends: no depth, so 0 (the node assumes derper's 32).
    derper = b'{"version":2,"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":5000}'
    assert parse_server_info(derper).send_queue_packets == 0


@pytest.mark.parametrize("value", ["-1", "1.5", "true", '"96"'])
def test_server_info_refuses_a_queue_depth_that_is_not_a_count(value: str) -> None:
    from tunneld.proto.derp._info import parse_server_info

    with pytest.raises(RemoteProtocolError, match="TunneldSendQueuePackets must be a non-neg"):
        parse_server_info(b'{"version":2,"TunneldSendQueuePackets":' + value.encode() + b"}")


SLOW = pytest.mark.skipif(
    not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run: TUNNELD_SLOW=1"
)


@pytest.mark.slow
@SLOW
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=2000), max_size=20))
def test_fuzz_server_long(chunks: list[bytes]) -> None:
    _feed_all(ServerConnection(SERVER_PRIVATE), chunks)


@pytest.mark.slow
@SLOW
@settings(max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 0xFF), st.binary(max_size=300)), max_size=30))
def test_fuzz_connected_both_sides_long(frames: list[tuple[int, bytes]]) -> None:
    client, server = handshake()
    data = [encode_frame(t, p) for t, p in frames]
    _feed_all(client, data)
    _feed_all(server, data)
