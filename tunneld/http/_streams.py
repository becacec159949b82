"""A stream that first replays bytes already read from its transport.

After h11 parsed a request head, the bytes it consumed (and any bytes the client
sent right after) are gone from the socket. Protocols taking over the connection
(WebSocket via wsproto, raw upgrades) must see them first, so they are replayed.
"""

from __future__ import annotations

import trio

__all__ = ["HalfCloseableReplayStream", "ReplayStream", "replay_stream"]


class ReplayStream(trio.abc.Stream):
    """``transport`` with ``prefix`` delivered before anything read from it."""

    def __init__(self, transport: trio.abc.Stream, prefix: bytes) -> None:
        self.transport = transport
        self._prefix = bytearray(prefix)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            # Still a checkpoint, as trio's Stream contract asks of every receive.
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else min(max_bytes, len(self._prefix))
            chunk = bytes(self._prefix[:size])
            del self._prefix[:size]
            return chunk
        return bytes(await self.transport.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._prefix.clear()
        await self.transport.aclose()


class HalfCloseableReplayStream(ReplayStream, trio.abc.HalfCloseableStream):
    """A :class:`ReplayStream` over a half-closeable transport (TCP, Unix socket)."""

    transport: trio.abc.HalfCloseableStream

    def __init__(self, transport: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        super().__init__(transport, prefix)

    async def send_eof(self) -> None:
        await self.transport.send_eof()


def replay_stream(transport: trio.abc.Stream, prefix: bytes) -> ReplayStream:
    """Wrap ``transport`` so ``prefix`` is read first; half-closeable if it is."""
    if isinstance(transport, trio.abc.HalfCloseableStream):
        return HalfCloseableReplayStream(transport, prefix)
    return ReplayStream(transport, prefix)
