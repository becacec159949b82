"""SSE streams as bounded logs of events, so a client can resume one after a drop.

Each stream (one per POST that answers with SSE, plus a session's GET stream) has a
random key; its events have ids ``<key>.<seq>``. A client that lost the connection
sends ``GET`` with ``Last-Event-ID: <key>.<seq>`` and gets the events of *that* stream
after ``seq`` (MCP 2025-11-25 "Resumability and Redelivery"), never another stream's.
Memory is bounded: a stream keeps its last ``max_events`` events and a session keeps
its last ``max_streams`` streams.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Final

import trio

from tunneld.http import LastChunk, format_sse
from tunneld.mcp._jsonrpc import encode

__all__ = ["KEEPALIVE_SECONDS", "EventStream", "StreamTable", "parse_event_id"]

KEEPALIVE_SECONDS: Final = 10.0
"""Idle SSE streams get a comment this often (MCP asks for ≤ 15 s behind proxies)."""

_KEEPALIVE: Final = b": keepalive\n\n"


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``"k3y.12"`` → ``("k3y", 12)``; ``None`` when it is not one of our event ids."""
    key, dot, seq = value.strip().rpartition(".")
    if not dot or not key or not seq.isdigit() or len(seq) > 18:
        return None
    return key, int(seq)


class EventStream:
    """One SSE stream: an append-only, bounded log of events plus readers of it.

    Writers :meth:`send` JSON-RPC messages and :meth:`close` when done; readers iterate
    :meth:`read` from an event sequence number. Appending never blocks (the log is
    bounded, the oldest events fall out), so a slow or absent reader never stalls a
    tool handler.
    """

    def __init__(self, *, max_events: int = 256, key: str | None = None) -> None:
        self.key = key if key is not None else secrets.token_urlsafe(9)
        self._events: deque[tuple[int, bytes]] = deque(maxlen=max_events)
        self._last_seq = 0
        self._closed = False
        self._changed = trio.Event()
        self.delivered = 0
        """Highest sequence number a reader has yielded."""
        self.readers = 0
        self._reader_generation = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def send(self, message: Mapping[str, Any]) -> None:
        """Append one JSON-RPC message (ignored once the stream is closed)."""
        if self._closed:
            return
        self._last_seq += 1
        event_id = f"{self.key}.{self._last_seq}"
        self._events.append(
            (self._last_seq, format_sse(encode(message), event="message", id=event_id))
        )
        self._wake()

    def close(self) -> None:
        """No more events: readers end once they have yielded everything."""
        if not self._closed:
            self._closed = True
            self._wake()

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event (0: none yet)."""
        return self._last_seq

    @property
    def reader_generation(self) -> int:
        """Bumped by :meth:`supersede_readers`; pass it to :meth:`read` as ``generation``
        so that a reader starting later still ends for a supersede that came before."""
        return self._reader_generation

    async def wait_changed(self) -> None:
        """Return at the next :meth:`send`, :meth:`close` or :meth:`supersede_readers`."""
        await self._changed.wait()

    def supersede_readers(self) -> None:
        """End the readers currently attached (a new GET replaces the old one)."""
        self._reader_generation += 1
        self._wake()

    def priming(self, after: int, *, retry_ms: int | None = None) -> bytes:
        """The priming event for a reader starting after event ``after``.

        MCP 2025-11-25: an event with an id and empty data primes the client to
        reconnect with ``Last-Event-ID`` (seq 0 = "before everything"); ``retry_ms``
        tells it how long to wait before doing so (SEP-1699). Returned rather than
        yielded by :meth:`read` so the HTTP server can write it with the head.
        """
        return format_sse("", id=f"{self.key}.{after}", retry=retry_ms)

    async def read(
        self,
        after: int,
        *,
        prime: bool,
        keepalive: float = KEEPALIVE_SECONDS,
        retry_ms: int | None = None,
        generation: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """SSE bytes: a priming event (when ``prime``), then events after ``after``.

        ``retry_ms`` goes into the priming event as the SSE reconnection delay.
        ``generation`` (from :attr:`reader_generation`, taken earlier): the reader
        counts as attached since then, so a supersede in between ends it at once.

        Ends when the stream is closed and drained, or when :meth:`supersede_readers`
        is called; the chunk that drains a closed stream is a :class:`LastChunk`, so
        the server sends it with the end of the response. While idle it yields a
        keepalive comment every ``keepalive`` s. Cancellation (the client went away)
        just stops the iteration; the stream and its events stay for a resuming reader.
        """
        if generation is None:
            generation = self._reader_generation
        self.readers += 1
        try:
            # What is ready goes out as one chunk: one write, one wake-up of the client.
            batch: list[bytes] = []
            if prime:
                batch.append(self.priming(after, retry_ms=retry_ms))
            cursor = after
            while True:
                # Taken before looking, so a send or close while we are suspended at
                # the yield below wakes the wait at once (not after a keepalive).
                changed = self._changed
                if self._last_seq > cursor:
                    for seq, data in self._events:
                        if seq > cursor:
                            batch.append(data)
                    cursor = self._last_seq
                drained = self._closed and cursor >= self._last_seq
                if batch:
                    self.delivered = max(self.delivered, cursor)
                    chunk, batch = b"".join(batch), []
                    if drained:
                        yield LastChunk(chunk)
                        return
                    yield chunk
                if drained:
                    return
                if generation != self._reader_generation:
                    return
                with trio.move_on_after(keepalive) as idle:
                    await changed.wait()
                if idle.cancelled_caught:
                    yield _KEEPALIVE
        finally:
            self.readers -= 1


class StreamTable:
    """A session's streams by key, bounded: the oldest closed streams go first."""

    def __init__(self, *, max_streams: int = 32, max_events: int = 256) -> None:
        self._streams: OrderedDict[str, EventStream] = OrderedDict()
        self._max_streams = max_streams
        self._max_events = max_events
        # Keys only need to be unique within the session (resumption looks a key up in
        # the caller's own session): one random prefix per table and a counter, not a
        # urandom call per stream (per tools/call).
        self._prefix = secrets.token_urlsafe(6)
        self._count = 0

    def new(self, *, register: bool = True) -> EventStream:
        """A new stream with a key unique in the session; in the table (so ``get``
        finds it) unless ``register`` is false: then :meth:`register` it once its key
        is shown to the client (a stream whose key nobody saw cannot be resumed)."""
        self._count += 1
        stream = EventStream(max_events=self._max_events, key=f"{self._prefix}{self._count}")
        if register:
            self.register(stream)
        return stream

    def register(self, stream: EventStream) -> None:
        """Put ``stream`` in the table, dropping the oldest closed streams over the bound."""
        self._streams[stream.key] = stream
        excess = len(self._streams) - self._max_streams
        if excess > 0:
            # One pass from the oldest (not a rescan per victim): with many calls in
            # flight on one session the open streams ahead are many.
            victims: list[str] = []
            for key, old in self._streams.items():
                if old._closed and old.readers == 0:
                    victims.append(key)
                    if len(victims) == excess:
                        break
            for key in victims:
                del self._streams[key]

    def get(self, key: str) -> EventStream | None:
        return self._streams.get(key)

    def close_all(self) -> None:
        for stream in self._streams.values():
            stream.close()

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def active_readers(self) -> int:
        return sum(stream.readers for stream in self._streams.values())
