"""MCP sessions (revisions before 2026-07-28): ids, negotiated state, in-flight work.

A session is minted by ``initialize`` and named by ``Mcp-Session-Id`` on every later
request. It holds what the handshake negotiated, the requests being served (so
``notifications/cancelled`` can cancel one), server→client requests awaiting the
client's answer, and the SSE streams kept for resumption.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from tunneld.mcp._events import EventStream, StreamTable
from tunneld.mcp._jsonrpc import RequestId
from tunneld.mcp._registry import Caller

__all__ = ["MAX_INFLIGHT", "MAX_SUBSCRIPTIONS", "PendingRequest", "Session", "SessionStore"]


MAX_INFLIGHT: Final = 512
"""Requests one session may have running at once (a flood past it gets an error each)."""
MAX_SUBSCRIPTIONS: Final = 1024
"""Resource URIs one session may subscribe to."""


@dataclass(slots=True)
class PendingRequest:
    """A server→client request waiting for the client's POSTed response."""

    done: trio.Event = field(default_factory=trio.Event)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class Session:
    id: str
    owner: tuple[str, int | None]
    """The caller's subject and (Unix socket) uid: a session is theirs alone."""
    protocol_version: str
    client_capabilities: Mapping[str, Any]
    client_info: Mapping[str, Any]
    capabilities: Mapping[str, Any]
    last_seen: float
    log_level: str | None = None
    initialized: bool = False
    streams: StreamTable = field(default_factory=StreamTable)
    standalone: EventStream | None = None
    inflight: dict[RequestId, trio.CancelScope] = field(default_factory=dict)
    pending: dict[RequestId, PendingRequest] = field(default_factory=dict)
    subscriptions: set[str] = field(default_factory=set)
    _next_request: int = 0

    def owned_by(self, caller: Caller) -> bool:
        """Whether ``caller`` is who initialized this session."""
        return self.owner == (caller.subject, caller.uid)

    def next_request_id(self) -> str:
        # A prefix keeps our ids apart from anything a client might pick.
        self._next_request += 1
        return f"srv-{self._next_request}"

    def get_standalone(self) -> EventStream:
        """The session's GET stream (server-initiated messages), created on first use."""
        if self.standalone is None:
            self.standalone = self.streams.new()
        return self.standalone

    def busy(self) -> bool:
        """Whether work or a reader keeps the session alive regardless of idleness."""
        return bool(self.inflight) or self.streams.active_readers > 0

    def end(self) -> None:
        """Cancel in-flight requests, fail pending ones and close every stream."""
        for scope in self.inflight.values():
            scope.cancel()
        for pending in self.pending.values():
            pending.error = {"code": -32000, "message": "session ended"}
            pending.done.set()
        self.pending.clear()
        self.streams.close_all()


class SessionStore:
    """Sessions by id, with idle expiry and a cap on how many exist at once."""

    def __init__(self, *, idle_timeout: float, max_sessions: int = 1024) -> None:
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}

    def create(
        self,
        *,
        owner: tuple[str, int | None],
        protocol_version: str,
        client_capabilities: Mapping[str, Any],
        client_info: Mapping[str, Any],
        capabilities: Mapping[str, Any],
    ) -> Session | None:
        """A new session with a fresh random id, or ``None`` when every slot is busy.

        At the cap the least recently used idle session is ended to make room, so a
        flood of abandoned sessions cannot lock clients out until they expire.
        """
        if len(self._sessions) >= self.max_sessions:
            self.expire(trio.current_time())
        if len(self._sessions) >= self.max_sessions:
            idle = [s for s in self._sessions.values() if not s.busy()]
            if not idle:
                return None
            self.remove(min(idle, key=lambda s: s.last_seen).id)
        # token_urlsafe is visible ASCII (0x21..0x7E) as the spec requires, 256 bits.
        session = Session(
            id=secrets.token_urlsafe(32),
            owner=owner,
            protocol_version=protocol_version,
            client_capabilities=client_capabilities,
            client_info=client_info,
            capabilities=capabilities,
            last_seen=trio.current_time(),
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_seen = trio.current_time()
        return session

    def remove(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.end()
        return session

    def expire(self, now: float) -> list[str]:
        """End sessions idle longer than ``idle_timeout``; returns their ids."""
        expired = [
            sid
            for sid, session in self._sessions.items()
            if not session.busy() and now - session.last_seen > self.idle_timeout
        ]
        for sid in expired:
            self.remove(sid)
        return expired

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.remove(sid)
