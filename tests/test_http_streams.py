"""The replay stream handed to upgrade handlers behaves as a trio half-closeable stream."""

from __future__ import annotations

import trio
import trio.testing

from tunneld.http import HalfCloseableReplayStream, ReplayStream
from tunneld.http._streams import replay_stream


async def _pair(
    make: object,
) -> tuple[HalfCloseableReplayStream, HalfCloseableReplayStream]:
    left, right = make()  # type: ignore[operator]
    first, second = replay_stream(left, b""), replay_stream(right, b"")
    assert isinstance(first, HalfCloseableReplayStream)
    assert isinstance(second, HalfCloseableReplayStream)
    return first, second


async def test_replay_stream_passes_trios_stream_conformance_checks() -> None:
    async def maker() -> tuple[HalfCloseableReplayStream, HalfCloseableReplayStream]:
        return await _pair(trio.testing.memory_stream_pair)

    async def clogged() -> tuple[HalfCloseableReplayStream, HalfCloseableReplayStream]:
        return await _pair(trio.testing.lockstep_stream_pair)

    await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_prefix_is_read_first_and_honours_max_bytes() -> None:
    left, right = trio.testing.memory_stream_pair()
    stream = replay_stream(left, b"abcdef")
    await right.send_all(b"-live")
    assert await stream.receive_some(4) == b"abcd"
    assert await stream.receive_some() == b"ef"
    assert await stream.receive_some() == b"-live"
    await stream.send_all(b"back")
    assert await right.receive_some() == b"back"


async def test_non_half_closeable_transport_gives_plain_replay_stream() -> None:
    left, _right = trio.testing.memory_stream_pair()
    one_way = trio.StapledStream(left.send_stream, left.receive_stream)
    plain = replay_stream(_NoEof(one_way), b"x")
    assert type(plain) is ReplayStream
    assert await plain.receive_some() == b"x"


class _NoEof(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()
