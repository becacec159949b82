"""The tunnel table: refcounted leases on overlay tunnels, one tunnel per agent.

DESIGN.md, "Paths and lifetimes": ``acquire(agent)`` returns a lease; each open local
stream or tool call holds one. When the count drops to 0 the tunnel idles; after
``idle_timeout`` the table sends ``remove_tunnel`` and forgets it. An acquire during
that grace period is instant. Replaying tunnels after a coordinator reconnect is the
overlay's job (it keeps its own list); :meth:`TunnelTable.tunnels` is the table's view.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from tunneld.log import get_logger

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "AgentOfflineError",
    "Lease",
    "NotPermittedError",
    "TunnelBackend",
    "TunnelBackendError",
    "TunnelError",
    "TunnelInfo",
    "TunnelState",
    "TunnelTable",
    "TunnelTableClosedError",
    "UnknownAgentError",
    "UnreachableError",
]

log = get_logger(__name__)

DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_CONNECT_TIMEOUT: Final = 15.0
_REMOVE_TIMEOUT: Final = 5.0


class TunnelError(Exception):
    """Acquiring a tunnel failed. ``code`` is stable (the local API's error code)."""

    code: str = "tunnel_error"

    def __init__(self, message: str, *, agent: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.agent = agent

    def copy(self) -> TunnelError:
        """A fresh exception like this one, for raising in another waiting task."""
        return type(self)(self.message, agent=self.agent)


class UnknownAgentError(TunnelError):
    """No agent by that name is known to the control plane."""

    code = "unknown_agent"


class NotPermittedError(TunnelError):
    """The control plane does not let this node reach that agent."""

    code = "not_permitted"


class AgentOfflineError(TunnelError):
    """The agent exists but is not connected to the control plane."""

    code = "agent_offline"


class UnreachableError(TunnelError):
    """The tunnel was set up but the peer did not become reachable before the deadline."""

    code = "unreachable"


class TunnelBackendError(TunnelError):
    """The overlay failed in an unexpected way (a bug or an internal error; logged)."""

    code = "backend_error"


class TunnelTableClosedError(TunnelError):
    """The table is shutting down (or was never started) and grants no new leases."""

    code = "shutting_down"


class TunnelBackend(Protocol):
    """What the table needs of the overlay (``tunneld.net.overlay.Overlay`` adapts to it)."""

    async def add_tunnel(self, agent: str) -> str:
        """Resolve ``agent`` by name and start a tunnel to it; returns its peer id.

        Raises:
            UnknownAgentError, NotPermittedError, AgentOfflineError: as named.
        """
        ...

    async def wait_reachable(self, peer: str, deadline: float) -> None:
        """Return once ``peer`` answers over the tunnel (trio time ``deadline``).

        Raises:
            UnreachableError: not reachable by ``deadline``.
        """
        ...

    async def remove_tunnel(self, peer: str) -> None:
        """Stop the tunnel to ``peer`` and drop its session."""
        ...


class TunnelState(enum.Enum):
    """Where one agent's tunnel is in its life."""

    CONNECTING = "connecting"
    ACTIVE = "active"  # at least one lease
    IDLE = "idle"  # no lease; removed when the idle timer fires
    REMOVING = "removing"


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    """A snapshot of one tracked tunnel, for status output."""

    agent: str
    peer: str | None
    state: TunnelState
    leases: int
    idle_since: float | None


@dataclass(frozen=True, slots=True)
class Lease:
    """One holder's claim on a tunnel; released when its ``acquire`` block exits."""

    agent: str
    peer: str
    lease_id: int


class _Entry:
    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.peer: str | None = None
        self.state = TunnelState.CONNECTING
        self.leases = 0
        self.ready = trio.Event()  # connect finished (successfully or not)
        self.gone = trio.Event()  # removed from the table
        self.error: TunnelError | None = None
        self.idle_scope: trio.CancelScope | None = None
        self.idle_since: float | None = None


def _removing(entry: _Entry) -> bool:
    # A function, not an inline test: the state changes across awaits.
    return entry.state is TunnelState.REMOVING or entry.gone.is_set()


class TunnelTable:
    """Refcounted tunnels to agents over a :class:`TunnelBackend`.

    Run it as a service (``await nursery.start(table.run)``): connects and idle
    timers are its tasks, so a holder cancelled mid-acquire never leaves a
    half-made tunnel behind (the connect finishes and the tunnel idles out).
    Time is trio's clock (tests use ``autojump_clock``).
    """

    def __init__(
        self,
        backend: TunnelBackend,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        if idle_timeout < 0 or connect_timeout <= 0:
            raise ValueError("idle_timeout must be >= 0 and connect_timeout > 0")
        self._backend = backend
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._entries: dict[str, _Entry] = {}
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._next_lease = 0
        self._on_event = on_event

    def _emit(self, event: str, entry: _Entry, **fields: object) -> None:
        # Events for /v0/watch: {"event": "tunnel.up", "agent": ..., "peer": ...}.
        if self._on_event is not None:
            self._on_event({"event": event, "agent": entry.agent, "peer": entry.peer, **fields})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then every tracked tunnel is removed (best effort,
        at most a few seconds) and new acquires fail with :class:`TunnelTableClosedError`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Refuse new acquires and remove every tracked tunnel (best effort, bounded).

        Call it while the backend still runs (e.g. before cancelling the overlay) so
        the removals reach the coordinator; :meth:`run` calls it on exit too.
        """
        self._closed = True
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            entry.gone.set()
            entry.ready.set()
            if entry.idle_scope is not None:
                entry.idle_scope.cancel()
        with trio.move_on_after(_REMOVE_TIMEOUT):
            for entry in entries:
                if entry.peer is not None:
                    await self._remove_quietly(entry.agent, entry.peer)

    def tunnels(self) -> list[TunnelInfo]:
        """The tracked tunnels, sorted by agent name."""
        return [
            TunnelInfo(e.agent, e.peer, e.state, e.leases, e.idle_since)
            for _, e in sorted(self._entries.items())
        ]

    def leases(self, agent: str) -> int:
        """How many leases on ``agent``'s tunnel are held right now (0 if untracked)."""
        entry = self._entries.get(agent)
        return entry.leases if entry is not None else 0

    @asynccontextmanager
    async def acquire(self, agent: str) -> AsyncIterator[Lease]:
        """Hold a lease on the tunnel to ``agent`` for the ``async with`` block.

        The first acquire sends ``add_tunnel`` and waits until the peer is reachable
        (at most ``connect_timeout``; wrap in a cancel scope for less); concurrent acquires share
        that wait. The lease is released when the block exits, however it exits
        (cancellation and exceptions included): release is synchronous. A lease on a
        tunnel that is up is granted at once: cancellation is checked, but other tasks
        do not get to run first (the stream the caller opens next lets them).

        Raises:
            UnknownAgentError, NotPermittedError, AgentOfflineError, UnreachableError,
            TunnelBackendError, TunnelTableClosedError: as their ``code`` says; the
                table keeps no state for an agent whose connect failed.
        """
        lease = await self._acquire(agent)
        try:
            yield lease
        finally:
            self._release(lease)

    async def lease(self, agent: str) -> Lease:
        """A lease like :meth:`acquire`'s, for a holder that cannot keep a ``with`` block
        open (the local API hands a dial's lease from one request step to another).

        The caller must give it back with :meth:`release` exactly once, on every path
        (cancellation included); prefer :meth:`acquire`.

        Raises:
            the errors of :meth:`acquire`.
        """
        return await self._acquire(agent)

    def release(self, lease: Lease) -> None:
        """Give back a lease from :meth:`lease` (synchronous; never raises, never waits)."""
        self._release(lease)

    async def _acquire(self, agent: str) -> Lease:
        timeout = self.connect_timeout
        deadline = trio.current_time() + timeout
        while True:
            if self._closed or self._nursery is None:
                await trio.lowlevel.checkpoint()
                raise TunnelTableClosedError("the daemon is shutting down", agent=agent)
            entry = self._entries.get(agent)
            if entry is None:
                entry = _Entry(agent)
                self._entries[agent] = entry
                self._nursery.start_soon(self._connect, entry, deadline)
            if entry.state is TunnelState.REMOVING:
                # The old tunnel is on its way out; start afresh once it is gone.
                with trio.move_on_at(deadline):
                    await entry.gone.wait()
                if not entry.gone.is_set():
                    raise UnreachableError(
                        f"timed out waiting for the old tunnel to {agent!r} to close", agent=agent
                    )
                continue
            if not entry.ready.is_set():
                with trio.move_on_at(deadline):
                    await entry.ready.wait()
                if not entry.ready.is_set():
                    raise UnreachableError(
                        f"agent {agent!r} not reachable within {timeout:g}s", agent=agent
                    )
            else:
                # Up already: a cancel point but no schedule point. Every caller goes
                # on to open a stream, which is one; a second was a scheduler round
                # (with its I/O poll) per dial for nothing.
                await trio.lowlevel.checkpoint_if_cancelled()
            if entry.error is not None:
                raise entry.error.copy()
            if _removing(entry):
                continue
            return self._grant(entry)

    def _grant(self, entry: _Entry) -> Lease:
        assert entry.peer is not None
        entry.leases += 1
        entry.state = TunnelState.ACTIVE
        entry.idle_since = None
        # A running idle timer is left to find the entry busy when it wakes: one
        # timer task per idle period, not a spawn and a cancel per lease.
        self._next_lease += 1
        return Lease(entry.agent, entry.peer, self._next_lease)

    def _release(self, lease: Lease) -> None:
        entry = self._entries.get(lease.agent)
        if entry is None or entry.peer != lease.peer or entry.leases <= 0:
            return  # the table shut down under the holder
        entry.leases -= 1
        if entry.leases == 0:
            self._start_idle(entry)

    def _start_idle(self, entry: _Entry) -> None:
        entry.state = TunnelState.IDLE
        entry.idle_since = trio.current_time()
        if self._nursery is None or entry.idle_scope is not None:
            return  # the running timer sees the new idle_since when it wakes
        scope = trio.CancelScope(deadline=math.inf)
        entry.idle_scope = scope
        self._nursery.start_soon(self._idle, entry, scope)

    async def _idle(self, entry: _Entry, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                since = entry.idle_since
                if entry.state is not TunnelState.IDLE or since is None:
                    break  # leased again: the next release starts a timer
                deadline = since + self.idle_timeout
                if trio.current_time() >= deadline:
                    break
                await trio.sleep_until(deadline)
        if entry.idle_scope is scope:
            entry.idle_scope = None
        if scope.cancelled_caught or entry.state is not TunnelState.IDLE:
            return
        entry.state = TunnelState.REMOVING
        entry.idle_scope = None
        log.info("tunnel.idle_expired", agent=entry.agent, peer=entry.peer)
        try:
            if entry.peer is not None:
                with trio.move_on_after(_REMOVE_TIMEOUT):
                    await self._remove_quietly(entry.agent, entry.peer)
        finally:
            self._forget(entry)
            self._emit("tunnel.removed", entry, reason="idle")

    def _forget(self, entry: _Entry) -> None:
        if self._entries.get(entry.agent) is entry:
            del self._entries[entry.agent]
        entry.gone.set()
        entry.ready.set()

    async def _remove_quietly(self, agent: str, peer: str) -> None:
        try:
            await self._backend.remove_tunnel(peer)
        except Exception as exc:
            log.warning("tunnel.remove_failed", agent=agent, peer=peer, error=repr(exc))

    async def _connect(self, entry: _Entry, deadline: float) -> None:
        agent = entry.agent
        try:
            # A second of slack: the backend's own deadline error says more than ours.
            with trio.fail_after(max(0.0, deadline - trio.current_time()) + 1.0):
                entry.peer = await self._backend.add_tunnel(agent)
                await self._backend.wait_reachable(entry.peer, deadline)
        except TunnelError as exc:
            entry.error = exc
        except trio.TooSlowError:
            entry.error = UnreachableError(
                f"agent {agent!r} not reachable within the connect deadline", agent=agent
            )
        except Exception as exc:
            log.exception("tunnel.backend_failed", agent=agent)
            entry.error = TunnelBackendError(
                f"internal error setting up the tunnel to {agent!r}: {exc!r}", agent=agent
            )
        if entry.error is not None:
            log.info("tunnel.connect_failed", agent=agent, code=entry.error.code)
            self._emit("tunnel.failed", entry, code=entry.error.code, message=entry.error.message)
            if not entry.error.agent:
                entry.error.agent = agent
            entry.state = TunnelState.REMOVING
            try:
                if entry.peer is not None:
                    with trio.move_on_after(_REMOVE_TIMEOUT):
                        await self._remove_quietly(agent, entry.peer)
            finally:
                self._forget(entry)
            return
        log.info("tunnel.connected", agent=agent, peer=entry.peer)
        self._emit("tunnel.up", entry)
        entry.ready.set()
        # Nobody may be waiting any more (all acquirers cancelled): idle it out.
        if entry.leases == 0 and entry.state is TunnelState.CONNECTING:
            self._start_idle(entry)
