"""Fuzzed request heads against a live tunneld.http server.

Random bytes and mutated valid requests (bit flips, insertions, deletions,
truncation) must get a 1xx-4xx/501 answer or a clean close, never a 500 or a crashed
connection task, and the server must answer a good request right after each one.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Iterator

import pytest
import trio
import trio_websocket
from _http_support import capture_http_log, request_bytes, small_limits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.http import HttpServer, Request, Response, Router

CI_SETTINGS = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW_SETTINGS = settings(max_examples=3000, deadline=None)

SEEDS = [
    request_bytes("GET", "/items/a?x=1"),
    request_bytes("POST", "/echo", {"Content-Type": "application/json"}, b'{"a": 1}'),
    request_bytes("POST", "/echo", {"Transfer-Encoding": "chunked"}) + b"3\r\nabc\r\n0\r\n\r\n",
    request_bytes("POST", "/echo", {"Expect": "100-continue", "Content-Length": "3"}) + b"abc",
    request_bytes(
        "GET",
        "/ws",
        {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "derp",
        },
    ),
    request_bytes("POST", "/dial", {"Connection": "Upgrade", "Upgrade": "tunneld-stream"}, b"{}"),
    request_bytes("GET", "/items/a") + request_bytes("HEAD", "/items/b"),
]


async def echo(request: Request) -> Response:
    return Response.json({"path": request.path, "len": len(request.body)})


async def echo_websocket(request: Request, websocket: trio_websocket.WebSocketConnection) -> None:
    await websocket.send_message(await websocket.get_message())


async def drain(request: Request, stream: trio.abc.Stream) -> None:
    while await stream.receive_some():
        pass


class ServerThread:
    """A server in its own thread and trio run, so hypothesis examples can be sync."""

    def __init__(self) -> None:
        router = Router()
        router.route("GET", "/items/{name}", echo)
        router.route("POST", "/echo", echo)
        router.websocket("/ws", echo_websocket, subprotocols=["derp"], require_subprotocol=True)
        router.upgrade("/dial", "tunneld-stream", drain)
        self.server = HttpServer(router, limits=small_limits(max_body_bytes=4096))
        self._ports: queue.Queue[int] = queue.Queue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                _host, port = await nursery.start(self.server.serve_tcp, "127.0.0.1", 0)
                self._ports.put(port)

    def start(self) -> int:
        self._thread.start()
        return self._ports.get(timeout=10)

    def stop(self) -> None:
        assert self._token is not None
        assert self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def live_port() -> Iterator[int]:
    with capture_http_log() as logs:
        server = ServerThread()
        port = server.start()
        yield port
        server.stop()
    crashes = logs.events("http.connection_crashed") + logs.events("http.handler_failed")
    assert crashes == []


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the server already refused and closed; that is allowed
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


def check_answer(port: int, data: bytes) -> None:
    answer = exchange(port, data)
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        statuses = [
            int(line.split(b" ")[1][:3])
            for line in answer.split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ")
        ]
        assert all(status < 500 or status == 501 for status in statuses), answer[:300]
    # The server still serves a good request.
    good = exchange(port, request_bytes("GET", "/items/ok", {"Connection": "close"}))
    assert good.startswith(b"HTTP/1.1 200 "), good[:200]


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "replace"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[position:position] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from([b"\r\n", b"\n", b":", b" ", b"\x00", b"\r\n\r\n", b","]),
                )
            )
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "replace" and data:
            data[position] = draw(st.integers(0, 255))
    return bytes(data)


@CI_SETTINGS
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash_the_server(live_port: int, data: bytes) -> None:
    check_answer(live_port, data)


@CI_SETTINGS
@given(data=mutated_requests())
def test_mutated_requests_never_crash_the_server(live_port: int, data: bytes) -> None:
    check_answer(live_port, data)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run: TUNNELD_SLOW=1")
@SLOW_SETTINGS
@given(data=st.one_of(mutated_requests(), st.binary(max_size=4000)))
def test_fuzz_long_run(live_port: int, data: bytes) -> None:
    check_answer(live_port, data)
