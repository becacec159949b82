"""``tunneld bench derp``: the DERP relay against a plain WebSocket echo on loopback.

Baseline: a WebSocket client round-trips messages through an echo endpoint of the
same HTTP server (one client → server → client trip). Relay: client A sends a packet
through the relay to client B, which sends it back (A → relay → B → relay → A, two
relay traversals). Both use the same sizes and counts; ratios are relay / baseline.
Throughput: A streams packets to B without waiting; delivered packets per second and
the relay's drops (its per-client queue is bounded, so a burst can overflow it).
The DERP clients use the WebSocket transport, like the baseline, so the ratios compare
the relay's own work (the raw ``Upgrade: DERP`` transport nodes prefer is cheaper
still: no WebSocket framing or masking).
"""

from __future__ import annotations

import argparse
import os
import random

import trio
import trio_websocket

from tunneld.bench import BenchResult, percentile
from tunneld.control._derp_relay import DerpRelay
from tunneld.http import HttpLimits, HttpServer, Request, Router
from tunneld.keys import generate_private_key
from tunneld.net.derp import DerpClient
from tunneld.proto.derp import RecvPacket

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tunneld bench derp``."""
    parser.add_argument("--round-trips", type=int, default=300, help="per size (default 300)")
    parser.add_argument("--stream", type=int, default=2000, help="packets streamed per size")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 1280, 16384], help="packet sizes in bytes"
    )


async def _echo(request: Request, ws: trio_websocket.WebSocketConnection) -> None:
    while True:
        await ws.send_message(await ws.get_message())


async def _allow(_key: bytes) -> bool:
    return True


async def _baseline(url: str, size: int, count: int) -> list[float]:
    payload = os.urandom(size)
    samples = []
    async with trio_websocket.open_websocket_url(url) as ws:
        for _ in range(count):
            start = trio.current_time()
            await ws.send_message(payload)
            await ws.get_message()
            samples.append(trio.current_time() - start)
    return samples


async def _next_packet(client: DerpClient) -> RecvPacket:
    while True:
        event = await client.receive()
        if isinstance(event, RecvPacket):
            return event


async def _relay_round_trips(url: str, size: int, count: int) -> list[float]:
    payload = os.urandom(size)
    samples = []
    async with (
        DerpClient.connect(url, generate_private_key(), transport="websocket") as a,
        DerpClient.connect(url, generate_private_key(), transport="websocket") as b,
        trio.open_nursery() as nursery,
    ):

        async def bounce() -> None:
            while True:
                packet = await _next_packet(b)
                await b.send_packet(packet.src, packet.data)

        nursery.start_soon(bounce)
        for _ in range(count):
            start = trio.current_time()
            await a.send_packet(b.public_key, payload)
            await _next_packet(a)
            samples.append(trio.current_time() - start)
        nursery.cancel_scope.cancel()
    return samples


async def _relay_stream(url: str, relay: DerpRelay, size: int, count: int) -> tuple[float, int]:
    payload = os.urandom(size)
    drops_before = sum(relay.stats.drops.values())
    async with (
        DerpClient.connect(url, generate_private_key(), transport="websocket") as a,
        DerpClient.connect(url, generate_private_key(), transport="websocket") as b,
    ):
        received = 0
        start = trio.current_time()
        for _ in range(count):
            await a.send_packet(b.public_key, payload)
        await a.ping()  # the relay has processed every packet before the pong
        with trio.move_on_after(2.0):
            while received + sum(relay.stats.drops.values()) - drops_before < count:
                await _next_packet(b)
                received += 1
        elapsed = trio.current_time() - start
    return received / elapsed, sum(relay.stats.drops.values()) - drops_before


async def _main(args: argparse.Namespace) -> BenchResult:
    relay = DerpRelay(generate_private_key(), authorize=_allow, rng=random.Random(1))
    router = Router()
    router.websocket("/derp", relay.handle_websocket, subprotocols=["derp"])
    router.websocket("/echo", _echo)
    server = HttpServer(router, limits=HttpLimits())
    rows: list[dict[str, object]] = []
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        base = f"ws://{host}:{port}"
        for size in args.sizes:
            echo = await _baseline(f"{base}/echo", size, args.round_trips)
            relayed = await _relay_round_trips(f"{base}/derp", size, args.round_trips)
            rate, drops = await _relay_stream(f"{base}/derp", relay, size, args.stream)
            echo_p50 = percentile(echo, 0.5)
            relay_p50 = percentile(relayed, 0.5)
            rows.append(
                {
                    "size": size,
                    "echo_p50_ms": echo_p50 * 1000,
                    "relay_p50_ms": relay_p50 * 1000,
                    "relay_p99_ms": percentile(relayed, 0.99) * 1000,
                    "ratio_p50": relay_p50 / echo_p50,
                    "stream_pps": rate,
                    "stream_drops": drops,
                }
            )
        nursery.cancel_scope.cancel()
    return BenchResult(
        title="DERP relay vs WebSocket echo (loopback, one process)",
        columns=[
            "size",
            "echo_p50_ms",
            "relay_p50_ms",
            "relay_p99_ms",
            "ratio_p50",
            "stream_pps",
            "stream_drops",
        ],
        rows=rows,
        notes=[
            "A relay round trip crosses the relay twice; the echo crosses the server once.",
            "stream_drops: packets the relay dropped because B's bounded queue was full.",
        ],
    )


def run(args: argparse.Namespace) -> BenchResult:
    """Run the benchmark (blocking; starts its own trio run)."""
    return trio.run(_main, args)
