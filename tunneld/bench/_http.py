"""``tunneld bench http``: requests/s and latency of tunneld.http on loopback.

Baseline measured in the same run: a trio server that answers every request head
with a canned response without parsing it, driven by the same client, so the ratio
is the cost of h11, routing, Request/Response and logging. Also WebSocket echo
round trips against a raw TCP echo of the same payload.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import trio
import trio_websocket

from tunneld.bench import BenchResult, percentile
from tunneld.http import HttpServer, Request, Response, Router

__all__ = ["add_arguments", "run"]

_CANNED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n\r\npong"
)
_REQUEST = b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="time spent on each case (default 1.0)"
    )
    parser.add_argument(
        "--connections", type=int, default=4, help="concurrent keep-alive clients (default 4)"
    )
    parser.add_argument(
        "--message", type=int, default=1024, help="WebSocket message bytes (default 1024)"
    )


async def _canned_server(stream: trio.SocketStream) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                del buffer[: end + 4]
                await stream.send_all(_CANNED)


async def _raw_echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def _http_client(port: int, deadline: float, latencies: list[float]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    async with stream:
        while trio.current_time() < deadline:
            start = time.perf_counter()
            await stream.send_all(_REQUEST)
            # Responses here are small with Content-Length; read to the end of the body.
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    head = bytes(buffer[:end]).lower()
                    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(buffer) >= end + 4 + length:
                        del buffer[: end + 4 + length]
                        break
                buffer += await stream.receive_some(65536)
            latencies.append(time.perf_counter() - start)


async def _measure(
    client: Callable[[float, list[float]], Awaitable[None]], seconds: float, connections: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = trio.current_time() + seconds
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(client, deadline, latencies)
    return len(latencies) / (time.perf_counter() - start), latencies


def _row(case: str, rate: float, latencies: list[float], baseline: float) -> dict[str, object]:
    return {
        "case": case,
        "per_s": rate,
        "p50_us": percentile(latencies, 0.5) * 1e6,
        "p99_us": percentile(latencies, 0.99) * 1e6,
        "vs_baseline": rate / baseline,
    }


async def _bench(options: argparse.Namespace) -> BenchResult:
    async def ping(request: Request) -> Response:
        return Response.text("pong")

    async def echo(request: Request, websocket: trio_websocket.WebSocketConnection) -> None:
        while True:
            await websocket.send_message(await websocket.get_message())

    router = Router()
    router.route("GET", "/ping", ping)
    router.websocket("/echo", echo)
    server = HttpServer(router)
    seconds, connections = options.seconds, options.connections
    message = b"x" * options.message
    rows: list[dict[str, object]] = []
    async with trio.open_nursery() as nursery:
        canned = await nursery.start(partial(trio.serve_tcp, _canned_server, 0, host="127.0.0.1"))
        canned_port = canned[0].socket.getsockname()[1]
        echo_listeners = await nursery.start(
            partial(trio.serve_tcp, _raw_echo, 0, host="127.0.0.1")
        )
        echo_port = echo_listeners[0].socket.getsockname()[1]
        _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)

        base_rate, base_lat = await _measure(
            lambda d, lat: _http_client(canned_port, d, lat), seconds, connections
        )
        rows.append(_row("baseline: canned response, no parsing", base_rate, base_lat, base_rate))
        rate, lat = await _measure(lambda d, lat: _http_client(port, d, lat), seconds, connections)
        rows.append(_row("tunneld.http GET keep-alive", rate, lat, base_rate))

        async def raw_echo_client(deadline: float, latencies: list[float]) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", echo_port)
            async with stream:
                while trio.current_time() < deadline:
                    start = time.perf_counter()
                    await stream.send_all(message)
                    got = 0
                    while got < len(message):
                        got += len(await stream.receive_some(65536))
                    latencies.append(time.perf_counter() - start)

        async def websocket_client(deadline: float, latencies: list[float]) -> None:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/echo") as ws:
                while trio.current_time() < deadline:
                    start = time.perf_counter()
                    await ws.send_message(message)
                    await ws.get_message()
                    latencies.append(time.perf_counter() - start)

        echo_rate, echo_lat = await _measure(raw_echo_client, seconds, connections)
        rows.append(_row("baseline: raw TCP echo", echo_rate, echo_lat, echo_rate))
        rate, lat = await _measure(websocket_client, seconds, connections)
        rows.append(_row("tunneld.http WebSocket echo", rate, lat, echo_rate))
        server.shutdown(1)
        nursery.cancel_scope.cancel()
    return BenchResult(
        title=f"tunneld.http on loopback ({connections} clients, {seconds:g} s per case)",
        columns=["case", "per_s", "p50_us", "p99_us", "vs_baseline"],
        rows=rows,
        notes=[
            "per_s: round trips per second over all clients; access logging is on but "
            "not printed (level above info).",
            f"WebSocket rows echo {options.message}-byte messages.",
        ],
    )


def run(options: argparse.Namespace) -> BenchResult:
    # The access log line per request is part of the cost; keep it, but unprinted.
    logger = logging.getLogger("tunneld.http")
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        return trio.run(_bench, options)
    finally:
        logger.setLevel(old_level)
