"""LocalApiClient.dial against a real Unix socket whose server answers canned bytes.

The daemon's own answers are covered end to end in test_daemon_local_api.py and
test_daemon_e2e.py; these pin the client's hand-built request and its reading of
answers the daemon should never send.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tunneld.daemon._client import ApiError, LocalApiClient
from tunneld.http import HttpLimits
from tunneld.http._simple_head import parse_simple_head

TIMEOUT = 20.0
_NOT_FOUND = b'{"error":{"code":"unknown_agent","message":"no agent web9"}}'


@pytest.fixture
def socket_dir() -> AsyncIterator[Path]:
    # AF_UNIX paths are short: pytest's tmp_path can be too long.
    with tempfile.TemporaryDirectory(prefix="tdc-") as tmp:
        yield Path(tmp)


async def serve_canned(
    path: Path, answer: bytes, seen: list[bytes], *, task_status: trio.TaskStatus[None]
) -> None:
    """Accept one connection, read the request head, send ``answer``, keep it open
    (echoing what follows) until the client leaves."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)
    listener = trio.SocketListener(sock)
    task_status.started()
    stream = await listener.accept()
    async with stream, listener:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        seen.append(head)
        await stream.send_all(answer)
        if not answer.startswith(b"HTTP/1.1 101"):
            return
        while data := await stream.receive_some(4096):
            await stream.send_all(data)
        await stream.send_eof()


async def test_the_request_is_one_well_formed_head(socket_dir: Path) -> None:
    path = socket_dir / "api.sock"
    seen: list[bytes] = []
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        b"Upgrade: tunneld-stream\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_canned, path, answer, seen)
            stream = await LocalApiClient(path).dial("web1", "tcp:22")
            await stream.send_all(b"ping")
            assert await stream.receive_some(10) == b"ping"
            await stream.aclose()
    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"POST /v0/dial HTTP/1.1"
    headers = {
        n.lower(): v.strip() for n, _, v in (line.partition(b":") for line in lines[1:] if line)
    }
    assert headers[b"upgrade"] == b"tunneld-stream"
    assert headers[b"connection"] == b"Upgrade"
    assert headers[b"tunneld-agent"] == b"web1"
    assert headers[b"tunneld-service"] == b"tcp:22"
    assert headers[b"content-length"] == b"0"
    # Plain enough for the local API's fast path (tests/test_http_simple_head.py).
    head = parse_simple_head(seen[0], HttpLimits().max_request_head_bytes)
    assert head is not None
    assert head.end == len(seen[0])


async def test_bytes_sent_with_the_101_are_not_lost(socket_dir: Path) -> None:
    path = socket_dir / "api.sock"
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: TUNNELD-STREAM\r\n"
        b"connection: upgrade\r\n\r\nbanner\n"
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_canned, path, answer, [])
            stream = await LocalApiClient(path).dial("web1", "echo")
            assert await stream.receive_some(100) == b"banner\n"
            await stream.send_all(b"x")
            assert await stream.receive_some(100) == b"x"
            await stream.aclose()


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(_NOT_FOUND), _NOT_FOUND),
            404,
            "unknown_agent",
        ),
        # A 101 to some other protocol is not ours: h11 refuses an unasked-for switch.
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 502, "bad_response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200, "upgrade_refused"),
        (b"HTTP/1.1 503 Unavail", 502, "bad_response"),  # cut short, then closed
        (b"", 502, "bad_response"),  # closed without a word
    ],
)
async def test_anything_but_our_101_is_an_api_error(
    socket_dir: Path, answer: bytes, status: int, code: str
) -> None:
    path = socket_dir / "api.sock"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_canned, path, answer, [])
            with pytest.raises(ApiError) as caught:
                await LocalApiClient(path).dial("web1", "echo")
    assert (caught.value.status, caught.value.code) == (status, code)


@pytest.mark.parametrize("agent", ["web1\r\nX-Evil: 1", "", "  ", "wëb", "a\x00b"])
async def test_a_name_that_cannot_be_a_header_value_is_refused_before_connecting(
    socket_dir: Path, agent: str
) -> None:
    # Nothing listens at this path: the check comes before the connection.
    with pytest.raises(ValueError, match="agent"):
        await LocalApiClient(socket_dir / "none.sock").dial(agent, "echo")
