"""The daemon's agent list: the control plane's answer, cached, merged with local state.

The coordinator knows every agent this node may reach, online or not (``list_agents``
over the overlay's session, docs/coordinator.md); the overlay knows path, RTT and
handshake for agents it has a tunnel to; the tunnel table knows leases. An
:class:`AgentDirectory` asks the coordinator at most once per ``ttl`` (concurrent
callers share one request), and when it cannot answer it lists what the overlay knows
(plus the last answer it had), marked ``stale``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from tunneld.daemon._tunnels import TunnelInfo
from tunneld.log import get_logger
from tunneld.net.overlay import CoordinatorUnavailableError, PeerStatus
from tunneld.proto.coord import AgentInfo

__all__ = ["AgentDirectory", "AgentListing"]

log = get_logger(__name__)

DEFAULT_TTL: Final = 5.0
DEFAULT_TIMEOUT: Final = 5.0

AgentAsker = Callable[[], Awaitable[Sequence[AgentInfo]]]


@dataclass(frozen=True, slots=True)
class AgentListing:
    """One answer: the merged entries and where they came from.

    ``source`` is ``"control"`` when the list is the control plane's (this time or, if
    ``stale``, the last time it answered) and ``"overlay"`` when only the overlay's
    peers are known. ``error`` says why the control plane did not answer.
    """

    agents: list[dict[str, object]]
    source: str
    stale: bool
    error: str | None
    as_of: float | None  # wall time of the control plane's answer used, if any

    def to_json(self) -> dict[str, object]:
        """The ``GET /v0/agents`` body."""
        return {
            "agents": self.agents,
            "source": self.source,
            "stale": self.stale,
            "error": self.error,
            "as_of": self.as_of,
        }


def _matches(reference: str, agent_id: str, name: str, owner: str) -> bool:
    return reference in (agent_id, name, f"{owner}/{name}")


class AgentDirectory:
    """Lists the agents this node may reach; see the module docstring.

    Args:
        ask: the coordinator's answer (``Overlay.list_agents``); raises
            :class:`CoordinatorUnavailableError` when it cannot answer.
        peers: the overlay's peers now (``PeerStatus`` records).
        tunnels: the tunnel table's entries now.
        ttl: seconds an answer (or a failure) is reused.
        timeout: seconds to wait for the coordinator before answering stale.
        wall: UNIX time, for ``as_of``.
    """

    def __init__(
        self,
        ask: AgentAsker,
        peers: Callable[[], Sequence[PeerStatus]],
        tunnels: Callable[[], Sequence[TunnelInfo]],
        *,
        ttl: float = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self._ask = ask
        self._peers = peers
        self._tunnels = tunnels
        self.ttl = ttl
        self.timeout = timeout
        self._wall = wall
        self._lock = trio.Lock()
        self._asked_at: float | None = None  # trio clock of the last attempt
        self._answer: tuple[AgentInfo, ...] | None = None  # last good answer
        self._answer_wall: float | None = None
        self._error: str | None = None  # why the last attempt failed, None if it did not
        self.requests = 0  # times the coordinator was asked (for tests and status)

    async def listing(self) -> AgentListing:
        """The merged list; asks the coordinator if the cached answer is older than ttl.

        Never raises for an unreachable control plane: the answer is then ``stale``.
        Cancellation while asking leaves the cache as it was.
        """
        async with self._lock:
            now = trio.current_time()
            if self._asked_at is None or now - self._asked_at >= self.ttl:
                await self._refresh()
        return self._merge()

    async def _refresh(self) -> None:
        self.requests += 1
        try:
            with trio.fail_after(self.timeout):
                answer = tuple(await self._ask())
        except CoordinatorUnavailableError as exc:
            self._error = f"control plane unavailable: {exc}"
        except trio.TooSlowError:
            self._error = f"control plane did not answer within {self.timeout:g}s"
        else:
            self._answer = answer
            self._answer_wall = None if self._wall is None else self._wall()
            self._error = None
        self._asked_at = trio.current_time()
        if self._error is not None:
            log.info("daemon.agents_stale", error=self._error)

    def _merge(self) -> AgentListing:
        peers = list(self._peers())
        tunnels = list(self._tunnels())
        stale = self._error is not None
        entries: dict[str, dict[str, object]] = {}
        for agent in self._answer or ():
            entries[agent.id] = {
                "name": agent.name,
                "owner": agent.owner,
                "id": agent.id,
                "online": agent.online,
                "last_seen": agent.last_seen,
                "handshake": False,
                "path": None,
                "rtt": None,
                "tunnel": None,
                "stale": stale,
            }
        for peer in peers:
            entry = entries.setdefault(
                peer.id,
                {
                    "name": peer.name,
                    "owner": peer.owner,
                    "id": peer.id,
                    "online": peer.online,
                    "last_seen": None,
                    "tunnel": None,
                    "stale": stale,
                },
            )
            if stale:
                entry["online"] = peer.online  # the overlay's word is newer than the cache
            entry.update(handshake=peer.handshake, path=peer.path, rtt=peer.rtt)
        for info in tunnels:
            # The table is keyed by the reference the caller used (name, owner/name or
            # id); the overlay's peers resolve it, then the control plane's list.
            target = next(
                (p.id for p in peers if _matches(info.agent, p.id, p.name, p.owner)), None
            )
            if target is None:
                target = next(
                    (
                        key
                        for key, e in entries.items()
                        if _matches(info.agent, key, str(e["name"]), str(e["owner"]))
                    ),
                    None,
                )
            if target is not None and target in entries:
                entries[target]["tunnel"] = {"state": info.state.value, "leases": info.leases}
        agents = sorted(entries.values(), key=lambda e: (str(e["owner"]), str(e["name"])))
        return AgentListing(
            agents=agents,
            source="control" if self._answer is not None else "overlay",
            stale=stale,
            error=self._error,
            as_of=self._answer_wall,
        )
