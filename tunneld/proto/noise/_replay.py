"""RFC 6479 anti-replay bitmap as wireguard-go uses it: 128 blocks of 64 bits.

The window is (128 - 1) * 64 = 8128 counters behind the highest accepted one; the
extra block is what lets the window slide by whole blocks without losing bits
(RFC 6479 section 2).
"""

from __future__ import annotations

__all__ = ["WINDOW_SIZE", "ReplayWindow"]

_BLOCK_BIT_LOG = 6
_BLOCK_BITS = 1 << _BLOCK_BIT_LOG
_RING_BLOCKS = 1 << 7
_BLOCK_MASK = _RING_BLOCKS - 1
_BIT_MASK = _BLOCK_BITS - 1
WINDOW_SIZE = (_RING_BLOCKS - 1) * _BLOCK_BITS  # 8128


class ReplayWindow:
    """Accepts each counter below ``limit`` at most once, within 8128 of the highest seen."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._ring = [0] * _RING_BLOCKS
        self._last = 0

    @property
    def highest(self) -> int:
        """The highest counter accepted so far (0 before any)."""
        return self._last

    def check(self, counter: int, limit: int) -> bool:
        """Whether ``validate`` would accept ``counter`` (no state change)."""
        if counter >= limit:
            return False
        if counter > self._last:
            return True
        if self._last - counter > WINDOW_SIZE:
            return False
        block = (counter >> _BLOCK_BIT_LOG) & _BLOCK_MASK
        return not (self._ring[block] >> (counter & _BIT_MASK)) & 1

    def validate(self, counter: int, limit: int) -> bool:
        """Accept and record ``counter``; False (state unchanged) for a replay or too old."""
        if counter >= limit:
            return False
        index_block = counter >> _BLOCK_BIT_LOG
        ring = self._ring
        if counter > self._last:
            # Slide forward: clear the blocks between the old and new highest block.
            current = self._last >> _BLOCK_BIT_LOG
            diff = min(index_block - current, _RING_BLOCKS)
            for i in range(current + 1, current + diff + 1):
                ring[i & _BLOCK_MASK] = 0
            self._last = counter
        elif self._last - counter > WINDOW_SIZE:
            return False
        block = index_block & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        if ring[block] & bit:
            return False
        ring[block] |= bit
        return True
