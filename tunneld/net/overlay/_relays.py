"""Several DERP relays: home relay choice by latency, and short-lived links to others.

A node has one *home* relay: the one it stays connected to, that peers reach it
through, and that it announces in ``update_self``. The candidates are the configured
``derp_url``, ``OverlayConfig.relays`` and the relay map the coordinator sends. The
node pings every candidate now and then (:class:`RelaySelector` decides; the overlay
measures) and moves home only when another relay is clearly and lastingly better:
at least ``min_gain`` (10 ms) faster *and* below ``ratio`` (2/3) of the current
one's round trip, continuously for ``hold`` seconds (SPECS: "switch only if ≥ 10 ms
better and below 2/3 of the current").

Packets for a peer whose home relay is another one we know go to that relay, over a
:class:`RelayLinks` link opened on first use and closed after ``idle_timeout``
without use (Tailscale's "DERP connections to peers' home regions").

A relay keeps one connection per client key, so joining the same relay under a
second URL would drop the first connection: links refuse a relay whose key we are
already connected to (it is an *alias*; traffic for it goes to the home relay).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

import trio

from tunneld.log import get_logger
from tunneld.net.derp import DerpClient, DerpConnectError, DerpConnectionClosed
from tunneld.proto.coord import HomeRelay
from tunneld.proto.derp import RecvPacket, ServerInfo

__all__ = ["RELAY_BATCH_BYTES", "RelayLinks", "RelayPacer", "RelaySelector", "fill_batch"]

log = get_logger(__name__)

RELAY_BATCH_BYTES = 64 * 1024  # per WebSocket message to a relay
_RATE_MARGIN = 0.9  # share of the relay's advertised rate and burst we use
_SEND_OVERHEAD = 5 + 32  # SEND_PACKET frame header and destination key


def fill_batch(
    receive: trio.MemoryReceiveChannel[tuple[bytes, bytes]],
    batch: list[tuple[bytes, bytes]],
    diverted: Callable[[tuple[bytes, bytes]], bool] | None = None,
) -> int:
    """Add to ``batch`` (its first packet already in) the ``(key, packet)`` items
    queued on ``receive`` now, up to RELAY_BATCH_BYTES; returns the batch's packet
    bytes. ``diverted(item)`` True: the item went elsewhere, leave it out.

    Whatever queued up meanwhile goes in the same WebSocket message: one message per
    WireGuard packet made the relay path CPU-bound on per-message work (framing,
    task switches) on both ends.
    """
    size = len(batch[0][1])
    while size < RELAY_BATCH_BYTES:
        try:
            item = receive.receive_nowait()
        except trio.WouldBlock:
            break
        if diverted is not None and diverted(item):
            continue
        batch.append(item)
        size += len(item[1])
    return size


class RelaySelector:
    """Which relay is home, from measured round trips, with hysteresis (sans-IO).

    Args:
        home: the configured home relay (the first home; always a candidate).
        configured: other relays from the node's own configuration.
        min_gain: seconds another relay must be faster by before it may win.
        ratio: and its round trip must be below this share of the current one's.
        hold: for this many seconds without a break.
    """

    def __init__(
        self,
        home: HomeRelay,
        configured: Iterable[HomeRelay] = (),
        *,
        min_gain: float = 0.010,
        ratio: float = 2 / 3,
        hold: float = 60.0,
    ) -> None:
        self.home = home
        self._configured = (home, *configured)
        self._offered: tuple[HomeRelay, ...] = ()
        self.latency: dict[str, float] = {}  # url -> last round trip (inf: unreachable)
        self.aliases: set[str] = set()  # urls found to be the home relay's own key
        self._min_gain = min_gain
        self._ratio = ratio
        self._hold = hold
        self._better: tuple[str, float] | None = None  # (url, since)

    @property
    def candidates(self) -> dict[str, HomeRelay]:
        """Every relay we may use, by URL (configured first, then offered)."""
        found: dict[str, HomeRelay] = {}
        for relay in (*self._configured, *self._offered, self.home):
            if relay.url and relay.url not in found and relay.url not in self.aliases:
                found[relay.url] = relay
        return found

    def offer(self, relays: Iterable[HomeRelay]) -> None:
        """The coordinator's relay map (replaces the previous one)."""
        self._offered = tuple(relays)
        known = self.candidates
        for url in list(self.latency):
            if url not in known:
                del self.latency[url]

    def alias(self, url: str) -> None:
        """``url`` names the home relay (or another candidate) under a second name."""
        self.aliases.add(url)
        self.latency.pop(url, None)

    def note(self, url: str, rtt: float | None) -> None:
        """One measurement of ``url``: the round trip in seconds, None if unreachable."""
        if url not in self.aliases:
            self.latency[url] = math.inf if rtt is None else rtt

    def decide(self, now: float) -> HomeRelay | None:
        """The new home relay if it is time to move, else None (then ``home`` stays)."""
        known = self.candidates
        current = self.latency.get(self.home.url, math.inf)
        best_url, best = self.home.url, current
        for url, rtt in self.latency.items():
            if url in known and rtt < best:
                best_url, best = url, rtt
        better = (
            best_url != self.home.url
            and math.isfinite(best)
            and current - best >= self._min_gain
            and best < self._ratio * current
        )
        if not better:
            self._better = None
            return None
        if self._better is None or self._better[0] != best_url:
            self._better = (best_url, now)
        if now - self._better[1] < self._hold:
            return None
        self._better = None
        self.home = known[best_url]
        return self.home


