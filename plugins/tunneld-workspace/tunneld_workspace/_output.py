"""Bounded capture of command output: the first and last bytes, and a count of the rest."""

from __future__ import annotations

__all__ = ["BoundedOutput", "complete_utf8_prefix", "decode_text"]


def decode_text(data: bytes) -> str:
    """UTF-8 text with invalid bytes shown as U+FFFD (command output is not always UTF-8)."""
    return data.decode("utf-8", errors="replace")


class BoundedOutput:
    """Keeps the first ``limit // 2`` and the last ``limit - limit // 2`` bytes written.

    The head usually says what a command started doing and the tail how it ended (the
    error, the summary line); the middle is what a model can most afford to lose.
    """

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError("limit must be at least 2 bytes")
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def append(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            excess = len(self._tail) - self.tail_limit
            if excess > 0:
                del self._tail[:excess]

    @property
    def omitted(self) -> int:
        """Bytes dropped from the middle."""
        return self.total - len(self._head) - len(self._tail)

    @property
    def truncated(self) -> bool:
        return self.omitted > 0

    def text(self) -> str:
        """The kept output as text, with a marker where the middle was dropped."""
        if not self.truncated:
            return decode_text(bytes(self._head + self._tail))
        return (
            decode_text(bytes(self._head))
            + f"\n[... {self.omitted} bytes omitted ...]\n"
            + decode_text(bytes(self._tail))
        )


def complete_utf8_prefix(data: bytes) -> int:
    """Length of ``data`` without a multi-byte UTF-8 character cut off at its end.

    Reading a file or an output buffer in pages can split a character; the cut bytes
    belong to the next page (read on from the returned length), not to a U+FFFD here.
    """
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: keep looking for the lead byte
        if byte < 0x80:
            return end
        needed = 2 if byte >= 0xC0 else 1
        needed = 3 if byte >= 0xE0 else needed
        needed = 4 if byte >= 0xF0 else needed
        return end - back if back < needed else end
    return end
