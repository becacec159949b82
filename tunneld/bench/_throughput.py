"""``tunneld bench throughput``: one overlay stream's bulk MB/s, direct and over the relay.

Two in-process overlay nodes and an in-process control server (coordinator, DERP relay)
on loopback; one stream carries ``--mb`` megabytes to a counting sink that answers at
EOF. ``direct``: both nodes announce their loopback UDP address and the transfer starts
once the direct path is validated. ``relay``: neither announces any endpoint
(``OverlayConfig(endpoints=())``, no STUN), so every packet goes through DERP.

The ceiling, measured in the same run: the same number of bytes as WireGuard transport
packets of one mux datagram each (encrypt, a real loopback UDP send and receive,
decrypt) between a ``WireGuardCore`` pair, without the mux or trio.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import trio

from tunneld.bench import BenchResult
from tunneld.config import Duration, HostPort
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay, OverlayConfig
from tunneld.proto.mux import MuxConfig
from tunneld.proto.noise import DataReceived, WireGuardCore

__all__ = ["add_arguments", "run"]

WAIT = 30.0
CHUNK = 64 * 1024
# Our 17-byte connection-id header rides in front of every mux datagram (docs/overlay.md).
HEADER = 17
_WALL0 = 1_700_000_000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mb", type=float, default=8.0, help="megabytes over the direct path (default 8)"
    )
    parser.add_argument(
        "--relay-mb",
        type=float,
        default=4.0,
        help="megabytes over the relay (default 4)",
    )


async def _sink(peer: str, service: str, stream: MuxStream) -> None:
    total = 0
    while data := await stream.receive_some(CHUNK):
        total += len(data)
    await stream.send_all(str(total).encode())
    await stream.send_eof()


async def _transfer(
    urls: tuple[str, str], tokens: tuple[str, str], *, direct: bool, size: int
) -> float:
    """Seconds for ``size`` bytes through one stream, from first byte to the sink's answer."""
    coordinate_url, derp_url = urls
    endpoints = None if direct else ()

    def node(name: str, token: str) -> Overlay:
        async def provide() -> str:
            return token

        config = OverlayConfig(
            name=name,
            private_key=generate_private_key(),
            coordinate_url=coordinate_url,
            derp_url=derp_url,
            udp_host="127.0.0.1",
            endpoints=endpoints,
            stun=None,
        )
        return Overlay(config, provide, on_stream=_sink)

    agent = node("bench-agent", tokens[0])
    client = node("bench-client", tokens[1])
    async with trio.open_nursery() as own:
        await own.start(agent.serve)
        await own.start(client.serve)
        await client.add_tunnel("bench-agent")
        with trio.fail_after(WAIT):
            stream = await client.open_stream("bench-agent", "sink")
            if direct:
                await client.wait_direct("bench-agent")
        block = os.urandom(CHUNK)
        start = time.perf_counter()
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            await stream.send_all(piece)
            sent += len(piece)
        await stream.send_eof()
        answer = b""
        while data := await stream.receive_some():
            answer += data
        elapsed = time.perf_counter() - start
        if int(answer) != size:
            raise RuntimeError(f"the sink counted {answer!r} bytes, expected {size}")
        await stream.aclose()
        own.cancel_scope.cancel()
    return elapsed


async def _overlay_rates(direct_size: int, relay_size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="tunneld-bench-") as tmp:
        data_dir = Path(tmp)
        store = await SqliteStore.open(data_dir / "control.db")
        config = replace(
            ControlConfig(),
            listen=HostPort("127.0.0.1", 0),
            stun_listen=HostPort("127.0.0.1", 0),
            data_dir=data_dir,
            shutdown_grace=Duration(0.5),
        )
        server = ControlServer(
            config,
            store,
            relay_factory=default_relay_factory(),
            stun_serve=default_stun_serve(),
        )
        try:
            async with trio.open_nursery() as nursery:
                info = await nursery.start(server.serve)
                now = time.time()
                await store.add_user("bench", None, now)
                agent_token, client_token = new_token(), new_token()
                await store.add_token(
                    agent_token.id, "bench", "bench-agent", agent_token.secret_hash, now, None
                )
                await store.add_token(
                    client_token.id, "bench", None, client_token.secret_hash, now, None
                )
                urls = (info.coordinate_url, info.derp_url)
                tokens = (agent_token.value, client_token.value)
                direct = await _transfer(urls, tokens, direct=True, size=direct_size)
                relay = await _transfer(urls, tokens, direct=False, size=relay_size)
                server.shutdown()
                with trio.move_on_after(5):
                    await server.stopped.wait()
        finally:
            await store.aclose()
    return direct_size / direct / 1e6, relay_size / relay / 1e6


def _ceiling(size: int, packet: int) -> float:
    """MB/s of WireGuard payload bytes: encrypt, loopback UDP send/recv, decrypt."""
    a = WireGuardCore(generate_private_key())
    b = WireGuardCore(generate_private_key())
    a.add_peer(b.public_key)
    b.add_peer(a.public_key)
    wall = _WALL0 + 10.0
    a.initiate(b.public_key, 10.0, wall)
    for _ in range(2):
        for out in a.datagrams_to_send(10.0):
            b.receive_datagram(out.data, b"a", 10.0, wall)
        for out in b.datagrams_to_send(10.0):
            a.receive_datagram(out.data, b"b", 10.0, wall)
    while a.next_event() is not None or b.next_event() is not None:
        pass
    peer = b.public_key
    payload = os.urandom(packet)
    count = max(1, size // packet)
    batch = 64  # stay well inside the receive buffer: loss would flatter the ceiling
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
    ):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5.0)
        target = rx.getsockname()
        received = 0
        start = time.perf_counter()
        done = 0
        while done < count:
            n = min(batch, count - done)
            for _ in range(n):
                a.send(peer, payload, 11.0, wall)
            for out in a.datagrams_to_send(11.0):
                tx.sendto(out.data, target)
            for _ in range(n):
                data = rx.recv(65536)
                b.receive_datagram(data, b"a", 11.0, wall)
                while (event := b.next_event()) is not None:
                    if isinstance(event, DataReceived):
                        received += len(event.payload)
            done += n
        elapsed = time.perf_counter() - start
    if received < count * packet:
        raise RuntimeError(f"ceiling: received {received} of {count * packet} payload bytes")
    return count * packet / elapsed / 1e6


def run(args: argparse.Namespace) -> BenchResult:
    direct_size = int(args.mb * 1e6)
    relay_size = int(args.relay_mb * 1e6)
    packet = MuxConfig().max_datagram_size + HEADER
    ceiling = _ceiling(direct_size, packet)
    direct, relay = trio.run(_overlay_rates, direct_size, relay_size)
    rows: list[dict[str, object]] = [
        {
            "path": path,
            "mb": size / 1e6,
            "mb_per_s": rate,
            "ceiling_mb_per_s": ceiling,
            "fraction": rate / ceiling,
        }
        for path, size, rate in (("direct", direct_size, direct), ("relay", relay_size, relay))
    ]
    return BenchResult(
        title="overlay throughput: one stream, two in-process nodes on loopback",
        columns=["path", "mb", "mb_per_s", "ceiling_mb_per_s", "fraction"],
        rows=rows,
        notes=[
            "mb_per_s: stream bytes from the first send to the sink's answer after EOF.",
            f"ceiling: {packet}-byte WireGuard payloads (one mux datagram plus our header): "
            "encrypt + loopback UDP send/recv + decrypt, one thread, no mux, no trio.",
            "relay: no endpoints announced, every packet through the in-process DERP relay.",
        ],
    )
