"""A one-line progress bar for terminals: bytes, rate and ETA, redrawn in place."""

from __future__ import annotations

import collections
import shutil
import time
from collections.abc import Callable
from typing import Final, TextIO

__all__ = ["ProgressBar", "format_bytes", "format_duration"]

_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")
# The rate is measured over the last few seconds, so the ETA follows the link as it is
# now rather than averaging over a slow start.
_RATE_WINDOW: Final = 3.0


def format_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KiB"``; binary units, one decimal above bytes."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``75`` → ``"1:15"``, ``3725`` → ``"1:02:05"``."""
    whole = max(0, int(seconds + 0.5))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Draws ``label [####    ] 42% 42.0 MiB/100.0 MiB 12.3 MiB/s ETA 0:05`` on ``stream``.

    ``update`` redraws at most every ``min_interval`` seconds (and always at 100%);
    ``finish`` draws the final line with the average rate and ends it with a newline.
    Only use it on a terminal: it writes carriage returns and an erase-line sequence.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
        columns: int | None = None,
    ) -> None:
        self.label = label
        self.stream = stream
        self.clock = clock
        self.min_interval = min_interval
        self.columns = columns
        self.start = clock()
        self.first: int | None = None  # bytes already there (a resume) are not "rate"
        self.done = 0
        self.total: int | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._drawn_at: float | None = None
        self._finished = False

    def update(self, done: int, total: int | None) -> None:
        """Record progress; redraws when due."""
        now = self.clock()
        if self.first is None:
            self.first = done
        self.done, self.total = done, total
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > _RATE_WINDOW:
            self._samples.popleft()
        complete = total is not None and done >= total
        if self._drawn_at is None or complete or now - self._drawn_at >= self.min_interval:
            self._draw(self._line(now, final=False))
            self._drawn_at = now

    def finish(self) -> None:
        """Draw the final line (average rate, elapsed time) and end it with a newline."""
        if self._finished:
            return
        self._finished = True
        self._draw(self._line(self.clock(), final=True))
        self.stream.write("\n")
        self.stream.flush()

    def _rate(self, now: float, final: bool) -> float | None:
        if final:
            elapsed = now - self.start
            moved = self.done - (self.first or 0)
        else:
            (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
            elapsed, moved = t1 - t0, d1 - d0
        return moved / elapsed if elapsed > 0.05 else None

    def _line(self, now: float, *, final: bool) -> str:
        rate = self._rate(now, final)
        if self.total is not None:
            amount = f"{format_bytes(self.done)}/{format_bytes(self.total)}"
        else:
            amount = format_bytes(self.done)
        speed = f"{format_bytes(rate)}/s" if rate else "--/s"
        if final:
            tail = f"in {format_duration(now - self.start)}"
        elif rate and self.total is not None:
            tail = f"ETA {format_duration(max(0, self.total - self.done) / rate)}"
        else:
            tail = "ETA --:--"
        numbers = f"{amount}  {speed}  {tail}"
        columns = self.columns or shutil.get_terminal_size((80, 24)).columns
        if self.total:
            fraction = min(1.0, self.done / self.total)
            percent = f"{fraction * 100:3.0f}%"
            # A fixed allowance for the numbers keeps the bar from changing width as
            # they grow and shrink between redraws.
            room = columns - len(self.label) - len(percent) - 52
            bar = ""
            if room >= 10:
                width = min(room, 30)
                filled = int(width * fraction)
                bar = "[" + "#" * filled + " " * (width - filled) + "] "
            line = f"{self.label}  {bar}{percent}  {numbers}"
        else:
            line = f"{self.label}  {numbers}"
        return line[: max(1, columns - 1)]

    def _draw(self, line: str) -> None:
        # \r back to the line start, \x1b[K erases what a longer previous line left.
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
