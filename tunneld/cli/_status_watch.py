"""``tunneld status --watch``: a live view of the daemon, from its events and its status.

On a terminal the whole view (node, peers with path and RTT, tunnels with leases and
idle deadlines, the last events) is redrawn in place. Otherwise — a pipe, a log file —
it prints one plain line per change: events as they come, and a line whenever a peer's
or a tunnel's state changes between two status reads (RTT and byte counters alone do
not make a line, or a log would fill with them).

The view re-reads ``GET /v0/status`` after every ``GET /v0/watch`` event and at least
every ``interval`` seconds; if the daemon goes away it says so and keeps retrying at
that interval. SIGINT or SIGTERM ends it cleanly.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Final, TextIO

import h11
import trio

from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient

__all__ = [
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "LineReporter",
    "render_view",
    "watch_status",
]

MIN_INTERVAL: Final = 0.2
MAX_INTERVAL: Final = 3600.0
_RECENT_EVENTS: Final = 8
_HOME_CLEAR: Final = "\x1b[H\x1b[2J"
_HIDE_CURSOR: Final = "\x1b[?25l"
_SHOW_CURSOR: Final = "\x1b[?25h"

Json = Mapping[str, object]
# A daemon that stops, restarts or answers garbage mid-view: shown and retried, not fatal.
_LOST: Final = (
    DaemonUnavailableError,
    ApiError,
    OSError,
    ValueError,  # a malformed JSON line
    h11.ProtocolError,  # the connection ended inside a response
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _seconds(value: object) -> str:
    return f"{value:.0f}s" if isinstance(value, int | float) else "-"


def _rtt(value: object) -> str:
    return f"{value * 1000:.1f}ms" if isinstance(value, int | float) else "-"


def _dicts(value: object) -> list[Json]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _node(status: Json) -> Json:
    node = status.get("node")
    return node if isinstance(node, dict) else {}


def _peer_name(peer: Json) -> str:
    owner, name = peer.get("owner"), peer.get("name")
    return f"{owner}/{name}" if owner else str(name)


def _path(peer: Json) -> str:
    endpoint = peer.get("direct_endpoint")
    return f"direct {endpoint}" if endpoint else str(peer.get("path") or "-")


def _idle(tunnel: Json) -> str:
    # The deadline is when the idle tunnel will be removed unless a lease comes back.
    left = tunnel.get("idle_deadline_seconds")
    if isinstance(left, int | float):
        return f"removed in {left:.0f}s"
    idle = tunnel.get("idle_seconds")
    return f"idle {idle:.0f}s" if isinstance(idle, int | float) else "-"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def describe_event(event: Json) -> str:
    """``tunnel.up agent=web1 peer=web1``: the event name, then its fields."""
    fields = " ".join(f"{key}={value}" for key, value in sorted(event.items()) if key != "event")
    return f"{event.get('event')} {fields}".rstrip()


def render_view(
    status: Json | None,
    events: Sequence[tuple[float, Json]],
    *,
    now: float,
    interval: float,
    error: str | None = None,
) -> list[str]:
    """The lines of the full-screen view for one ``/v0/status`` answer (None: unknown)."""
    lines = [f"tunneld status --watch   {_clock(now)}   every {interval:g}s, Ctrl-C quits"]
    if error is not None:
        lines.append(f"daemon unreachable: {error}")
    if status is not None:
        node = _node(status)
        lines.append(
            f"node {node.get('name')}   coordinator: {node.get('coordinator')}"
            f"   relay: {node.get('relay')}   udp: {node.get('udp') or '-'}"
        )
        for key in ("coordinator_error", "relay_error"):
            if node.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {node[key]}")
        lines.append("")
        peers = _dicts(node.get("peers"))
        if peers:
            rows = [["PEER", "ONLINE", "HANDSHAKE", "PATH", "RTT", "STREAMS"]]
            rows += [
                [
                    _peer_name(p),
                    "yes" if p.get("online") else "no",
                    "yes" if p.get("handshake") else "no",
                    _path(p),
                    _rtt(p.get("rtt")),
                    str(p.get("streams", "-")),
                ]
                for p in peers
            ]
            lines += _table(rows)
        else:
            lines.append("peers: none")
        lines.append("")
        tunnels = _dicts(status.get("tunnels"))
        if tunnels:
            rows = [["TUNNEL", "STATE", "LEASES", "IDLE", "PEER"]]
            rows += [
                [
                    str(t.get("agent")),
                    str(t.get("state")),
                    str(t.get("leases")),
                    _idle(t),
                    str(t.get("peer") or "-"),
                ]
                for t in tunnels
            ]
            lines += _table(rows)
        else:
            lines.append("tunnels: none")
    if events:
        lines.append("")
        lines.append("recent events:")
        lines += [f"  {_clock(at)}  {describe_event(event)}" for at, event in events]
    return lines


class LineReporter:
    """Turns successive status answers into one plain line per change (non-TTY mode)."""

    def __init__(self) -> None:
        self._node: tuple[object, ...] | None = None
        self._peers: dict[str, tuple[object, ...]] = {}
        self._tunnels: dict[str, tuple[object, ...]] = {}

    def changes(self, status: Json) -> list[str]:
        """Lines for what differs from the previous answer (everything, the first time)."""
        lines = []
        node = _node(status)
        node_state = (node.get("name"), node.get("coordinator"), node.get("relay"))
        if node_state != self._node:
            self._node = node_state
            lines.append(
                f"node {node.get('name')} coordinator={node.get('coordinator')}"
                f" relay={node.get('relay')}"
            )
        peers: dict[str, tuple[object, ...]] = {}
        for peer in _dicts(node.get("peers")):
            name = _peer_name(peer)
            online, handshake, path = (
                bool(peer.get("online")),
                bool(peer.get("handshake")),
                _path(peer),
            )
            peers[name] = (online, handshake, path)
            if self._peers.get(name) != peers[name]:
                lines.append(
                    f"peer {name} online={'yes' if online else 'no'}"
                    f" handshake={'yes' if handshake else 'no'} path={path}"
                    f" rtt={_rtt(peer.get('rtt'))}"
                )
        lines += [f"peer {name} gone" for name in self._peers if name not in peers]
        self._peers = peers
        tunnels: dict[str, tuple[object, ...]] = {}
        for tunnel in _dicts(status.get("tunnels")):
            agent = str(tunnel.get("agent"))
            state = (tunnel.get("state"), tunnel.get("leases"), tunnel.get("peer"))
            tunnels[agent] = state
            if self._tunnels.get(agent) != state:
                deadline = tunnel.get("idle_deadline_seconds")
                lines.append(
                    f"tunnel {agent} state={state[0]} leases={state[1]} peer={state[2] or '-'}"
                    + (f" idle_deadline={_seconds(deadline)}" if deadline is not None else "")
                )
        lines += [f"tunnel {agent} gone" for agent in self._tunnels if agent not in tunnels]
        self._tunnels = tunnels
        return lines


async def _pump_events(
    client: LocalApiClient, send: trio.MemorySendChannel[Json | None], interval: float
) -> None:
    """Forward watch events; ``None`` marks a lost watch. Reconnects every ``interval``."""
    while True:
        try:
            async with aclosing(client.watch()) as events:
                async for event in events:
                    await send.send(event)
        except _LOST:
            pass
        await send.send(None)
        await trio.sleep(interval)


async def watch_status(client: LocalApiClient, out: TextIO, *, interval: float, tty: bool) -> None:
    """Run the view on ``out`` until SIGINT/SIGTERM (then return normally) or cancellation.

    Raises:
        DaemonUnavailableError, ApiError: the very first status read failed (later
            failures are shown in the view and retried).
    """
    first = await client.request("GET", "/v0/status")
    recent: collections.deque[tuple[float, Json]] = collections.deque(maxlen=_RECENT_EVENTS)
    reporter = LineReporter()
    send, receive = trio.open_memory_channel[Json | None](64)

    def emit(lines: list[str]) -> None:
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()

    def show(status: object, error: str | None) -> None:
        snapshot = status if isinstance(status, dict) else None
        if tty:
            view = render_view(
                snapshot, list(recent), now=time.time(), interval=interval, error=error
            )
            out.write(_HOME_CLEAR + "\n".join(view) + "\n")
            out.flush()
        elif snapshot is not None:
            emit([f"{_clock(time.time())} {line}" for line in reporter.changes(snapshot)])

    async def refresh() -> None:
        error = None
        status: object = None
        try:
            status = await client.request("GET", "/v0/status")
        except _LOST as exc:
            error = str(exc) or type(exc).__name__
            if not tty:
                emit([f"{_clock(time.time())} daemon unreachable: {error}"])
        show(status, error)

    if tty:
        out.write(_HIDE_CURSOR)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(_pump_events, client, send, interval)
                show(first, None)
                while True:
                    with trio.move_on_after(interval):
                        event = await receive.receive()
                        if event is not None and event.get("event") != "watch.started":
                            recent.append((time.time(), event))
                            if not tty:
                                emit([f"{_clock(time.time())} event {describe_event(event)}"])
                    await refresh()
    finally:
        if tty:
            out.write(_SHOW_CURSOR)
            out.flush()
