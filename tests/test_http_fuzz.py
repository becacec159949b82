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

import h11
import pytest
import trio
import trio_websocket
from _http_support import capture_http_log, mutated, request_bytes, small_limits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.http import HttpServer, Request, Response, Router
from tunneld.http._connection import _header_lines, _parse_target
from tunneld.http._router import dispatch

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


def mutated_requests() -> st.SearchStrategy[bytes]:
    return mutated(SEEDS, [b"\r\n", b"\n", b":", b" ", b"\x00", b"\r\n\r\n", b","])


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


async def _noop(request: Request) -> Response:
    return Response.text("")  # pragma: no cover


@CI_SETTINGS
@given(
    method=st.text(max_size=10),
    target=st.text(max_size=80),
    connection=st.lists(st.text(max_size=10), max_size=3),
    upgrade=st.lists(st.sampled_from(["websocket", "tunneld-stream", "h2c", ""]), max_size=2),
)
def test_routing_any_target_gives_a_decision(
    method: str, target: str, connection: list[str], upgrade: list[str]
) -> None:
    router = Router()
    router.route("GET", "/a/{x}", _noop)
    router.route("POST", "/a/b", _noop)
    router.websocket("/ws/{room}", echo_websocket)
    router.upgrade("/dial", "tunneld-stream", drain)
    parsed = _parse_target(target)
    if parsed is None:
        return
    raw_path, _query = parsed
    decision = dispatch(router, method, raw_path, connection, upgrade)
    targets = [decision.response, decision.handler, decision.websocket, decision.upgrade]
    assert sum(t is not None for t in targets) == 1
    if decision.response is not None:
        assert 200 <= decision.response.status < 600


_HEADER_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(["a", "Z", "-", " ", "\t", "\r", "\n", "\x00", "\x01", "\x7f", "é", "ÿ"]),
        st.characters(max_codepoint=0x17F),
    ),
    max_size=12,
)


def _h11_accepts(name: str, value: str) -> bool:
    try:
        h11.Response(status_code=200, headers=[(name.encode("latin-1"), value.encode("latin-1"))])
    except (h11.LocalProtocolError, UnicodeEncodeError):
        return False
    return True


def _ours_accepts(name: str, value: str) -> bool:
    try:
        _header_lines([(name, value)])
    except ValueError:
        return False
    return True


def test_response_header_checks_match_h11_for_every_character() -> None:
    # Every latin-1 character (and one beyond), alone, inside, leading and trailing.
    for code in [*range(256), 0x100]:
        c = chr(code)
        for name, value in [
            ("X", c),
            ("X", f"a{c}b"),
            ("X", f"{c}a"),
            ("X", f"a{c}"),
            (c, "v"),
            (f"a{c}b", "v"),
        ]:
            assert _ours_accepts(name, value) == _h11_accepts(name, value), (name, value)


@CI_SETTINGS
@given(
    name=st.one_of(_HEADER_TEXT, st.sampled_from(["Content-Length", "connection", "Date"])),
    value=_HEADER_TEXT,
)
def test_response_header_checks_match_h11(name: str, value: str) -> None:
    # The server writes handlers' header fields itself (h11 only sees framing): it must
    # accept exactly what h11 accepts, and write what h11 would have written. Framing
    # fields are dropped (the server frames the body), so h11 judges their value under
    # a neutral name.
    framing = name.lower() in ("content-length", "transfer-encoding")
    expected: bytes | None
    try:
        h11_response = h11.Response(
            status_code=200,
            headers=[(b"X-Probe" if framing else name.encode("latin-1"), value.encode("latin-1"))],
        )
        expected = b"".join(b"%s: %s\r\n" % pair for pair in h11_response.headers.raw_items())
    except (h11.LocalProtocolError, UnicodeEncodeError):
        expected = None
    try:
        lines, connection = _header_lines([(name, value)])
    except ValueError:
        assert expected is None
        return
    assert expected is not None
    if framing:
        assert (lines, connection) == (b"", [])
    elif name.lower() == "connection":
        assert (lines, connection) == (b"", [(name, value)])
    else:
        assert lines == expected
