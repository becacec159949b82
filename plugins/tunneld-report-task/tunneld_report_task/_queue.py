"""The bounded, deduplicating report queue between the tool and the delivery task.

Rules (README.md of this plugin says the same for users):

* A report is keyed by ``(agent, state, summary)``. A report whose key matches one
  still waiting or being delivered collapses into it (the newer link wins); one whose
  key matches the last report delivered for that agent is skipped as unchanged.
* The queue holds at most ``maxsize`` waiting reports (the one being delivered does not
  count). When full, the **oldest waiting report is dropped**: a task report is a status
  snapshot and the newest one supersedes older ones, so an unreachable reporter must
  neither block the model nor make it retry status updates. Each drop is counted,
  logged and told to whoever waits on the dropped report.
* Order is kept: one delivery task takes reports oldest first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, Literal

import trio

__all__ = ["Outcome", "QueueClosed", "QueueStats", "Report", "ReportQueue", "Ticket"]

_LAST_SENT_AGENTS: Final = 1024  # agents whose last delivered report is remembered

Outcome = Literal["pending", "delivered", "failed", "dropped", "unchanged", "closed"]


@dataclass(frozen=True, slots=True)
class Report:
    """One task report as the tool accepted it."""

    agent: str
    state: str
    summary: str
    link: str | None
    reported_at: float
    caller: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.agent, self.state, self.summary)

    def to_json(self) -> dict[str, object]:
        """The body sent to reporters (the control API ignores nothing: see deliver)."""
        return {
            "agent": self.agent,
            "state": self.state,
            "summary": self.summary,
            "link": self.link,
            "reported_at": self.reported_at,
            "caller": self.caller or None,
        }


@dataclass(slots=True)
class Ticket:
    """A caller's handle on a queued report: wait on ``done``, then read ``outcome``.

    ``detail`` maps each reporter to ``"delivered"`` or the reason it failed.
    """

    report: Report
    outcome: Outcome = "pending"
    detail: dict[str, str] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)
    collapsed: int = 0  # how many later identical reports merged into this one

    def finish(self, outcome: Outcome, detail: dict[str, str] | None = None) -> None:
        if self.done.is_set():
            return
        self.outcome = outcome
        if detail is not None:
            self.detail = detail
        self.done.set()


@dataclass(slots=True)
class QueueStats:
    accepted: int = 0
    collapsed: int = 0
    unchanged: int = 0
    dropped: int = 0
    delivered: int = 0
    failed: int = 0


class QueueClosed(Exception):
    """The queue was closed (the plugin shut down)."""


class ReportQueue:
    """See the module docstring. Not thread-safe: use from the trio thread only."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.stats = QueueStats()
        self._waiting: deque[Ticket] = deque()
        self._in_flight: Ticket | None = None
        self._last_sent: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self._wakeup = trio.Event()
        self._closed = False

    def __len__(self) -> int:
        """Reports waiting (not counting the one being delivered)."""
        return len(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, report: Report) -> tuple[Ticket, Ticket | None]:
        """Queue ``report``; returns its ticket and the ticket dropped to make room.

        The ticket may be an existing one (a collapsed duplicate) or already finished
        (``unchanged``).

        Raises:
            QueueClosed: after :meth:`close`.
        """
        if self._closed:
            raise QueueClosed("the report queue is closed (the plugin is shutting down)")
        for ticket in (self._in_flight, *self._waiting):
            if ticket is not None and ticket.report.key == report.key:
                ticket.collapsed += 1
                if ticket is not self._in_flight and report.link != ticket.report.link:
                    ticket.report = report  # the newest link wins
                self.stats.collapsed += 1
                return ticket, None
        ticket = Ticket(report)
        if self._last_sent.get(report.agent) == report.key:
            self.stats.unchanged += 1
            ticket.finish("unchanged")
            return ticket, None
        dropped = None
        if len(self._waiting) >= self.maxsize:
            dropped = self._waiting.popleft()
            self.stats.dropped += 1
            dropped.finish("dropped", {"queue": f"dropped: queue full ({self.maxsize})"})
        self._waiting.append(ticket)
        self.stats.accepted += 1
        self._wakeup.set()
        return ticket, dropped

    async def take(self) -> Ticket:
        """The oldest waiting report, now in flight; waits for one.

        Raises:
            QueueClosed: the queue is closed and empty.
        """
        while not self._waiting:
            if self._closed:
                raise QueueClosed("closed")
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        ticket = self._waiting.popleft()
        self._in_flight = ticket
        return ticket

    def finish(self, ticket: Ticket, delivered: bool, detail: dict[str, str]) -> None:
        """Record the in-flight report's outcome (after every reporter was tried)."""
        if self._in_flight is ticket:
            self._in_flight = None
        if delivered:
            self.stats.delivered += 1
            self._last_sent[ticket.report.agent] = ticket.report.key
            self._last_sent.move_to_end(ticket.report.agent)
            while len(self._last_sent) > _LAST_SENT_AGENTS:
                self._last_sent.popitem(last=False)
        else:
            self.stats.failed += 1
        ticket.finish("delivered" if delivered else "failed", detail)

    def close(self) -> list[Ticket]:
        """Refuse new reports; :meth:`take` still hands out what waits, then raises.

        Returns the tickets still waiting (the caller may abandon them).
        """
        self._closed = True
        self._wakeup.set()
        return list(self._waiting)

    def abandon(self, reason: str) -> None:
        """Finish every waiting and in-flight ticket as ``closed`` with ``reason``."""
        for ticket in (*self._waiting, self._in_flight):
            if ticket is not None:
                ticket.finish("closed", {"queue": reason})
        self._waiting.clear()
        self._in_flight = None