# Tailscale's derper queues 32 packets per receiving client and does not say so.
DERPER_QUEUE_PACKETS = 32
# At most this many datagrams in flight through any relay, however deep its queue:
# they wait in socket buffers ahead of every other stream's packets to that peer
# (64 of 63 KiB: about 4 MiB, some 25 ms at the relay bench's rate).
RELAY_WINDOW_CAP = 64


def relay_window(info: ServerInfo | None) -> int:
    """Datagrams to keep in flight through a relay that sent ``info`` (None: unknown).

    Over TCP the mux sees no loss, but the relay drops what overflows its queue for the
    receiver: keep three quarters of the depth it announced (derper's 32 when it did
    not), leaving room for other senders' packets to the same receiver. A bulk transfer
    through the relay is bound by this window (docs/overlay.md).
    """
    depth = (info.send_queue_packets if info is not None else 0) or DERPER_QUEUE_PACKETS
    return max(1, min(RELAY_WINDOW_CAP, depth * 3 // 4))


class RelayPacer:
    """Keeps writes under 90% of the rate and burst a relay advertised in SERVER_INFO.

    The relay drops whatever exceeds its token bucket, and over TCP the mux sees no
    loss to slow down for. The relay counts on arrival, which can bunch our writes,
    hence the margin.
    """

    def __init__(self, info: ServerInfo) -> None:
        self._rate = info.token_bucket_bytes_per_second * _RATE_MARGIN
        self._burst = info.token_bucket_bytes_burst * _RATE_MARGIN
        self._tokens = self._burst
        self._stamp = trio.current_time()

    async def wait(self, payload_bytes: int, packets: int) -> None:
        """Wait until a write of ``packets`` packets (``payload_bytes`` in all) fits.

        No checkpoint unless it waits (the write that follows yields anyway).
        """
        if self._rate <= 0:
            return
        # What the relay counts: whole frames (type, length, destination key).
        cost = min(payload_bytes + packets * _SEND_OVERHEAD, self._burst)
        now = trio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < cost:
            await trio.sleep((cost - self._tokens) / self._rate)
            self._tokens, self._stamp = cost, trio.current_time()
        self._tokens -= cost


class _Link:
    """One non-home relay connection and its send queue."""

    def __init__(self, url: str, queue: int) -> None:
        self.url = url
        self.derp: DerpClient | None = None
        self.settled = trio.Event()  # connected, or failed
        self.failed_at: float | None = None
        self.alias: bytes | None = None
        self.error: str | None = None
        self.last_used = trio.current_time()
        self.dropped = 0
        self.send, self.receive = trio.open_memory_channel[tuple[bytes, bytes]](queue)
        self.cancel = trio.CancelScope()


class RelayLinks:
    """Short-lived connections to relays other than home, opened on first use.

    Args:
        private_key: our node key (the relay identity we connect as).
        on_packet: ``await on_packet(src_key, data)`` for every packet relayed to us.
        own_keys: relay keys we are connected to elsewhere (the home relay's): a link
            to a relay with one of these keys is refused as an alias.
        idle_timeout: a link unused (nothing sent, received or pinged) this long closes.
        retry_after: after a failed connect, the relay is not tried again for this long
            (:meth:`send` says False meanwhile, so the caller uses the home relay).
        queue: packets queued per link before new ones are dropped.
    """

    def __init__(
        self,
        private_key: bytes,
        on_packet: Callable[[bytes, bytes], Awaitable[None]],
        *,
        own_keys: Callable[[], set[bytes]],
        idle_timeout: float = 20.0,
        retry_after: float = 10.0,
        queue: int = 256,
    ) -> None:
        self._private_key = private_key
        self._on_packet = on_packet
        self._own_keys = own_keys
        self._idle_timeout = idle_timeout
        self._retry_after = retry_after
        self._queue = queue
        self._links: dict[str, _Link] = {}
        self._nursery: trio.Nursery | None = None
        self.on_alias: Callable[[str], None] | None = None
        # Called with a link's URL when it connects or closes: its SERVER_INFO (and so
        # the window for peers sent to through it) came or went.
        self.on_change: Callable[[str], None] | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Own the links' tasks until cancelled (which closes every link)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    def connected(self) -> list[str]:
        """URLs of the links connected now."""
        return sorted(url for url, link in self._links.items() if link.derp is not None)

    def server_info(self, url: str) -> ServerInfo | None:
        """What the relay at ``url`` said in SERVER_INFO, while a link to it is open."""
        link = self._links.get(url)
        return None if link is None or link.derp is None else link.derp.server_info

    def keys(self) -> set[bytes]:
        """Relay keys of the links connected now."""
        return {link.derp.server_key for link in self._links.values() if link.derp is not None}

    def close(self, url: str) -> None:
        """Close the link to ``url`` if one is open (it is about to be our home relay,
        and a relay keeps only one connection per client key)."""
        link = self._links.pop(url, None)
        if link is not None:
            link.cancel.cancel()

    def _link(self, url: str) -> _Link | None:
        """The live link to ``url``, opened if needed; None while it is known bad."""
        link = self._links.get(url)
        now = trio.current_time()
        if link is not None and link.failed_at is not None:
            if link.alias is not None or now - link.failed_at < self._retry_after:
                return None
            link = None
        if link is None:
            assert self._nursery is not None
            link = self._links[url] = _Link(url, self._queue)
            self._nursery.start_soon(self._run_link, link)
        link.last_used = now
        return link

    def send(self, url: str, key: bytes, data: bytes) -> bool:
        """Queue ``data`` for the node ``key`` through relay ``url``; never waits.

        Returns False when that relay is known to be unreachable (or an alias of one
        we are connected to): send through the home relay instead. A full queue
        drops the packet (counted) and still returns True.
        """
        link = self._link(url)
        if link is None:
            return False
        try:
            link.send.send_nowait((key, data))
        except trio.WouldBlock:
            link.dropped += 1
        return True

    async def ping(self, url: str, count: int = 3, timeout: float = 2.0) -> float | None:  # noqa: ASYNC109
        """The lowest of ``count`` round trips to relay ``url`` in seconds (opening a
        link if none is open, which then idles out), or None if it cannot be reached
        within ``timeout`` seconds per step."""
        link = self._link(url)
        if link is None:
            return None
        with trio.move_on_after(timeout):
            await link.settled.wait()
        derp = link.derp
        if derp is None:
            return None
        best = math.inf
        for _ in range(count):
            try:
                best = min(best, await derp.ping(timeout=timeout))
            except (TimeoutError, DerpConnectionClosed):
                return None
        link.last_used = trio.current_time()
        return best

    async def _run_link(self, link: _Link) -> None:
        try:
            with link.cancel:
                async with DerpClient.connect(
                    link.url,
                    self._private_key,
                    handshake_timeout=5.0,
                    refuse_server_keys=self._own_keys() | self.keys(),
                ) as derp:
                    link.derp = derp
                    link.settled.set()
                    log.info("overlay.relay_link_open", relay=link.url)
                    self._changed(link)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer, link, derp)
                        nursery.start_soon(self._reader, link, derp)
                        await self._idle(link)
                        nursery.cancel_scope.cancel()
                log.info("overlay.relay_link_idle", relay=link.url)
        except* DerpConnectError as group:
            exc = group.exceptions[0]
            assert isinstance(exc, DerpConnectError)
            link.alias = exc.alias
            self._failed(link, str(exc))
        except* (DerpConnectionClosed, OSError) as group:
            self._failed(link, "; ".join(str(e) for e in group.exceptions))
        finally:
            opened = link.derp is not None
            link.derp = None
            link.settled.set()
            if self._links.get(link.url) is link and link.failed_at is None:
                del self._links[link.url]  # idle: the next use opens a new one
            if opened:
                self._changed(link)

    def _changed(self, link: _Link) -> None:
        if self.on_change is not None:
            self.on_change(link.url)

    def _failed(self, link: _Link, error: str) -> None:
        link.failed_at = trio.current_time()
        link.error = error
        log.info("overlay.relay_link_failed", relay=link.url, error=error)
        if link.alias is not None and self.on_alias is not None:
            self.on_alias(link.url)

    async def _idle(self, link: _Link) -> None:
        while True:
            left = link.last_used + self._idle_timeout - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(left)

    async def _reader(self, link: _Link, derp: DerpClient) -> None:
        while True:
            for event in await derp.receive_batch():
                if isinstance(event, RecvPacket):
                    link.last_used = trio.current_time()
                    await self._on_packet(event.src, event.data)

    async def _writer(self, link: _Link, derp: DerpClient) -> None:
        pacer = RelayPacer(derp.server_info)
        while True:
            batch = [await link.receive.receive()]
            size = fill_batch(link.receive, batch)
            await pacer.wait(size, len(batch))
            await derp.send_packets(batch)
