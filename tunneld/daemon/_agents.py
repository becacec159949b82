"""Agent access for MCP tool calls: streams under tunnel leases on the daemon's overlay.

:class:`DaemonAgents` implements :class:`tunneld.mcp.AgentAccess` for one caller. A
tool's ``open_stream(agent, service)`` acquires a lease on the agent's tunnel from the
daemon's :class:`TunnelTable` and holds it for as long as the stream is open; nothing
here builds a transport. Concurrent calls to one agent share its one tunnel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio

from tunneld.daemon._tunnels import (
    NotPermittedError,
    TunnelError,
    TunnelTable,
    UnreachableError,
)
from tunneld.log import get_logger
from tunneld.mcp import Caller

__all__ = ["AccessCheck", "DaemonAgents", "ServiceUnavailableError"]

log = get_logger(__name__)

_CLOSE_TIMEOUT: Final = 1.0

StreamOpener = Callable[[str, str], Awaitable[trio.abc.HalfCloseableStream]]
AgentLister = Callable[[], Sequence[Mapping[str, object]]]
# Per-caller authorization (docs/oauth.md): the agent reference to use for this caller
# (e.g. "owner/name" as the control plane resolved it), or None when it may not.
AccessCheck = Callable[[Caller, str], Awaitable[str | None]]


class ServiceUnavailableError(TunnelError):
    """The tunnel is up but the agent refused or dropped the stream to the service."""

    code = "service_unavailable"


class DaemonAgents:
    """:class:`tunneld.mcp.AgentAccess` over the daemon's tunnel table, for ``caller``.

    ``open_stream`` is the overlay's (``Overlay.open_stream(peer, service)``);
    ``agents`` lists what the overlay knows (``GET /v0/agents``). Every caller may
    reach every agent this node may reach: the control plane already limits those to
    the daemon's user (per-caller OAuth limits come with the authorization server).
    """

    def __init__(
        self,
        tunnels: TunnelTable,
        open_stream: StreamOpener,
        agents: AgentLister,
        caller: Caller | None = None,
        access_check: AccessCheck | None = None,
    ) -> None:
        self.tunnels = tunnels
        self.caller = caller if caller is not None else Caller()
        self._open_stream = open_stream
        self._agents = agents
        self._access_check = access_check

    @asynccontextmanager
    async def open_stream(
        self, agent: str, service: str
    ) -> AsyncIterator[trio.abc.HalfCloseableStream]:
        """A stream to ``service`` on ``agent`` under a lease held until the block exits.

        Waits at most the table's ``connect_timeout`` for the tunnel and the stream.
        The stream is closed (bounded, shielded) and the lease released however the
        block exits, cancellation included.

        Raises:
            TunnelError: unknown agent, not permitted, offline, unreachable, shutting
                down; ServiceUnavailableError if the agent refuses the stream.
        """
        if self._access_check is not None:
            allowed = await self._access_check(self.caller, agent)
            if allowed is None:
                raise NotPermittedError(
                    f"{self.caller.subject or 'this caller'} may not reach agent {agent!r}",
                    agent=agent,
                )
            agent = allowed
        async with self.tunnels.acquire(agent) as lease:
            try:
                with trio.fail_after(self.tunnels.connect_timeout):
                    stream = await self._open_stream(lease.peer, service)
            except trio.TooSlowError:
                raise UnreachableError(
                    f"agent {agent!r} did not open {service!r} within"
                    f" {self.tunnels.connect_timeout:g}s",
                    agent=agent,
                ) from None
            except (OSError, trio.BrokenResourceError) as exc:
                raise ServiceUnavailableError(
                    f"agent {agent!r} refused service {service!r}: {exc}", agent=agent
                ) from None
            try:
                yield stream
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        await stream.aclose()
                    except (trio.BrokenResourceError, OSError) as exc:
                        log.info("mcp.stream_close_failed", agent=agent, error=str(exc))

    async def list_agents(self) -> list[Mapping[str, object]]:
        """The agents this node knows: name, owner, id, online, handshake, path."""
        await trio.lowlevel.checkpoint()
        agents: list[Mapping[str, object]] = [dict(agent) for agent in self._agents()]
        if self._access_check is None:
            return agents
        visible: list[Mapping[str, object]] = []
        for agent in agents:
            ref = f"{agent.get('owner')}/{agent.get('name')}"
            if await self._access_check(self.caller, ref) is not None:
                visible.append(agent)
        return visible
