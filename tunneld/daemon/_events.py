"""Fan-out of daemon events to ``GET /v0/watch`` subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import trio

__all__ = ["EventHub"]


class EventHub:
    """Publishes events to every current subscriber without ever blocking the publisher.

    A subscriber that falls ``buffer`` events behind gets ``{"event": "watch.lagged"}``
    and its stream ends (it should re-read ``/v0/status`` and watch again).
    """

    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: set[trio.MemorySendChannel[Mapping[str, object]]] = set()

    @property
    def subscribers(self) -> int:
        """How many watchers are connected."""
        return len(self._subscribers)

    def publish(self, event: Mapping[str, object]) -> None:
        """Hand ``event`` to every subscriber (synchronous; never blocks)."""
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._subscribers.discard(channel)
                channel.close()
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)

    async def subscribe(self) -> AsyncIterator[Mapping[str, object]]:
        """Events published from now on, until the subscriber lags or stops iterating."""
        send, receive = trio.open_memory_channel[Mapping[str, object]](self._buffer)
        self._subscribers.add(send)
        try:
            async with receive:
                yield {"event": "watch.started"}
                async for event in receive:
                    yield event
                if send not in self._subscribers:
                    yield {"event": "watch.lagged"}
        finally:
            self._subscribers.discard(send)
            send.close()
