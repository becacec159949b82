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

from tunneld.agent.client import AgentClient
from tunneld.daemon._rpc_pool import RpcStreamPool
from tunneld.daemon._tunnels import (
    Lease,
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
AgentLister = Callable[[], Awaitable[Sequence[Mapping[str, object]]]]
# Per-caller authorization (docs/oauth.md): the agent reference to use for this caller
# (e.g. "owner/name" as the control plane resolved it), or None when it may not.
AccessCheck = Callable[[Caller, str], Awaitable[str | None]]


class ServiceUnavailableError(TunnelError):
    """The tunnel is up but the agent refused or dropped the stream to the service."""

    code = "service_unavailable"


class DaemonAgents:
    """:class:`tunneld.mcp.AgentAccess` over the daemon's tunnel table, for ``caller``.

    ``open_stream`` is the overlay's (``Overlay.open_stream(peer, service)``);
    ``agents`` lists every agent this node may reach (the daemon's
    :class:`~tunneld.daemon.AgentDirectory`: control plane, overlay, tunnels). Every caller may
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
        rpc_pool: RpcStreamPool | None = None,
    ) -> None:
        self.tunnels = tunnels
        self.caller = caller if caller is not None else Caller()
        self._open_stream = open_stream
        self._agents = agents
        self._access_check = access_check
        self._rpc_pool = rpc_pool

    async def _allowed(self, agent: str) -> str:
        """The agent reference to use for this caller; raises NotPermittedError."""
        if self._access_check is None:
            return agent
        allowed = await self._access_check(self.caller, agent)
        if allowed is None:
            raise NotPermittedError(
                f"{self.caller.subject or 'this caller'} may not reach agent {agent!r}",
                agent=agent,
            )
        return allowed

    async def _open(self, lease: Lease, agent: str, service: str) -> trio.abc.HalfCloseableStream:
        try:
            with trio.fail_after(self.tunnels.connect_timeout):
                return await self._open_stream(lease.peer, service)
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
        agent = await self._allowed(agent)
        async with self.tunnels.acquire(agent) as lease:
            stream = await self._open(lease, agent, service)
            try:
                yield stream
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        await stream.aclose()
                    except (trio.BrokenResourceError, OSError) as exc:
                        log.info("mcp.stream_close_failed", agent=agent, error=str(exc))

    @asynccontextmanager
    async def agent_rpc(self, agent: str) -> AsyncIterator[AgentClient]:
        """An :class:`AgentClient` on an ``rpc`` stream to ``agent``, under a lease held
        until the block exits (what :meth:`ToolContext.agent_rpc` gives a tool).

        With a pool, the stream is one a call to that agent left idle (else a new one),
        and goes back to the pool after a block that ended with the stream between
        requests; after an exception (cancellation included) or a request left
        unanswered it is closed (shielded, bounded), which makes the agent kill a
        foreground command still running on it.

        Raises:
            TunnelError: as :meth:`open_stream`.
        """
        pool = self._rpc_pool
        if pool is None:
            async with self.open_stream(agent, "rpc") as fresh:
                one_off = AgentClient(fresh)
                try:
                    yield one_off
                finally:
                    with trio.CancelScope(shield=True):
                        await one_off.aclose()
            return
        agent = await self._allowed(agent)
        # lease/release rather than ``acquire``'s context manager: one layer less on
        # every tool call; the ``finally`` below releases it on every path.
        lease = await self.tunnels.lease(agent)
        client: AgentClient | None = None
        keep = True
        try:
            client = await pool.take(lease.peer)
            if client is None:
                stream = await self._open(lease, agent, "rpc")
                if hasattr(stream, "no_delay"):
                    # Each frame is a whole request: out at once, not held back for a
                    # FIN that a reused stream never sends (MuxStream.no_delay).
                    stream.no_delay = True
                client = AgentClient(stream)
            yield client
        except Exception:
            # An error answer (AgentError) leaves the stream between requests, and
            # the pool keeps it; a request cut short does not (client.idle).
            raise
        except BaseException:
            keep = False  # cancelled: do not wait on anything but the close
            raise
        finally:
            try:
                if client is None:
                    pass
                elif keep:
                    await pool.give_back(lease.peer, client)
                else:
                    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                        await client.aclose()
            finally:
                self.tunnels.release(lease)

    async def list_agents(self) -> list[Mapping[str, object]]:
        """Every agent this node may reach, online or not: name, owner, id, online,
        last_seen, and handshake, path, rtt, tunnel (state, leases) where there is one;
        ``stale`` when the control plane did not answer (see ``GET /v0/agents``).
        With an access check, only those this caller may reach."""
        agents: list[Mapping[str, object]] = [dict(agent) for agent in await self._agents()]
        if self._access_check is None:
            return agents
        visible: list[Mapping[str, object]] = []
        for agent in agents:
            ref = f"{agent.get('owner')}/{agent.get('name')}"
            if await self._access_check(self.caller, ref) is not None:
                visible.append(agent)
        return visible
