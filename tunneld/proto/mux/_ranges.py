"""Sets of half-open integer ranges: received packet numbers, acked and lost bytes."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["RangeSet"]


def _range_end(item: tuple[int, int]) -> int:
    return item[1]


class RangeSet:
    """Sorted, disjoint, non-adjacent ``[start, end)`` ranges of integers."""

    __slots__ = ("_ranges",)

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._ranges)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return self._ranges[index]

    def __repr__(self) -> str:
        return f"RangeSet({self._ranges!r})"

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with overlapping or touching ranges."""
        if start >= end:
            return
        ranges = self._ranges
        if not ranges or start > ranges[-1][1]:
            ranges.append((start, end))
            return
        last_start, last_end = ranges[-1]
        if start >= last_start:
            if end > last_end:
                ranges[-1] = (last_start, end)
            return
        i = bisect_left(ranges, start, key=_range_end)
        j = i
        new_start, new_end = start, end
        while j < len(ranges) and ranges[j][0] <= end:
            new_start = min(new_start, ranges[j][0])
            new_end = max(new_end, ranges[j][1])
            j += 1
        ranges[i:j] = [(new_start, new_end)]

    def subtract(self, start: int, end: int) -> None:
        """Remove ``[start, end)`` from the set."""
        if start >= end or not self._ranges:
            return
        ranges = self._ranges
        i = bisect_left(ranges, start + 1, key=_range_end)
        replacement: list[tuple[int, int]] = []
        j = i
        while j < len(ranges) and ranges[j][0] < end:
            r_start, r_end = ranges[j]
            if r_start < start:
                replacement.append((r_start, start))
            if r_end > end:
                replacement.append((end, r_end))
            j += 1
        ranges[i:j] = replacement

    def contains(self, value: int) -> bool:
        """Whether ``value`` lies in one of the ranges."""
        ranges = self._ranges
        i = bisect_left(ranges, value + 1, key=_range_end)
        return i < len(ranges) and ranges[i][0] <= value

    def trim_below(self, value: int) -> None:
        """Forget everything below ``value``."""
        ranges = self._ranges
        while ranges and ranges[0][1] <= value:
            del ranges[0]
        if ranges and ranges[0][0] < value:
            ranges[0] = (value, ranges[0][1])

    def drop_oldest(self, keep: int) -> None:
        """Keep only the ``keep`` highest ranges."""
        if len(self._ranges) > keep:
            del self._ranges[: len(self._ranges) - keep]

    def pop_front(self, limit: int) -> tuple[int, int]:
        """Remove and return up to ``limit`` integers from the lowest range."""
        start, end = self._ranges[0]
        if end - start > limit:
            self._ranges[0] = (start + limit, end)
            return start, start + limit
        del self._ranges[0]
        return start, end
