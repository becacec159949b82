"""The DERP relay end to end over real loopback sockets: HttpServer + Router + DerpRelay.

Most tests use tunneld's DerpClient; ``RawDerp`` below is an independent client
written here straight from the frame format (struct + PyNaCl), so a shared
misreading of the protocol in tunneld.proto.derp cannot hide.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import nacl.public
import pytest
import trio
import trio_websocket

from tunneld.config import ConfigError, load_config
from tunneld.control import relay_limits
from tunneld.control._derp_relay import DerpRelay, RelayLimits
from tunneld.http import HttpLimits, HttpServer, Router
from tunneld.keys import generate_private_key, public_key
from tunneld.net.derp import DerpClient, DerpConnectError, DerpConnectionClosed
from tunneld.proto.derp import (
    Health,
    KeepAlive,
    PeerGone,
    PeerGoneReason,
    RecvPacket,
    Restarting,
)

RELAY_PRIVATE = generate_private_key()

# --- an independent DERP client, from the frame format alone ---

DERP_MAGIC = b"DERP\xf0\x9f\x94\x91"


def raw_frame(frame_type: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BI", frame_type, len(payload)) + payload


class RawDerp:
    """Type byte, 4-byte big-endian length, payload; NaCl boxes of JSON for the handshake."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, private: bytes) -> None:
        self.ws = ws
        self.private = private
        self.key = public_key(private)
        self.buffer = b""

    async def read_frame(self) -> tuple[int, bytes]:
        while True:
            if len(self.buffer) >= 5:
                frame_type, length = struct.unpack(">BI", self.buffer[:5])
                if len(self.buffer) >= 5 + length:
                    payload = self.buffer[5 : 5 + length]
                    self.buffer = self.buffer[5 + length :]
                    return frame_type, payload
            message = await self.ws.get_message()
            assert isinstance(message, bytes)
            self.buffer += message

    async def handshake(self) -> dict[str, object]:
        frame_type, payload = await self.read_frame()
        assert frame_type == 0x01
        assert payload[:8] == DERP_MAGIC
        server_key = payload[8:40]
        box = nacl.public.Box(
            nacl.public.PrivateKey(self.private), nacl.public.PublicKey(server_key)
        )
        sealed = bytes(box.encrypt(b'{"version":2,"CanAckPings":true}'))
        # Send the client info split across two WebSocket messages on purpose.
        frame = raw_frame(0x02, self.key + sealed)
        await self.ws.send_message(frame[:7])
        await self.ws.send_message(frame[7:])
        frame_type, payload = await self.read_frame()
        assert frame_type == 0x03
        info = json.loads(box.decrypt(payload))
        assert isinstance(info, dict)
        return info

    async def send_packet(self, dst: bytes, data: bytes) -> None:
        await self.ws.send_message(raw_frame(0x04, dst + data))

    async def next_data_frame(self) -> tuple[int, bytes]:
        """The next frame that is not a keep-alive."""
        while True:
            frame_type, payload = await self.read_frame()
            if frame_type != 0x06:
                return frame_type, payload


# --- fixtures ---


async def start_relay(
    nursery: trio.Nursery,
    *,
    authorize: Callable[[bytes], Awaitable[bool]] | None = None,
    limits: RelayLimits | None = None,
) -> tuple[DerpRelay, str]:
    async def allow(_key: bytes) -> bool:
        return True

    relay = DerpRelay(
        RELAY_PRIVATE, authorize=authorize or allow, limits=limits, rng=random.Random(7)
    )
    router = Router()
    router.websocket(
        "/derp", relay.handle_websocket, subprotocols=["derp"], require_subprotocol=True
    )
    server = HttpServer(router, limits=HttpLimits(max_connections=4096))
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    return relay, f"ws://{host}:{port}/derp"


