"""A deterministic link simulator driving two mux cores on a virtual clock.

Used by the property tests and by ``tunneld bench mux``. A ``Link`` is one direction
of one path with loss, duplication, reordering, delay and jitter, a bandwidth with a
bounded queue (tail drop) and an MTU; all randomness comes from the ``random.Random``
passed in, so a seed reproduces a run exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tunneld.proto.mux._connection import Connection
from tunneld.proto.mux._events import Path

__all__ = ["Link", "LinkConfig", "LinkStats", "Simulation"]


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One direction of a simulated path (seconds, bytes, bytes per second)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.010
    delay: float = 0.005
    jitter: float = 0.0
    bandwidth: float | None = None
    queue_limit: int = 256 * 1024
    mtu: int = 1500


@dataclass(slots=True)
class LinkStats:
    sent: int = 0
    delivered: int = 0
    bytes_delivered: int = 0
    lost: int = 0
    queue_dropped: int = 0
    mtu_dropped: int = 0
    duplicated: int = 0


@dataclass(slots=True)
class Link:
    """One direction of one path: datagrams in with ``send``, out with ``pop_due``."""

    config: LinkConfig
    rng: random.Random
    stats: LinkStats = field(default_factory=LinkStats)
    _busy_until: float = 0.0
    _seq: int = 0
    _heap: list[tuple[float, int, bytes]] = field(default_factory=list)
    _last_arrival: float = 0.0

    def send(self, data: bytes, now: float) -> None:
        config = self.config
        self.stats.sent += 1
        if len(data) > config.mtu:
            self.stats.mtu_dropped += 1
            return
        if config.bandwidth is not None:
            start = max(now, self._busy_until)
            if (start - now) * config.bandwidth + len(data) > config.queue_limit:
                self.stats.queue_dropped += 1
                return
            self._busy_until = start + len(data) / config.bandwidth
            leave = self._busy_until
        else:
            leave = now
        if config.loss and self.rng.random() < config.loss:
            self.stats.lost += 1
            return
        copies = 1
        if config.duplicate and self.rng.random() < config.duplicate:
            copies = 2
            self.stats.duplicated += 1
        for _ in range(copies):
            arrival = leave + config.delay
            if config.jitter:
                # Jitter delays but keeps FIFO order; reordering is its own knob.
                arrival = max(arrival + self.rng.random() * config.jitter, self._last_arrival)
            self._last_arrival = max(self._last_arrival, arrival)
            if config.reorder and self.rng.random() < config.reorder:
                arrival += config.reorder_delay
            self._seq += 1
            heapq.heappush(self._heap, (arrival, self._seq, data))

    def next_arrival(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[bytes]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            data = heapq.heappop(heap)[2]
            self.stats.delivered += 1
            self.stats.bytes_delivered += len(data)
            due.append(data)
        return due

    def clear(self) -> None:
        """Drop everything in flight (a path that died)."""
        self._heap.clear()


class Simulation:
    """Two connections ``a`` and ``b`` joined by links, one pair per path.

    A datagram ``a`` sends on path P travels ``links[P][0]`` and arrives at ``b`` as
    received on P (and ``links[P][1]`` the other way).
    """

    def __init__(self, a: Connection, b: Connection, *, now: float = 0.0) -> None:
        self.a = a
        self.b = b
        self.now = now
        self.links: dict[Path, tuple[Link, Link]] = {}

    def add_path(self, path: Path, a_to_b: Link, b_to_a: Link) -> None:
        self.links[path] = (a_to_b, b_to_a)

    def flush(self) -> None:
        """Move whatever both sides want to send into the links."""
        for sender, index in ((self.a, 0), (self.b, 1)):
            while True:
                datagrams = sender.datagrams_to_send(self.now)
                for data, path in datagrams:
                    pair = self.links.get(path)
                    if pair is not None:
                        pair[index].send(data, self.now)
                if len(datagrams) < 64:
                    break

    def next_time(self) -> float | None:
        times = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
        for a_to_b, b_to_a in self.links.values():
            for link in (a_to_b, b_to_a):
                arrival = link.next_arrival()
                if arrival is not None:
                    times.append(arrival)
        return min(times) if times else None

    def step(self, until: float) -> bool:
        """Advance to the next event (at most ``until``); False once nothing is left."""
        self.flush()
        when = self.next_time()
        if when is None or when > until:
            self.now = max(self.now, until)
            return False
        self.now = max(self.now, when)
        now = self.now
        for path, (a_to_b, b_to_a) in self.links.items():
            for data in a_to_b.pop_due(now):
                self.b.receive_datagram(data, path, now)
            for data in b_to_a.pop_due(now):
                self.a.receive_datagram(data, path, now)
        for conn in (self.a, self.b):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        self.flush()
        return True

    def run(self, until: float, app: Callable[[], bool] | None = None) -> bool:
        """Step until ``until`` or until ``app()`` (called after each step) returns True.

        Returns True if ``app`` asked to stop.
        """
        if app is not None and app():
            return True
        while self.now < until:
            progressed = self.step(until)
            if app is not None and app():
                return True
            if not progressed:
                break
        return False
