"""EventHub: fan-out to watchers, never blocking the publisher; lagging watchers end."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import aclosing

import trio

from tunneld.daemon import EventHub


async def test_every_subscriber_gets_events_in_order() -> None:
    hub = EventHub()
    got: dict[int, list[Mapping[str, object]]] = {1: [], 2: []}
    subscribed = trio.Semaphore(0)

    async def watch(key: int) -> None:
        # aclosing: leaving an `async for` early does not finalize the generator.
        async with aclosing(hub.subscribe()) as events:
            async for event in events:
                got[key].append(event)
                if event["event"] == "watch.started":
                    subscribed.release()
                if event["event"] == "done":
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, 1)
        nursery.start_soon(watch, 2)
        await subscribed.acquire()
        await subscribed.acquire()
        assert hub.subscribers == 2
        for n in range(3):
            hub.publish({"event": "tunnel.up", "n": n})
        hub.publish({"event": "done"})
    expected = [{"event": "watch.started"}] + [{"event": "tunnel.up", "n": n} for n in range(3)]
    assert got[1] == [*expected, {"event": "done"}]
    assert got[2] == got[1]
    assert hub.subscribers == 0


async def test_lagging_subscriber_is_told_and_dropped() -> None:
    hub = EventHub(buffer=2)
    events = hub.subscribe()
    assert await events.__anext__() == {"event": "watch.started"}
    for n in range(5):
        hub.publish({"event": "x", "n": n})  # never blocks, even with nobody reading
    assert hub.subscribers == 0
    rest = [event async for event in events]
    assert rest == [{"event": "x", "n": 0}, {"event": "x", "n": 1}, {"event": "watch.lagged"}]
