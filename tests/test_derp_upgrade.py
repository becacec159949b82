"""DERP on the raw stream after ``Upgrade: DERP`` (Tailscale's own transport), over real
loopback sockets: the relay serves it next to WebSocket on one path, clients choose.

The wire-level tests speak the upgrade with hand-written bytes, as Tailscale's
derphttp client writes them, and read frames with the independent ``RawDerp`` of
test_derp_relay.py, so a misreading shared by our client and relay cannot hide.
"""

from __future__ import annotations

import random
import socket
from functools import partial

import pytest
import trio

from tests.test_derp_relay import RELAY_PRIVATE, RawDerp, raw_frame, receive_data_event
from tunneld.control._derp_relay import DerpRelay
from tunneld.http import DirectSocketStream, HttpLimits, HttpServer, Router
from tunneld.keys import generate_private_key, public_key
from tunneld.net._derp_link import StreamLink
from tunneld.net.derp import DerpClient, DerpConnectError, DerpConnectionClosed
from tunneld.proto.derp import (
    PROTOCOL_VERSION,
    ClientHello,
    RecvPacket,
    ServerConnection,
    ServerInfo,
)


async def start_relay(
    nursery: trio.Nursery,
    *,
    raw: bool = True,
    websocket: bool = True,
    allowed: bytes | None = None,
    direct: bool = False,
) -> tuple[DerpRelay, str]:
    async def authorize(key: bytes) -> bool:
        return allowed is None or key == allowed

    relay = DerpRelay(RELAY_PRIVATE, authorize=authorize, rng=random.Random(7))
    router = Router()
    if websocket:
        router.websocket(
            "/derp", relay.handle_websocket, subprotocols=["derp"], require_subprotocol=True
        )
    if raw:
        router.upgrade("/derp", "DERP", relay.handle_stream, method="GET")
    server = HttpServer(router, limits=HttpLimits(max_connections=64), direct_streams=direct)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    return relay, f"ws://{host}:{port}/derp"