async def receive_data_event(client: DerpClient) -> object:
    while True:
        event = await client.receive()
        if not isinstance(event, KeepAlive):
            return event


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll relay state (it has no events to wait on) for at most 5 s."""
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - polling counters, not a condition
            await trio.sleep(0.01)


# --- behaviour ---


async def test_two_clients_exchange_packets_and_ping(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery)
    a_key, b_key = generate_private_key(), generate_private_key()
    async with DerpClient.connect(url, a_key) as a, DerpClient.connect(url, b_key) as b:
        assert a.server_key == relay.public_key
        assert a.server_info.version == 2
        assert a.server_info.token_bucket_bytes_per_second == relay.limits.bytes_per_second
        assert a.server_info.send_queue_packets == relay.limits.send_queue_packets
        await a.send_packet(b.public_key, b"hello b")
        assert await receive_data_event(b) == RecvPacket(a.public_key, b"hello b")
        big = os.urandom(65536)
        await b.send_packet(a.public_key, big)
        assert await receive_data_event(a) == RecvPacket(b.public_key, big)
        rtt = await a.ping()
        assert 0 < rtt < 5
        await a.note_preferred(True)
        await wait_until(lambda: relay.stats.clients_preferred == 1)
        assert relay.stats.clients_current == 2
        assert relay.stats.packets_relayed == 2
        assert relay.stats.bytes_relayed == 7 + 65536
        assert relay.stats.pings == 1
    await wait_until(lambda: relay.stats.clients_current == 0)
    assert relay.stats.clients_preferred == 0
    assert relay.stats.clients_total == 2


async def test_absent_peer_gets_peer_gone_not_here(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery)
    nobody = public_key(generate_private_key())
    async with DerpClient.connect(url, generate_private_key()) as a:
        await a.send_packet(nobody, b"anyone?")
        assert await receive_data_event(a) == PeerGone(nobody, PeerGoneReason.NOT_HERE)
    assert relay.stats.drops == {"unknown_dest": 1}


async def test_peer_gone_disconnected_goes_to_those_it_sent_to(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery)
    async with DerpClient.connect(url, generate_private_key()) as b:
        async with DerpClient.connect(url, generate_private_key()) as a:
            a_key = a.public_key
            await a.send_packet(b.public_key, b"from a")
            assert await receive_data_event(b) == RecvPacket(a_key, b"from a")
        # a left: b, which received from a, is told (derper's peerGoneWatchers).
        assert await receive_data_event(b) == PeerGone(a_key, PeerGoneReason.DISCONNECTED)


async def test_unauthorized_key_is_refused(nursery: trio.Nursery) -> None:
    allowed = generate_private_key()
    asked: list[bytes] = []

    async def authorize(key: bytes) -> bool:
        asked.append(key)
        return key == public_key(allowed)

    relay, url = await start_relay(nursery, authorize=authorize)
    stranger = generate_private_key()
    with pytest.raises(DerpConnectError) as info:
        async with DerpClient.connect(url, stranger):
            pass
    assert info.value.code == 1008
    assert "node key not authorized" in info.value.reason
    assert asked == [public_key(stranger)]
    assert relay.stats.refused == 1
    async with DerpClient.connect(url, allowed) as client:
        assert client.public_key == public_key(allowed)


@pytest.mark.parametrize("subprotocols", [["chat"], []])
async def test_wrong_subprotocol_is_refused(nursery: trio.Nursery, subprotocols: list[str]) -> None:
    relay, url = await start_relay(nursery)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url, subprotocols=subprotocols):
            pass
    assert info.value.status_code == 400
    assert relay.stats.clients_total == 0


@pytest.mark.parametrize(
    ("bad", "code", "reason"),
    [
        (raw_frame(0x04)[:1] + struct.pack(">I", 32 + 65537), 1009, "SEND_PACKET (0x04) frame"),
        (raw_frame(0x07, b"\x01\x02"), 1002, "expected 1"),
        (raw_frame(0x10), 1008, "mesh frames need a mesh key"),
    ],
)
async def test_bad_frame_closes_only_that_client(
    nursery: trio.Nursery, bad: bytes, code: int, reason: str
) -> None:
    relay, url = await start_relay(nursery)
    async with (
        DerpClient.connect(url, generate_private_key()) as good_a,
        DerpClient.connect(url, generate_private_key()) as good_b,
        trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws,
    ):
        raw = RawDerp(ws, generate_private_key())
        await raw.handshake()
        await ws.send_message(bad)
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await raw.next_data_frame()
        assert info.value.reason.code == code
        assert reason in (info.value.reason.reason or "")
        await good_a.send_packet(good_b.public_key, b"still fine")
        assert await receive_data_event(good_b) == RecvPacket(good_a.public_key, b"still fine")
    assert relay.stats.protocol_errors == 1


@pytest.mark.parametrize(
    ("client_info", "reason"),
    [
        (lambda key: raw_frame(0x02, public_key(key) + os.urandom(64)), "box does not open"),
        (lambda key: raw_frame(0x04, b"x" * 40), "expected CLIENT_INFO (0x02), got SEND_PACKET"),
    ],
)
async def test_bad_handshake_is_closed_with_reason(
    nursery: trio.Nursery, client_info: Callable[[bytes], bytes], reason: str
) -> None:
    relay, url = await start_relay(nursery)
    async with trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws:
        raw = RawDerp(ws, generate_private_key())
        frame_type, _ = await raw.read_frame()
        assert frame_type == 0x01
        await ws.send_message(client_info(raw.private))
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await raw.read_frame()
        assert info.value.reason.code == 1002
        assert reason in (info.value.reason.reason or "")
    assert relay.stats.handshake_failures == 1


async def test_text_message_closes_client(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery)
    async with trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws:
        raw = RawDerp(ws, generate_private_key())
        await raw.handshake()
        await ws.send_message("hello")
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await raw.next_data_frame()
        assert "binary messages" in (info.value.reason.reason or "")


async def test_handshake_timeout(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery, limits=RelayLimits(handshake_timeout=0.2))
    async with trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws:
        raw = RawDerp(ws, generate_private_key())
        assert (await raw.read_frame())[0] == 0x01
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await raw.read_frame()
        assert info.value.reason.code == 1008
        assert "timed out" in (info.value.reason.reason or "")
    assert relay.stats.handshake_failures == 1


async def test_duplicate_connection_newest_wins(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery)
    key = generate_private_key()
    async with (
        DerpClient.connect(url, generate_private_key()) as sender,
        DerpClient.connect(url, key) as old,
        DerpClient.connect(url, key) as new,
    ):
        assert await receive_data_event(old) == Health(
            "replaced by a newer connection with this key"
        )
        with pytest.raises(DerpConnectionClosed) as info:
            await old.receive()
        assert info.value.code == 1008
        assert info.value.reason == "replaced by a newer connection with this key"
        await sender.send_packet(new.public_key, b"to the newest")
        assert await receive_data_event(new) == RecvPacket(sender.public_key, b"to the newest")
        assert relay.stats.duplicates_replaced == 1
        assert relay.stats.clients_current == 2


async def test_close_peer_disconnects_and_tells_receivers(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery)
    async with (
        DerpClient.connect(url, generate_private_key()) as a,
        DerpClient.connect(url, generate_private_key()) as b,
    ):
        await a.send_packet(b.public_key, b"x")
        await receive_data_event(b)
        relay.close_peer(a.public_key)
        with pytest.raises(DerpConnectionClosed) as info:
            await receive_data_event(a)
        assert info.value.reason == "closed by the control plane"
        assert await receive_data_event(b) == PeerGone(a.public_key, PeerGoneReason.DISCONNECTED)
        assert not relay.is_connected(a.public_key)
        relay.close_peer(a.public_key)  # absent: no-op


async def test_announce_restart_and_keepalive(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(
        nursery, limits=RelayLimits(keepalive_interval=0.1, keepalive_jitter=0.05)
    )
    async with DerpClient.connect(url, generate_private_key()) as a:
        assert isinstance(await a.receive(), KeepAlive)
        await relay.announce_restart(1.0, 30.0)
        assert await receive_data_event(a) == Restarting(1000, 30000)
    assert relay.stats.keepalives_sent >= 1


async def test_rate_limit_and_too_large_drop_packets(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(
        nursery, limits=RelayLimits(bytes_per_second=1000, burst=3000, max_packet=1500)
    )
    async with (
        DerpClient.connect(url, generate_private_key()) as a,
        DerpClient.connect(url, generate_private_key()) as b,
    ):
        assert a.server_info.token_bucket_bytes_per_second == 1000
        await a.send_packet(b.public_key, b"y" * 2000)
        for _ in range(10):
            await a.send_packet(b.public_key, b"z" * 1000)
        await a.ping()  # everything before it has been processed
        assert relay.stats.drops["too_large"] == 1
        assert relay.stats.drops["rate_limited"] >= 5
        assert relay.stats.packets_relayed + relay.stats.drops["rate_limited"] == 10


async def test_independent_raw_client_is_relayed_and_gets_peer_gone(
    nursery: trio.Nursery,
) -> None:
    relay, url = await start_relay(nursery)
    async with (
        trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws,
        DerpClient.connect(url, generate_private_key()) as ours,
    ):
        raw = RawDerp(ws, generate_private_key())
        info = await raw.handshake()
        assert info["version"] == 2
        # Ours → raw: RECV_PACKET carries the 32-byte source key first (version 2).
        await ours.send_packet(raw.key, b"to raw")
        assert await raw.next_data_frame() == (0x05, ours.public_key + b"to raw")
        # Raw → ours, with two frames in one WebSocket message.
        await ws.send_message(
            raw_frame(0x04, ours.public_key + b"one") + raw_frame(0x04, ours.public_key + b"two")
        )
        assert await receive_data_event(ours) == RecvPacket(raw.key, b"one")
        assert await receive_data_event(ours) == RecvPacket(raw.key, b"two")
        # Raw → nobody: PEER_GONE with reason 1 (not here).
        nobody = public_key(generate_private_key())
        await raw.send_packet(nobody, b"?")
        assert await raw.next_data_frame() == (0x08, nobody + b"\x01")
        # Ping → pong echoing the 8 bytes.
        await ws.send_message(raw_frame(0x12, b"8bytes!!"))
        assert await raw.next_data_frame() == (0x13, b"8bytes!!")
        assert relay.is_connected(raw.key)


# --- load: 1,000 lightweight clients and one that never reads ---


class LiteWebSocket:
    """A minimal RFC 6455 client on a trio stream: no reader task, no extensions.

    Frames to the server carry an all-zero mask key (allowed, and it makes masking
    free); frames from the server are unmasked. Enough for 1,000 cheap DERP clients.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, url: str) -> LiteWebSocket:
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            (
                f"GET /derp HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derp\r\n\r\n"
            ).encode()
        )
        ws = cls(stream)
        while b"\r\n\r\n" not in ws.buffer:
            ws.buffer += await stream.receive_some(65536)
        end = ws.buffer.index(b"\r\n\r\n") + 4
        assert ws.buffer.startswith(b"HTTP/1.1 101")
        del ws.buffer[:end]
        return ws

    async def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("relay closed the connection")
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def get_message(self) -> bytes:
        while True:
            first, second = await self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", await self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", await self._read(8))[0]
            payload = await self._read(length)
            if first & 0x0F == 0x8:
                raise EOFError(f"relay closed: {payload[2:].decode(errors='replace')}")
            if first & 0x0F in (0x1, 0x2):
                assert first & 0x80, "the relay does not fragment messages"
                return payload

    async def send_message(self, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes([0x82, 0x80 | n])
        elif n < 65536:
            header = bytes([0x82, 0x80 | 126]) + struct.pack(">H", n)
        else:
            header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", n)
        await self.stream.send_all(header + b"\x00\x00\x00\x00" + payload)


def _open_stalled_client(url: str, private: bytes) -> socket.socket:
    """A WebSocket client over a blocking socket with a tiny receive buffer, which
    completes the DERP handshake and then never reads again."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /derp HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derp\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101")

    def read_exact(n: int) -> bytes:
        nonlocal rest
        while len(rest) < n:
            rest += sock.recv(4096)
        out, rest = rest[:n], rest[n:]
        return out

    def read_ws_message() -> bytes:
        header = read_exact(2)
        length = header[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", read_exact(2))[0]
        return read_exact(length)

    def send_ws_message(payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        sock.sendall(bytes([0x82, 0x80 | len(payload)]) + mask + masked)

    server_key_frame = read_ws_message()
    assert server_key_frame[5:13] == DERP_MAGIC
    box = nacl.public.Box(
        nacl.public.PrivateKey(private), nacl.public.PublicKey(server_key_frame[13:45])
    )
    send_ws_message(raw_frame(0x02, public_key(private) + bytes(box.encrypt(b'{"version":2}'))))
    assert read_ws_message()[0] == 0x03
    return sock


async def test_load_many_clients_one_never_reads(nursery: trio.Nursery) -> None:
    clients_count = int(os.environ.get("TUNNELD_DERP_LOAD_CLIENTS", "1000"))
    messages = 3
    limits = RelayLimits(send_queue_packets=32, write_timeout=120.0, keepalive_interval=600)
    relay, url = await start_relay(nursery, limits=limits)
    stalled_private = generate_private_key()
    stalled_key = public_key(stalled_private)
    stalled = await trio.to_thread.run_sync(_open_stalled_client, url, stalled_private)
    try:
        privates = [generate_private_key() for _ in range(clients_count - 1)]
        keys = [public_key(p) for p in privates]
        received = [0] * len(privates)
        all_connected = trio.Event()
        go = trio.Event()
        done = trio.Event()
        connected = 0
        finished = 0
        limiter = trio.CapacityLimiter(64)

        async def run_client(i: int) -> None:
            nonlocal connected, finished
            # The limiter only paces connection set-up.
            async with limiter:
                ws = await LiteWebSocket.connect(url)
                raw = RawDerp(ws, privates[i])  # type: ignore[arg-type]
                await raw.handshake()
            try:
                connected += 1
                if connected == len(privates):
                    all_connected.set()
                await go.wait()
                neighbour = keys[(i + 1) % len(keys)]
                for m in range(messages):
                    await raw.send_packet(neighbour, b"m%d" % m)
                    # Bulk for the stalled client: it fills the relay's queue for it.
                    await raw.send_packet(stalled_key, b"s" * 2048)
                while received[i] < messages:
                    frame_type, payload = await raw.next_data_frame()
                    assert frame_type == 0x05
                    assert payload[:32] == keys[(i - 1) % len(keys)]
                    received[i] += 1
                finished += 1
                if finished == len(privates):
                    done.set()
                await trio.sleep_forever()
            finally:
                await ws.stream.aclose()

        async with trio.open_nursery() as clients:
            for i in range(len(privates)):
                clients.start_soon(run_client, i)
            with trio.fail_after(60):
                await all_connected.wait()
            assert relay.stats.clients_current == clients_count
            go.set()
            with trio.fail_after(30):
                await done.wait()
            # Everyone else got every packet although one client never read a byte.
            assert received == [messages] * len(privates)
            stalled_queue = relay._clients[stalled_key].packets
            assert len(stalled_queue) <= limits.send_queue_packets
            assert relay.stats.drops.get("queue_full", 0) > 0
            assert relay.stats.packets_relayed == len(privates) * messages * 2
            clients.cancel_scope.cancel()
    finally:
        stalled.close()


async def test_client_closes_a_silent_relay(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery)
    async with DerpClient.connect(url, generate_private_key(), silence_timeout=0.2) as client:
        with pytest.raises(DerpConnectionClosed, match=r"relay silent for 0\.2 s"):
            await client.receive()


async def test_frames_split_byte_at_a_time_are_relayed(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery)
    async with (
        trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws,
        DerpClient.connect(url, generate_private_key()) as ours,
    ):
        raw = RawDerp(ws, generate_private_key())
        await raw.handshake()
        frame = raw_frame(0x04, ours.public_key + b"dribbled")
        for i in range(len(frame)):
            await ws.send_message(frame[i : i + 1])
        assert await receive_data_event(ours) == RecvPacket(raw.key, b"dribbled")


def test_bench_derp_smoke() -> None:
    import argparse

    from tunneld.bench import _derp as derp_relay

    parser = argparse.ArgumentParser()
    derp_relay.add_arguments(parser)
    result = derp_relay.run(
        parser.parse_args(["--round-trips", "5", "--stream", "20", "--sizes", "100"])
    )
    (row,) = result.rows
    assert row["size"] == 100
    assert isinstance(row["ratio_p50"], float)
    assert row["ratio_p50"] > 0


async def test_hanging_authorizer_times_out(nursery: trio.Nursery) -> None:
    async def hang(_key: bytes) -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    relay, url = await start_relay(
        nursery, authorize=hang, limits=RelayLimits(handshake_timeout=0.2)
    )
    with pytest.raises(DerpConnectError) as info:
        async with DerpClient.connect(url, generate_private_key()):
            pass
    assert info.value.code == 1011
    assert info.value.reason == "relay closed the connection: authorization timed out"
    assert relay.stats.refused == 1


def test_relay_rate_limit_comes_from_the_control_config(tmp_path: Path) -> None:
    # No per-client cap by default (as derper); [control] relay_rate_limit sets one in MiB/s.
    config = tmp_path / "control.toml"
    config.write_text("[control]\n")
    assert relay_limits(load_config(config).control).bytes_per_second == 0
    config.write_text("[control]\nrelay_rate_limit = 2.5\n")
    assert relay_limits(load_config(config).control).bytes_per_second == int(2.5 * 1024 * 1024)
    config.write_text("[control]\nrelay_rate_limit = -1\n")
    with pytest.raises(ConfigError, match=r"\[control\]\.relay_rate_limit"):
        load_config(config)


def test_relay_queue_depth_comes_from_the_control_config(tmp_path: Path) -> None:
    config = tmp_path / "control.toml"
    config.write_text("[control]\n")
    assert relay_limits(load_config(config).control).send_queue_packets == 96
    config.write_text("[control]\nrelay_queue_packets = 32\n")
    assert relay_limits(load_config(config).control).send_queue_packets == 32
    config.write_text("[control]\nrelay_queue_packets = 0\n")
    with pytest.raises(ConfigError, match=r"\[control\]\.relay_queue_packets.*1-4096"):
        load_config(config)


async def test_a_client_that_stops_reading_is_closed_after_the_write_timeout(
    nursery: trio.Nursery,
) -> None:
    relay, url = await start_relay(
        nursery, limits=RelayLimits(write_timeout=0.3, keepalive_interval=0.05)
    )
    stalled_private = generate_private_key()
    stalled = await trio.to_thread.run_sync(_open_stalled_client, url, stalled_private)
    try:
        async with (
            DerpClient.connect(url, generate_private_key()) as sender,
            DerpClient.connect(url, generate_private_key()) as bystander,
        ):
            chunk = os.urandom(60_000)
            with trio.fail_after(30):
                while relay.stats.write_timeouts == 0:
                    await sender.send_packets([(public_key(stalled_private), chunk)] * 4)
                    await trio.sleep(0.01)
            await wait_until(lambda: not relay.is_connected(public_key(stalled_private)))
            # Keep-alives and everyone else's traffic go on.
            await sender.send_packet(bystander.public_key, b"still relaying")
            assert await receive_data_event(bystander) == RecvPacket(
                sender.public_key, b"still relaying"
            )
            await wait_until(lambda: relay.stats.keepalives_sent >= 2)
    finally:
        stalled.close()
    assert relay.stats.write_timeouts == 1
