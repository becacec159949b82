"""DirectSocketStream: trio's stream semantics over real socket pairs, minus the
schedule point of every operation the kernel completes at once."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from tunneld.http import DirectSocketStream, raise_notsent_lowat


def _pair(ready_streak: int = 1) -> tuple[DirectSocketStream, DirectSocketStream]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return (
        DirectSocketStream(left, ready_streak=ready_streak),
        DirectSocketStream(right, ready_streak=ready_streak),
    )


async def _fill(stream: DirectSocketStream) -> None:
    """Send until the kernel's buffers are full (as trio's own SocketStream tests do)."""

    async def sender() -> None:
        while True:
            await stream.send_all(b"x" * 10000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def _small_send_buffer_pair() -> tuple[DirectSocketStream, DirectSocketStream]:
    """A pair whose left side fills its send buffer after a few KiB."""
    left, right = _pair(ready_streak=16)
    left.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return left, right


async def _receive_exactly(stream: DirectSocketStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        received += await stream.receive_some(65536)
    return bytes(received)


async def test_passes_trios_stream_conformance_checks_as_a_full_checkpoint() -> None:
    async def maker() -> tuple[DirectSocketStream, DirectSocketStream]:
        return _pair()

    async def clogged() -> tuple[DirectSocketStream, DirectSocketStream]:
        left, right = _pair()
        await _fill(left)
        await _fill(right)
        return left, right

    await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_a_clogged_send_waits_for_room_and_busy_is_refused() -> None:
    left, right = _small_send_buffer_pair()
    payload = b"y" * (1 << 20)
    async with left, right:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send_all, payload)
            await trio.testing.wait_all_tasks_blocked()
            # The sender waits for room: a second sender is refused, not interleaved.
            with pytest.raises(trio.BusyResourceError):
                await left.send_all(b"z")
            with pytest.raises(trio.BusyResourceError):
                await left.send_eof()
            received = await _receive_exactly(right, len(payload))
        assert received == payload


async def test_send_all_parts_sends_every_part_in_order_through_partial_writes() -> None:
    left, right = _small_send_buffer_pair()
    # Parts of every size, empty ones too, more than one sendmsg takes at once.
    parts: list[bytes | memoryview] = [bytes([i % 251]) * (i * 37 % 9000) for i in range(700)]
    parts[3] = memoryview(b"a view" * 1000)
    expected = b"".join(parts)
    async with left, right:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send_all_parts, parts)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await left.send_all(b"z")
            received = await _receive_exactly(right, len(expected))
        assert received == expected
        await left.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all_parts([b"after eof"])


async def test_ready_operations_skip_the_schedule_point_but_not_forever() -> None:
    left, right = _pair(ready_streak=4)
    async with left, right:
        task = trio.lowlevel.current_task()
        await trio.lowlevel.checkpoint()  # start from a clean streak count
        left._streak = 0
        yields = []
        for _ in range(8):
            before = task._schedule_points  # type: ignore[attr-defined]
            await left.send_all(b"x")
            yields.append(task._schedule_points - before)  # type: ignore[attr-defined]
        # Three sends in a row without a schedule point, then one (ready_streak=4).
        assert yields == [0, 0, 0, 1, 0, 0, 0, 1]
        assert await right.receive_some(100) == b"x" * 8


async def test_every_operation_is_a_cancellation_point() -> None:
    left, right = _pair(ready_streak=16)
    async with left, right:
        with trio.CancelScope() as scope:
            scope.cancel()
            await left.send_all(b"x")
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await right.receive_some(10)
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await left.send_eof()
        assert scope.cancelled_caught
        # Nothing was sent: the cancelled send happened before the call.
        await left.send_eof()
        assert await right.receive_some(10) == b""


async def test_a_reset_is_broken_and_close_wakes_a_waiting_receiver() -> None:
    left, right = _pair()
    # The peer goes away with unread data (SO_LINGER 0: a reset): our sends break.
    await left.send_all(b"unread")
    right.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await right.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await left.receive_some(10)
    with pytest.raises(trio.BrokenResourceError):
        await left.send_all(b"more")
    await left.aclose()

    left, right = _pair()
    async with trio.open_nursery() as nursery:

        async def receive_closed() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await left.receive_some()

        nursery.start_soon(receive_closed)
        await trio.testing.wait_all_tasks_blocked()
        await left.aclose()
    await right.aclose()
    await left.aclose()  # idempotent


async def test_take_over_moves_a_trio_socket_stream() -> None:
    a, b = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    direct = DirectSocketStream.take_over(stream)
    peer = DirectSocketStream(b)
    async with direct, peer:
        await direct.send_all(b"moved")
        assert await peer.receive_some(10) == b"moved"
        await stream.aclose()  # the old owner's close leaves the connection alone
        await peer.send_all(b"still")
        assert await direct.receive_some(10) == b"still"


def test_only_stream_sockets() -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram,
        pytest.raises(ValueError, match="SOCK_STREAM"),
    ):
        DirectSocketStream(datagram)
    left, right = socket.socketpair()
    with left, right, pytest.raises(ValueError, match="ready_streak"):
        DirectSocketStream(left, ready_streak=0)


async def test_a_server_with_direct_streams_serves_requests_and_upgrades(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Keep-alive requests, then an upgrade whose handler gets the DirectSocketStream.
    import tempfile

    from tunneld.http import HttpServer, Request, Response, Router, open_unix_listener

    seen: list[type] = []

    async def hello(request: Request) -> Response:
        return Response.json(
            {"uid": request.peer_credentials.uid if request.peer_credentials else None}
        )

    async def echo(request: Request, stream: trio.abc.Stream) -> None:
        seen.append(type(stream))
        while data := await stream.receive_some():
            await stream.send_all(data)

    router = Router()
    router.route("GET", "/hello", hello)
    router.upgrade("/up", "echo", echo)
    server = HttpServer(router, direct_streams=True)
    with tempfile.TemporaryDirectory(prefix="tds-") as tmp:
        path = f"{tmp}/api.sock"
        listener = await open_unix_listener(path, mode=0o600)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [listener])
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            client = DirectSocketStream(sock)
            async with client:
                get = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                up = b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
                await client.send_all(get + get)
                answers = b""
                with trio.fail_after(10):
                    while answers.count(b"HTTP/1.1 200 ") < 2 or not answers.endswith(b"}"):
                        answers += await client.receive_some()
                assert answers.count(b'{"uid":') == 2
                await client.send_all(up)
                answer = b""
                with trio.fail_after(10):
                    while not answer.endswith(b"\r\n\r\n"):
                        answer += await client.receive_some()
                    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
                    await client.send_all(b"ping")
                    assert await client.receive_some() == b"ping"
            server.shutdown(1.0)
    assert seen == [DirectSocketStream]


async def test_direct_streams_serve_tcp_too(nursery: trio.Nursery) -> None:
    from tunneld.http import HttpServer, Request, Response, Router

    kinds: list[type] = []

    async def hello(request: Request) -> Response:
        return Response.text("hi")

    async def echo(request: Request, stream: trio.abc.Stream) -> None:
        kinds.append(type(stream))
        while data := await stream.receive_some():
            await stream.send_all(data)

    router = Router()
    router.route("GET", "/hello", hello)
    router.upgrade("/up", "echo", echo)
    server = HttpServer(router, direct_streams=True)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    client = await trio.open_tcp_stream(host, port)
    async with client:
        await client.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.send_all(b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n")
        await client.send_all(b"Upgrade: echo\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while answer.count(b"\r\n\r\n") < 2:
                answer += await client.receive_some()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b"hi" in answer
            assert b"HTTP/1.1 101 Switching Protocols\r\n" in answer
            await client.send_all(b"tcp")
            assert await client.receive_some() == b"tcp"
    assert kinds == [DirectSocketStream]


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="no TCP_NOTSENT_LOWAT")
async def test_raise_notsent_lowat_reaches_the_tcp_socket_under_a_wrapper() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port) as tcp:
        option = socket.TCP_NOTSENT_LOWAT
        assert tcp.socket.getsockopt(socket.IPPROTO_TCP, option) == 16384  # trio's
        # Found through a wrapper's transport_stream, as for TLS or a replay stream.
        wrapper = trio.StapledStream(tcp, tcp)
        wrapper.transport_stream = tcp  # type: ignore[attr-defined]
        raise_notsent_lowat(wrapper, 256 * 1024)
        assert tcp.socket.getsockopt(socket.IPPROTO_TCP, option) == 256 * 1024
        direct = DirectSocketStream.take_over(tcp)
        raise_notsent_lowat(direct, 128 * 1024)
        assert direct.socket.getsockopt(socket.IPPROTO_TCP, option) == 128 * 1024


def test_raise_notsent_lowat_leaves_a_unix_stream_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        raise_notsent_lowat(DirectSocketStream(a), 256 * 1024)  # no error, nothing to set