class StreamMessages:
    """``get_message``/``send_message`` over a raw stream, for ``RawDerp``: DERP frames
    are a byte stream, so any chunking is as valid as WebSocket messages."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        self.stream = stream
        self.buffered = buffered

    async def get_message(self) -> bytes:
        if self.buffered:
            data, self.buffered = self.buffered, b""
            return data
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("relay closed the connection")
        return data

    async def send_message(self, data: bytes) -> None:
        await self.stream.send_all(data)


async def tailscale_style_upgrade(url: str) -> tuple[trio.SocketStream, bytes, bytes]:
    """Send derphttp's request by hand; returns the stream, the 101 head and the bytes
    that followed it."""
    host, port = url.removeprefix("ws://").removesuffix("/derp").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        f"GET /derp HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
        "Upgrade: DERP\r\nUser-Agent: Go-http-client/1.1\r\n\r\n".encode()
    )
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, f"closed before the response head ended: {data!r}"
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return stream, head, rest


async def test_raw_and_websocket_clients_relay_to_each_other(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery)
    async with (
        DerpClient.connect(url, generate_private_key()) as raw,
        DerpClient.connect(url, generate_private_key(), transport="websocket") as ws,
    ):
        assert raw.transport == "derp"
        assert ws.transport == "websocket"
        assert raw.server_key == ws.server_key == relay.public_key
        big = bytes(range(256)) * 256  # one 64 KiB packet, DERP's limit
        await raw.send_packets([(ws.public_key, b"to ws"), (ws.public_key, big)])
        assert await receive_data_event(ws) == RecvPacket(raw.public_key, b"to ws")
        assert await receive_data_event(ws) == RecvPacket(raw.public_key, big)
        await ws.send_packet(raw.public_key, b"to raw")
        assert await receive_data_event(raw) == RecvPacket(ws.public_key, b"to raw")
        assert 0 < await raw.ping() < 5
    assert relay.stats.packets_relayed == 3


async def test_auto_falls_back_to_websocket_and_derp_only_says_why(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery, raw=False)
    async with DerpClient.connect(url, generate_private_key()) as client:
        assert client.transport == "websocket"
    with pytest.raises(DerpConnectError, match="HTTP 426"):
        async with DerpClient.connect(url, generate_private_key(), transport="derp"):
            pass
    with pytest.raises(ValueError, match="transport"):
        async with DerpClient.connect(url, generate_private_key(), transport="tcp"):  # type: ignore[arg-type]
            pass


async def test_tailscale_style_request_gets_101_and_the_derp_handshake(
    nursery: trio.Nursery,
) -> None:
    relay, url = await start_relay(nursery)
    stream, head, rest = await tailscale_style_upgrade(url)
    async with stream:
        status, *headers = head.decode().split("\r\n")
        assert status == "HTTP/1.1 101 Switching Protocols"
        assert "upgrade: derp" in [line.lower() for line in headers]
        raw = RawDerp(StreamMessages(stream, rest), generate_private_key())  # type: ignore[arg-type]
        info = await raw.handshake()
        assert info["version"] == 2
        async with DerpClient.connect(url, generate_private_key()) as other:
            await raw.send_packet(other.public_key, b"from a hand-made client")
            assert await receive_data_event(other) == RecvPacket(
                raw.key, b"from a hand-made client"
            )
    assert relay.stats.clients_total == 2


async def test_derp_bytes_that_came_with_the_101_head_start_the_handshake(
    nursery: trio.Nursery,
) -> None:
    # The 101 head and SERVER_KEY in one write (so normally one read for the client):
    # the bytes after the head must not be lost between the upgrade and the handshake.
    relay_private = generate_private_key()

    async def upgrade_then_derp(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
            core = ServerConnection(relay_private)
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n"
                b"Connection: Upgrade\r\n\r\n" + core.data_to_send()
            )
            while data := await stream.receive_some(4096):
                core.receive_data(data)
                if isinstance(core.next_event(), ClientHello):
                    core.accept(ServerInfo(PROTOCOL_VERSION))
                    await stream.send_all(core.data_to_send())

    listeners = await nursery.start(partial(trio.serve_tcp, upgrade_then_derp, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with DerpClient.connect(
            f"ws://127.0.0.1:{port}/derp", generate_private_key(), transport="derp"
        ) as client:
            assert client.transport == "derp"
            assert client.server_key == public_key(relay_private)
            assert client.server_info.version == PROTOCOL_VERSION


async def test_bad_frame_on_a_raw_stream_closes_only_that_client(nursery: trio.Nursery) -> None:
    relay, url = await start_relay(nursery)
    async with (
        DerpClient.connect(url, generate_private_key()) as good_a,
        DerpClient.connect(url, generate_private_key()) as good_b,
    ):
        stream, _head, rest = await tailscale_style_upgrade(url)
        async with stream:
            raw = RawDerp(StreamMessages(stream, rest), generate_private_key())  # type: ignore[arg-type]
            await raw.handshake()
            await stream.send_all(raw_frame(0x07, b"\x01\x02"))  # NOTE_PREFERRED of 2 bytes
            with trio.fail_after(5), pytest.raises(EOFError):
                await raw.next_data_frame()
        await good_a.send_packet(good_b.public_key, b"still fine")
        assert await receive_data_event(good_b) == RecvPacket(good_a.public_key, b"still fine")
    assert relay.stats.protocol_errors == 1


async def test_refused_key_on_a_raw_stream_is_a_clear_error(nursery: trio.Nursery) -> None:
    allowed = generate_private_key()
    relay, url = await start_relay(nursery, allowed=public_key(allowed))
    with pytest.raises(DerpConnectError, match="during the DERP handshake"):
        async with DerpClient.connect(url, generate_private_key(), transport="derp"):
            pass
    async with DerpClient.connect(url, allowed) as client:
        assert client.transport == "derp"
    assert relay.stats.refused == 1


async def test_plain_get_on_the_relay_path_names_both_upgrades(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery)
    host, port = url.removeprefix("ws://").removesuffix("/derp").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET /derp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                data += chunk
    assert data.startswith(b"HTTP/1.1 426 ")


async def test_receive_batch_keeps_order_under_back_pressure(nursery: trio.Nursery) -> None:
    _relay, url = await start_relay(nursery)
    async with (
        DerpClient.connect(url, generate_private_key()) as sender,
        # Two events at most: the reader must stop and resume, losing nothing.
        DerpClient.connect(url, generate_private_key(), event_buffer=2) as receiver,
    ):
        payloads = [bytes([i]) * (1000 + i) for i in range(20)]
        await sender.send_packets([(receiver.public_key, p) for p in payloads])
        got: list[bytes] = []
        with trio.fail_after(10):
            while len(got) < len(payloads):
                batch = await receiver.receive_batch()
                assert 1 <= len(batch) <= 2
                got += [e.data for e in batch if isinstance(e, RecvPacket)]
        assert got == payloads
        await receiver.aclose()
        with trio.fail_after(10):
            while True:
                try:
                    await receiver.receive_batch()
                except DerpConnectionClosed:
                    break


@pytest.mark.parametrize(
    ("scheme", "error"),
    [("ws", "not HTTP"), ("wss", "relay connection failed")],
)
async def test_a_server_that_is_not_a_relay_is_a_clear_connect_error(
    nursery: trio.Nursery, scheme: str, error: str
) -> None:
    async def not_http(stream: trio.SocketStream) -> None:
        async with stream:  # (h11 judges a head only once it ends, or the stream does)
            await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await stream.receive_some()

    listeners = await nursery.start(partial(trio.serve_tcp, not_http, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(DerpConnectError, match=error):
        async with DerpClient.connect(
            f"{scheme}://127.0.0.1:{port}/derp", generate_private_key(), transport="derp"
        ):
            pass


@pytest.mark.skipif(
    not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="TCP_NOTSENT_LOWAT is Linux/macOS only"
)
@pytest.mark.parametrize("direct", [False, True])
async def test_raw_derp_streams_take_a_batch_of_packets_per_write(
    nursery: trio.Nursery, direct: bool
) -> None:
    # trio's 16 KiB TCP_NOTSENT_LOWAT split every 64 KiB relayed packet into several
    # sends; both ends of a raw DERP stream raise it (to the relay's batch size),
    # whether the relay's HTTP server hands it trio's stream or a DirectSocketStream.
    relay, url = await start_relay(nursery, direct=direct)
    key = generate_private_key()
    async with DerpClient.connect(url, key, transport="derp") as client:
        option = (socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
        link = client._link
        assert isinstance(link, StreamLink)
        # The client's plain TCP stream calls the kernel directly (DirectSocketStream).
        assert isinstance(link._stream, DirectSocketStream)
        assert link._stream.socket.getsockopt(*option) == 256 * 1024
        assert link._stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with trio.fail_after(5):
            while not relay.is_connected(public_key(key)):  # noqa: ASYNC110
                await trio.sleep(0.01)
        served = relay._clients[public_key(key)].link
        assert isinstance(served, StreamLink)
        expected = DirectSocketStream if direct else trio.SocketStream
        assert isinstance(served._stream, expected)
        assert served._stream.socket.getsockopt(*option) == 256 * 1024
        await client.send_packet(client.public_key, b"to myself")
        assert await receive_data_event(client) == RecvPacket(client.public_key, b"to myself")
