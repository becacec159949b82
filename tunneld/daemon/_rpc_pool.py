"""Idle agent ``rpc`` streams the daemon keeps for the next tool call to the same agent.

An agentrpc stream carries one request after another (``tunneld.proto.agentrpc``), so a
tool call that left its stream between requests hands it back here instead of closing
it, and the next call to that agent takes it instead of opening a stream. That saves a
stream open on both sides, the agent's task for the new stream, and the close
handshake (two of the four datagrams of a one-request stream) on every call.

Only the streams are pooled, never a lease: a call holds its lease on the tunnel for
as long as it runs, as before, so an agent with nothing running is idle and its
tunnel times out as usual (the overlay then drops the peer and the pooled streams
break; the pool finds out when it next looks at them). A stream is reused only when
it is provably between requests: the last call read its whole answer
(:attr:`AgentClient.idle`) and the stream is open both ways with nothing from the
agent since (``reusable()`` on the stream). Anything else is closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import trio

from tunneld.agent.client import AgentClient
from tunneld.log import get_logger

__all__ = ["DEFAULT_MAX_IDLE", "DEFAULT_MAX_IDLE_SECONDS", "RpcStreamPool"]

log = get_logger(__name__)

# Idle streams kept per agent. A burst of calls opens more, and the surplus is closed
# as it comes back; at a hundred calls in flight 16 meant a new stream for every third
# call, 64 for one in ten. Each idle stream keeps a small task on the agent and counts
# against the tunnel's limit of open streams (the mux's max_concurrent_streams, 100),
# so 64 leaves a third of them to dials even right after such a burst...
DEFAULT_MAX_IDLE: Final = 64
# ...and only for this long: a stream unused for 10 s is closed (by ``run``), so an
# agent called once in a while keeps nothing of a burst long gone.
DEFAULT_MAX_IDLE_SECONDS: Final = 10.0
_CLOSE_TIMEOUT: Final = 1.0


def _stream_reusable(stream: trio.abc.Stream) -> bool:
    """Whether ``stream`` may carry another request: it says so (``reusable()``).

    A stream that cannot tell (not an overlay stream) is never reused.
    """
    check: Callable[[], bool] | None = getattr(stream, "reusable", None)
    return check is not None and check()


class RpcStreamPool:
    """Idle :class:`AgentClient` s per peer, most recently used first.

    ``take``/``give_back`` are called by :meth:`DaemonAgents.agent_rpc`; nothing
    waits inside the pool, so one slow agent never holds up calls to another. Start
    :meth:`run` with ``nursery.start`` to close streams idle for ``max_idle_seconds``
    even when no call comes to notice; without it they are closed at the next
    ``take``/``give_back`` for their agent.
    """

    def __init__(
        self,
        *,
        max_idle: int = DEFAULT_MAX_IDLE,
        max_idle_seconds: float = DEFAULT_MAX_IDLE_SECONDS,
    ) -> None:
        if max_idle < 0 or max_idle_seconds < 0:
            raise ValueError("max_idle and max_idle_seconds must be >= 0")
        self.max_idle = max_idle
        self.max_idle_seconds = max_idle_seconds
        # peer id → (client, when it came back), oldest first: trimmed from the left,
        # taken from the right.
        self._idle: dict[str, deque[tuple[AgentClient, float]]] = {}
        self._closed = False
        self._kept = trio.Event()  # set when a stream is kept (wakes ``run``)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close idle streams as they reach ``max_idle_seconds``, until cancelled; then
        close them all (shielded, bounded)."""
        try:
            task_status.started()
            while True:
                starts = [entries[0][1] for entries in self._idle.values() if entries]
                if not starts:
                    await self._kept.wait()
                    self._kept = trio.Event()
                    continue
                await trio.sleep_until(min(starts) + self.max_idle_seconds)
                await self._expire()
        finally:
            await self.aclose()

    async def _expire(self) -> None:
        now = trio.current_time()
        stale = [client for peer in list(self._idle) for client in self._trim(peer, now)]
        await _close_all(stale)

    def _trim(self, peer: str, now: float) -> list[AgentClient]:
        """Take off ``peer``'s oldest idle streams while there are more than
        ``max_idle`` or they came back ``max_idle_seconds`` or more before ``now``;
        forget ``peer`` once none is left. Returns them, for the caller to close."""
        entries = self._idle[peer]
        oldest = now - self.max_idle_seconds
        stale: list[AgentClient] = []
        while entries and (len(entries) > self.max_idle or entries[0][1] <= oldest):
            stale.append(entries.popleft()[0])
        if not entries:
            del self._idle[peer]
        return stale

    def idle_count(self, peer: str | None = None) -> int:
        """Idle streams held for ``peer`` (all peers if ``None``).

        Nothing in the daemon needs it: the tests watch the pool through it.
        """
        if peer is not None:
            return len(self._idle.get(peer, ()))
        return sum(len(entries) for entries in self._idle.values())

    async def take(self, peer: str) -> AgentClient | None:
        """The most recently returned usable client for ``peer``, or ``None``.

        Streams found broken or unused too long on the way are closed. Cancellation:
        a checkpoint only when something was closed.
        """
        entries = self._idle.get(peer)
        if not entries:
            return None
        stale: list[AgentClient] = []
        found: AgentClient | None = None
        oldest = trio.current_time() - self.max_idle_seconds
        while entries:
            client, since = entries.pop()
            if since >= oldest and client.idle and _stream_reusable(client.stream):
                found = client
                break
            stale.append(client)
        if not entries:
            del self._idle[peer]
        if stale:
            await _close_all(stale)
        return found

    async def give_back(self, peer: str, client: AgentClient) -> None:
        """Keep ``client`` for the next call to ``peer`` if it is reusable; else close it.

        Closing is shielded and bounded (the agent kills a foreground command left
        running on it), so it happens even when the caller is being cancelled.
        """
        if self._closed or not client.idle or not _stream_reusable(client.stream):
            await _close_all([client])
            return
        now = trio.current_time()
        self._idle.setdefault(peer, deque()).append((client, now))
        self._kept.set()
        surplus = self._trim(peer, now)
        if surplus:
            await _close_all(surplus)

    async def aclose(self) -> None:
        """Close every idle stream and keep none from now on (daemon shutdown)."""
        self._closed = True
        idle = [client for entries in self._idle.values() for client, _ in entries]
        self._idle.clear()
        await _close_all(idle)


async def _close_all(clients: list[AgentClient]) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        for client in clients:
            try:
                await client.aclose()
            except (trio.BrokenResourceError, OSError) as exc:
                log.info("mcp.stream_close_failed", error=str(exc))
