"""The trio mux adapter: trio's stream conformance suite, and real UDP on loopback."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
import trio.testing

from tunneld.net.mux import MemoryDatagramTransport, MuxConnection, MuxStream, UdpDatagramTransport
from tunneld.proto.mux import MuxConfig, Path


async def _connected_pair(
    nursery: trio.Nursery, config: MuxConfig | None = None
) -> tuple[MuxConnection, MuxConnection]:
    left, right = MemoryDatagramTransport.pair()
    a = MuxConnection(left, is_initiator=True, config=config, path=left.path)
    b = MuxConnection(right, is_initiator=False, config=config, path=right.path)
    await nursery.start(a.run)
    await nursery.start(b.run)
    return a, b


async def test_mux_stream_passes_trio_half_closeable_checks(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery)

    async def maker() -> tuple[MuxStream, MuxStream]:
        s1 = await a.open_stream("test")
        s2 = await b.accept_stream()
        assert s2.service == "test"
        return s1, s2

    await trio.testing.check_half_closeable_stream(maker, None)


async def test_streams_both_ways_and_many_at_once(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery)
    payloads = {i: random.Random(i).randbytes(50_000 + i * 1000) for i in range(20)}
    received: dict[str, bytes] = {}

    async def serve() -> None:
        async with trio.open_nursery() as inner:
            for _ in payloads:
                stream = await b.accept_stream()
                inner.start_soon(echo_back, stream)

    async def echo_back(stream: MuxStream) -> None:
        got = bytearray()
        while chunk := await stream.receive_some():
            got += chunk
        received[stream.service] = bytes(got)
        await stream.send_all(hashlib.sha256(got).digest())
        await stream.aclose()

    async def client(index: int) -> None:
        stream = await a.open_stream(f"svc:{index}")
        await stream.send_all(payloads[index])
        await stream.send_eof()
        digest = bytearray()
        while chunk := await stream.receive_some():
            digest += chunk
        assert bytes(digest) == hashlib.sha256(payloads[index]).digest()
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as group:
            group.start_soon(serve)
            for index in payloads:
                group.start_soon(client, index)
    assert received == {f"svc:{i}": data for i, data in payloads.items()}


async def test_stream_limit_makes_open_wait(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery, MuxConfig(max_concurrent_streams=2))
    first = await a.open_stream("one")
    await a.open_stream("two")
    with trio.move_on_after(0.2) as scope:
        await a.open_stream("three")
    assert scope.cancelled_caught, "a third stream opened beyond MAX_STREAMS 2"
    peer_first = await b.accept_stream()
    await first.aclose()
    await peer_first.aclose()
    with trio.fail_after(5):
        third = await a.open_stream("three")
    assert third.stream_id == 4


async def test_connection_close_breaks_streams(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery)
    stream = await a.open_stream("x")
    peer = await b.accept_stream()
    await a.aclose(0x1234, "bye")
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await peer.receive_some()
    assert b.closed is not None
    assert (b.closed.error_code, b.closed.reason, b.closed.by_peer) == (0x1234, "bye", True)
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"late")


async def test_multi_megabyte_transfer_over_real_udp_sockets(nursery: trio.Nursery) -> None:
    sock_a = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sock_b = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock_a.bind(("127.0.0.1", 0))
    await sock_b.bind(("127.0.0.1", 0))
    with sock_a, sock_b:
        transport_a = UdpDatagramTransport(sock_a, sock_b.getsockname())
        transport_b = UdpDatagramTransport(sock_b, sock_a.getsockname())
        a = MuxConnection(transport_a, is_initiator=True, path=transport_a.path)
        b = MuxConnection(transport_b, is_initiator=False, path=transport_b.path)
        await nursery.start(a.run)
        await nursery.start(b.run)
        payload = random.Random(7).randbytes(4 * 1024 * 1024)

        async def send() -> None:
            stream = await a.open_stream("tcp:22")
            await stream.send_all(payload)
            await stream.send_eof()

        digest = hashlib.sha256()
        total = 0
        with trio.fail_after(60):
            async with trio.open_nursery() as group:
                group.start_soon(send)
                peer = await b.accept_stream()
                assert peer.service == "tcp:22"
                while chunk := await peer.receive_some():
                    digest.update(chunk)
                    total += len(chunk)
        assert total == len(payload)
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
        assert isinstance(transport_a.path, Path)


class LossyTransport(MemoryDatagramTransport):
    """A memory link that loses, duplicates and reorders (seeded)."""

    def __init__(self, inner: MemoryDatagramTransport, seed: int) -> None:
        super().__init__(inner._send_channel, inner._receive_channel, inner.path)
        self._rng = random.Random(seed)
        self._held: list[bytes] = []

    async def send(self, data: bytes, path: Path) -> None:
        roll = self._rng.random()
        if roll < 0.05:
            await trio.lowlevel.checkpoint()
            return
        if roll < 0.10:
            self._held.append(data)  # delivered after the next one: reordered
            await trio.lowlevel.checkpoint()
            return
        await super().send(data, path)
        if roll < 0.13:
            await super().send(data, path)
        while self._held:
            await super().send(self._held.pop(), path)


async def test_transfer_over_a_lossy_reordering_link(nursery: trio.Nursery) -> None:
    left, right = MemoryDatagramTransport.pair()
    a = MuxConnection(LossyTransport(left, 1), is_initiator=True, path=left.path)
    b = MuxConnection(LossyTransport(right, 2), is_initiator=False, path=right.path)
    await nursery.start(a.run)
    await nursery.start(b.run)
    payload = random.Random(3).randbytes(1024 * 1024)

    async def send() -> None:
        stream = await a.open_stream("rpc")
        await stream.send_all(payload)
        await stream.send_eof()

    got = bytearray()
    with trio.fail_after(60):
        async with trio.open_nursery() as group:
            group.start_soon(send)
            peer = await b.accept_stream()
            while chunk := await peer.receive_some():
                got += chunk
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_path_probe_and_call_me_maybe_reach_on_event(nursery: trio.Nursery) -> None:
    left, right = MemoryDatagramTransport.pair(Path("relay", reliable=True))
    seen: list[object] = []
    both = trio.Event()

    def record(event: object) -> None:
        seen.append(event)
        if len(seen) == 2:
            both.set()

    a = MuxConnection(left, is_initiator=True, path=left.path, on_event=record)
    b = MuxConnection(right, is_initiator=False, path=right.path, on_event=record)
    await nursery.start(a.run)
    await nursery.start(b.run)
    a.send_path_probe(Path("relay", reliable=True), b"probe123")
    b.send_call_me_maybe([b"192.0.2.1:41641"])
    with trio.fail_after(5):
        await both.wait()
    kinds = {type(event).__name__ for event in seen}
    assert kinds == {"PathResponse", "CallMeMaybe"}


async def test_slow_reader_backpressures_send_all(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery)
    stream = await a.open_stream("bulk")
    peer = await b.accept_stream()
    sent = 0

    async def writer() -> None:
        nonlocal sent
        while True:
            await stream.send_all(bytes(65536))
            sent += 65536

    async with trio.open_nursery() as group:
        group.start_soon(writer)
        await trio.sleep(0.5)
        # Nobody reads: the writer is stuck once the window and send buffer are full.
        stuck_at = sent
        await trio.sleep(0.3)
        assert sent == stuck_at
        config = b.core.config
        assert b.core.receive_buffered(peer.stream_id) <= config.initial_stream_window
        assert sent <= config.initial_stream_window + config.stream_send_buffer + 65536
        # Reading releases it.
        received = 0
        while received < 4 * 1024 * 1024:
            received += len(await peer.receive_some())
        assert sent > stuck_at
        group.cancel_scope.cancel()


class _CountingTransport(MemoryDatagramTransport):
    """A memory link end that remembers every datagram it sent."""

    def __init__(
        self,
        send_channel: trio.MemorySendChannel[bytes],
        receive_channel: trio.MemoryReceiveChannel[bytes],
        path: Path,
    ) -> None:
        super().__init__(send_channel, receive_channel, path)
        self.sent: list[bytes] = []

    async def send(self, data: bytes, path: Path) -> None:
        self.sent.append(bytes(data))
        await super().send(data, path)


@pytest.mark.parametrize("size", [0, 1, 1024])
async def test_request_and_echo_take_one_datagram_each_way(
    nursery: trio.Nursery, size: int
) -> None:
    # The stream's open header, its bytes and its FIN leave together (no handshake per
    # stream), and the answer carries the ACK, the echoed bytes and the FIN: two
    # datagrams for the whole exchange. (A long ACK delay keeps a slow machine's
    # delayed-ACK timer out of the count.)
    config = MuxConfig(max_ack_delay=5.0)
    left, right = _CountingTransport.pair()
    a = MuxConnection(left, is_initiator=True, config=config, path=left.path)
    b = MuxConnection(right, is_initiator=False, config=config, path=right.path)
    await nursery.start(a.run)
    await nursery.start(b.run)

    async def echo() -> None:
        stream = await b.accept_stream()
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()

    nursery.start_soon(echo)
    payload = random.Random(size).randbytes(size)
    with trio.fail_after(10):
        stream = await a.open_stream("echo")
        await stream.send_all(payload)
        await stream.send_eof()
        received = b""
        while data := await stream.receive_some():
            received += data
    assert received == payload
    assert len(left.sent) == 1
    assert len(left.sent[0]) > size  # open header + bytes + FIN in that one datagram
    assert len(right.sent) == 1
    await stream.aclose()


async def test_fin_after_a_wait_elsewhere_still_joins_the_data(nursery: trio.Nursery) -> None:
    # A daemon piping a dial queues the client's bytes, then waits on the client's
    # socket for its EOF before queueing FIN: the sender waits that long for it, so
    # bytes and FIN leave in one datagram.
    config = MuxConfig(max_ack_delay=5.0)
    left, right = _CountingTransport.pair()
    a = MuxConnection(left, is_initiator=True, config=config, path=left.path)
    b = MuxConnection(right, is_initiator=False, config=config, path=right.path)
    await nursery.start(a.run)
    await nursery.start(b.run)
    with trio.fail_after(10):
        stream = await a.open_stream("pipe")
        await stream.send_all(b"request")
        # The wait for the client's EOF: its receive, then the wake-up after it.
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        await stream.send_eof()
        peer = await b.accept_stream()
        received = b""
        while data := await peer.receive_some():
            received += data
    assert received == b"request"
    assert len(left.sent) == 1
    await stream.aclose()
    await peer.aclose()


async def test_reusable_until_either_side_ends_or_leaves_bytes(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery)
    with trio.fail_after(10):
        stream = await a.open_stream("rpc")
        await stream.send_all(b"ping")
        peer = await b.accept_stream()
        assert await peer.receive_some() == b"ping"
        assert peer.reusable()
        await peer.send_all(b"pong")
        await trio.testing.wait_all_tasks_blocked()
        assert not stream.reusable()  # "pong" waits unread
        assert await stream.receive_some() == b"pong"
        assert stream.reusable()
        await peer.send_eof()
        await trio.testing.wait_all_tasks_blocked()
        assert not peer.reusable()  # half-closed
        assert not stream.reusable()  # its end of stream waits unread
        await stream.aclose()
        assert not stream.reusable()


async def test_no_delay_sends_each_write_without_corking(nursery: trio.Nursery) -> None:
    # A stream that carries several messages (no FIN after each): with no_delay the
    # sender does not hold the message back for more frames, and every message
    # still takes one datagram each way (the answer carries the ACK).
    config = MuxConfig(max_ack_delay=5.0)
    left, right = _CountingTransport.pair()
    a = MuxConnection(left, is_initiator=True, config=config, path=left.path)
    b = MuxConnection(right, is_initiator=False, config=config, path=right.path)
    await nursery.start(a.run)
    await nursery.start(b.run)
    with trio.fail_after(10):
        stream = await a.open_stream("rpc")
        stream.no_delay = True
        assert stream.no_delay
        await stream.send_all(b"one")
        # Gone within two scheduling rounds (corked, it would wait a few more).
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        assert len(left.sent) == 1
        peer = await b.accept_stream()
        peer.no_delay = True
        for message in (b"one", b"two", b"three"):
            if message != b"one":
                await stream.send_all(message)
            assert await peer.receive_some() == message
            await peer.send_all(message.upper())
            assert await stream.receive_some() == message.upper()
    assert len(left.sent) == 3
    assert len(right.sent) == 3
    await stream.aclose()
    await peer.aclose()


async def test_on_stream_gets_peer_streams_instead_of_accept(nursery: trio.Nursery) -> None:
    left, right = MemoryDatagramTransport.pair()
    opened: list[MuxStream] = []
    arrived = trio.Event()

    def on_stream(stream: MuxStream) -> None:
        opened.append(stream)
        arrived.set()

    a = MuxConnection(left, is_initiator=True, path=left.path)
    b = MuxConnection(right, is_initiator=False, path=right.path, on_stream=on_stream)
    await nursery.start(a.run)
    await nursery.start(b.run)
    with trio.fail_after(10):
        stream = await a.open_stream("svc")
        await stream.send_all(b"x")
        await arrived.wait()
    assert [s.service for s in opened] == ["svc"]
    assert await opened[0].receive_some() == b"x"
    opened[0].close_nowait()
    assert await stream.receive_some() == b""


async def test_send_nowait_queues_without_yielding(nursery: trio.Nursery) -> None:
    a, b = await _connected_pair(nursery, MuxConfig(stream_send_buffer=100_000))
    with trio.fail_after(10):
        stream = await a.open_stream("rpc")
        assert stream.send_nowait(b"hello") == 5
        assert stream.send_nowait(bytes(200_000)) < 200_000  # what the buffer takes
        peer = await b.accept_stream()
        assert (await peer.receive_some(5)) == b"hello"
        await stream.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            stream.send_nowait(b"more")
        await peer.aclose()
        await stream.aclose()


class _BatchTransport(MemoryDatagramTransport):
    """A transport with a non-waiting send_many (as the overlay's fast path) that
    records which task sent each datagram."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.senders: list[trio.lowlevel.Task] = []

    async def send_many(self, datagrams: list[tuple[bytes, Path]]) -> None:
        for data, _path in datagrams:
            self.senders.append(trio.lowlevel.current_task())
            try:
                self._send_channel.send_nowait(data)
            except trio.WouldBlock:
                self.dropped += 1


async def test_no_delay_writer_sends_from_its_own_task_when_the_sender_is_idle(
    nursery: trio.Nursery,
) -> None:
    config = MuxConfig(max_ack_delay=5.0)
    left, right = _BatchTransport.pair()
    a = MuxConnection(left, is_initiator=True, config=config, path=left.path)
    b = MuxConnection(right, is_initiator=False, config=config, path=right.path)
    await nursery.start(a.run)
    await nursery.start(b.run)
    me = trio.lowlevel.current_task()
    with trio.fail_after(10):
        stream = await a.open_stream("rpc")
        stream.no_delay = True
        await stream.send_all(b"hello")  # the open: the sender was kicked for it
        peer = await b.accept_stream()
        peer.no_delay = True
        assert await peer.receive_some() == b"hello"
        await peer.send_all(b"HELLO")
        assert await stream.receive_some() == b"HELLO"
        await trio.testing.wait_all_tasks_blocked()
        before = len(left.senders)
        await stream.send_all(b"again")
        # Sent by this task inside send_all, with the ACK of "HELLO" in it.
        assert left.senders[before:] == [me]
        assert await peer.receive_some() == b"again"
    await stream.aclose()
    await peer.aclose()
