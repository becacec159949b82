"""A stream that first replays bytes already read from its transport.

After h11 parsed a request head, the bytes it consumed (and any bytes the client
sent right after) are gone from the socket. Protocols taking over the connection
(WebSocket via wsproto, raw upgrades) must see them first, so they are replayed.
"""

from __future__ import annotations

import trio

__all__ = ["HalfCloseableReplayStream", "ReplayStream", "replay_stream"]


class _OneAtATime:
    """Raise trio.BusyResourceError when two tasks use one direction at once, as every
    trio stream must (the transport may not detect it, e.g. while replaying)."""

    def __init__(self, operation: str) -> None:
        self._operation = operation
        self._busy = False

    # A plain context manager, not @contextmanager: it wraps every read and write.
    def __call__(self) -> _OneAtATime:
        return self

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._operation}")
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class ReplayStream(trio.abc.Stream):
    """``transport`` with ``prefix`` delivered before anything read from it.

    Closing it closes the transport.
    """

    def __init__(self, transport: trio.abc.Stream, prefix: bytes) -> None:
        self.transport = transport
        self._prefix = bytearray(prefix)
        self._receiving = _OneAtATime("receiving on this stream")
        self._sending = _OneAtATime("sending on this stream")
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._receiving():
            if max_bytes is not None and max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            if self._prefix:
                # Still a checkpoint, as trio's Stream contract asks of every receive.
                await trio.lowlevel.checkpoint()
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                size = len(self._prefix) if max_bytes is None else min(max_bytes, len(self._prefix))
                chunk = bytes(self._prefix[:size])
                del self._prefix[:size]
                return chunk
            return bytes(await self.transport.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending():
            await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending():
            await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._closed = True
        self._prefix.clear()
        await self.transport.aclose()


class HalfCloseableReplayStream(ReplayStream, trio.abc.HalfCloseableStream):
    """A :class:`ReplayStream` over a half-closeable transport (TCP, Unix socket)."""

    transport: trio.abc.HalfCloseableStream

    def __init__(self, transport: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        super().__init__(transport, prefix)

    async def send_eof(self) -> None:
        with self._sending():
            await self.transport.send_eof()


def replay_stream(transport: trio.abc.Stream, prefix: bytes) -> ReplayStream:
    """Wrap ``transport`` so ``prefix`` is read first; half-closeable if it is."""
    if isinstance(transport, trio.abc.HalfCloseableStream):
        return HalfCloseableReplayStream(transport, prefix)
    return ReplayStream(transport, prefix)
