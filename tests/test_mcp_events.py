"""The SSE event log behind POST/GET streams: keepalives, bounds, resumption, readers."""

from __future__ import annotations

import trio
import trio.testing

from tunneld.http import LastChunk
from tunneld.mcp._events import KEEPALIVE_SECONDS, EventStream, StreamTable, parse_event_id


async def _collect(stream: EventStream, after: int, *, prime: bool) -> list[bytes]:
    return [chunk async for chunk in stream.read(after, prime=prime)]


async def test_idle_stream_gets_keepalive_comments(autojump_clock: trio.testing.MockClock) -> None:
    assert KEEPALIVE_SECONDS <= 15  # MCP: keep proxies from timing idle streams out
    stream = EventStream()
    seen: list[tuple[float, bytes]] = []
    start = trio.current_time()

    async def read() -> None:
        async for chunk in stream.read(0, prime=True, retry_ms=500):
            seen.append((trio.current_time() - start, chunk))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.sleep(KEEPALIVE_SECONDS * 2.5)
        stream.send({"jsonrpc": "2.0", "method": "x"})
        stream.close()
    chunks = [chunk for _, chunk in seen]
    assert chunks[0] == f"id: {stream.key}.0\nretry: 500\ndata: \n\n".encode()
    assert chunks[1:3] == [b": keepalive\n\n", b": keepalive\n\n"]
    assert [t for t, c in seen if c.startswith(b":")] == [KEEPALIVE_SECONDS, 2 * KEEPALIVE_SECONDS]
    assert chunks[3].startswith(f"event: message\nid: {stream.key}.1\n".encode())
    assert len(chunks) == 4


async def test_log_is_bounded_and_replays_from_an_id() -> None:
    stream = EventStream(max_events=3)
    for n in range(5):
        stream.send({"n": n})
    stream.close()
    replay = b"".join(await _collect(stream, 0, prime=False)).decode()
    ids = [line[4:] for line in replay.split("\n") if line.startswith("id: ")]
    assert [parse_event_id(i) for i in ids] == [
        (stream.key, 3),
        (stream.key, 4),
        (stream.key, 5),
    ]
    assert b"".join(await _collect(stream, 4, prime=False)).count(b"\nid: ") == 1
    assert await _collect(stream, 5, prime=False) == []


async def test_ready_events_go_out_as_one_chunk() -> None:
    stream = EventStream()
    stream.send({"n": 1})
    stream.send({"n": 2})
    stream.close()
    chunks = await _collect(stream, 0, prime=True)
    assert len(chunks) == 1
    assert chunks[0].startswith(f"id: {stream.key}.0\n".encode())
    assert chunks[0].count(b"event: message") == 2
    assert stream.delivered == 2
    # The chunk that drains a closed stream says so: the server ends the response with it.
    assert isinstance(chunks[0], LastChunk)


async def test_priming_is_the_event_read_would_start_with() -> None:
    # The transport writes priming() with the response head and reads without prime:
    # the client gets the same bytes as from read(prime=True).
    stream = EventStream()
    stream.send({"n": 1})
    stream.close()
    primed = await _collect(stream, 0, prime=True)
    assert [stream.priming(0)] + await _collect(stream, 0, prime=False) == [
        primed[0][: len(stream.priming(0))],
        primed[0][len(stream.priming(0)) :],
    ]


async def test_superseded_reader_ends_and_a_new_one_continues() -> None:
    stream = EventStream()
    stream.send({"n": 1})
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in stream.read(0, prime=False):
            got.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        stream.supersede_readers()
    assert len(got) == 1
    assert stream.readers == 0
    stream.send({"n": 2})
    stream.close()
    assert len(await _collect(stream, stream.delivered, prime=False)) == 1


def test_stream_table_drops_oldest_closed_streams() -> None:
    table = StreamTable(max_streams=2)
    first, second = table.new(), table.new()
    first.close()
    third = table.new()
    assert table.get(first.key) is None
    assert table.get(second.key) is second
    assert table.get(third.key) is third
    # Open streams are never dropped, even past the bound.
    fourth = table.new()
    assert len(table) == 3
    assert table.get(fourth.key) is fourth


def test_parse_event_id() -> None:
    assert parse_event_id("k-_.3.12") == ("k-_.3", 12)
    assert parse_event_id("nope") is None
    assert parse_event_id(".1") is None
    assert parse_event_id("k.1" + "0" * 30) is None


async def test_events_sent_while_the_reader_waits_at_a_yield_go_out_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reader yields the priming event; the HTTP layer is busy writing it while the
    # tool answers and the stream closes. The answer must follow without waiting for
    # a keepalive.
    stream = EventStream()
    reader = stream.read(0, prime=True)
    start = trio.current_time()
    priming = await reader.__anext__()
    assert b"event: message" not in priming
    stream.send({"n": 1})
    stream.close()
    rest = [chunk async for chunk in reader]
    assert b"".join(rest).count(b"event: message") == 1
    assert trio.current_time() - start < KEEPALIVE_SECONDS


def test_a_tables_stream_keys_are_unique_and_parse_back() -> None:
    table = StreamTable(max_streams=4)
    keys = [table.new().key for _ in range(50)]
    assert len(set(keys)) == 50
    for key in keys:
        assert parse_event_id(f"{key}.7") == (key, 7)
    assert StreamTable().new().key[:8] != table.new().key[:8]  # another session's prefix
