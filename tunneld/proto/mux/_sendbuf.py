"""The bytes of one stream's send direction, from its oldest unacked byte on.

A bulk writer fills megabytes of send buffer while acked bytes leave its front. One
growing ``bytearray`` copied every write once more (and moved the rest of the
buffer whenever CPython reallocated it or its acked front was cut off): a tenth of
a bulk sender's CPU. Here a big write is kept as the ``bytes`` object it came as (no
copy when it is one), small writes are gathered into one owned tail, and acked
bytes leave by dropping whole chunks. Offsets are absolute stream offsets.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["SendBuffer"]

# Writes this big become chunks of their own; smaller ones are gathered in the tail
# until it is this big (so a frame spans a few chunks, not thousands of tiny ones).
_CHUNK_MIN = 8 * 1024
# Released chunk slots are compacted away once there are this many.
_COMPACT_AFTER = 64


class SendBuffer:
    """Bytes from offset ``start`` (the oldest not yet released) to ``end``.

    ``append`` adds at ``end``; ``copy_to`` copies any held range into a packet;
    ``release_to`` drops everything below an offset (acked bytes).
    """

    __slots__ = ("_chunks", "_ends", "_first", "_tail", "_tail_start", "end", "start")

    def __init__(self, start: int = 0) -> None:
        self._chunks: list[bytes] = []
        self._ends: list[int] = []  # absolute end offset of each chunk
        self._first = 0  # index of the first chunk still held
        self._tail = bytearray()  # owned bytes after the last chunk
        self._tail_start = start
        # Plain attributes, not properties: the mux reads ``end`` several times per
        # packet and per call. Read them; never assign them from outside.
        self.start = start
        self.end = start

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` at the end (kept as it is if it is a big ``bytes``)."""
        size = len(data)
        if not size:
            return
        self.end += size
        tail = self._tail
        if size < _CHUNK_MIN:
            tail += data
            if len(tail) >= _CHUNK_MIN:
                self._seal_tail()
            return
        if tail:
            self._seal_tail()
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append(chunk)
        self._tail_start += size
        self._ends.append(self._tail_start)

    def _seal_tail(self) -> None:
        self._chunks.append(bytes(self._tail))
        self._tail_start += len(self._tail)
        self._ends.append(self._tail_start)
        self._tail.clear()

    def copy_to(self, out: bytearray, offset: int, length: int) -> None:
        """Append the ``length`` bytes from absolute ``offset`` to ``out``.

        The range must be held (``start <= offset`` and ``offset + length <= end``).
        """
        tail_start = self._tail_start
        if offset < tail_start:
            chunks = self._chunks
            ends = self._ends
            index = bisect_right(ends, offset, self._first)
            while length and index < len(chunks):
                chunk = chunks[index]
                chunk_end = ends[index]
                at = offset - (chunk_end - len(chunk))
                take = min(length, chunk_end - offset)
                if take == len(chunk):
                    out += chunk
                else:
                    with memoryview(chunk) as view:
                        out += view[at : at + take]
                offset += take
                length -= take
                index += 1
        if length:
            at = offset - tail_start
            with memoryview(self._tail) as view:
                out += view[at : at + length]

    def release_to(self, offset: int) -> None:
        """Drop every byte below absolute ``offset`` (at most ``end``)."""
        if offset <= self.start:
            return
        self.start = offset
        ends = self._ends
        first = bisect_right(ends, offset, self._first)
        if first >= _COMPACT_AFTER:
            del self._chunks[:first]
            del ends[:first]
            first = 0
        else:
            chunks = self._chunks
            for index in range(self._first, first):
                chunks[index] = b""  # let go of the bytes now, the slot later
        self._first = first
        if offset > self._tail_start:
            del self._tail[: offset - self._tail_start]
            self._tail_start = offset
