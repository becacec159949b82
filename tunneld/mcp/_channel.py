"""The per-request :class:`~tunneld.mcp.RequestChannel`: progress, logs, client requests.

Messages related to a request go on that request's SSE stream (MCP 2025-11-25,
"Sending Messages to the Server"); a request answered with plain JSON has no stream,
so its notifications fall back to the session's GET stream, or are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import trio

from tunneld.mcp._events import EventStream
from tunneld.mcp._jsonrpc import RequestId, notification_message, request_message
from tunneld.mcp._registry import LogLevel, ToolError
from tunneld.mcp._session import PendingRequest, Session

__all__ = ["LOG_LEVELS", "Channel"]

LOG_LEVELS: Final[tuple[str, ...]] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)  # RFC 5424 severities, least severe first

# Which client capability a server→client request needs.
_NEEDS_CAPABILITY: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


class Channel:
    """Implements ``RequestChannel`` for one request.

    ``session`` is ``None`` on the stateless 2026-07-28 revision, where log delivery
    is the per-request ``log_level`` and there is no back channel for requests.
    """

    def __init__(
        self,
        *,
        session: Session | None,
        stream: EventStream | None,
        progress_token: str | int | None,
        log_level: str | None,
        related_request: RequestId | None,
        request_timeout: float,
    ) -> None:
        self.session = session
        self.stream = stream
        self.progress_token = progress_token
        self.log_level = log_level
        self.related_request = related_request
        self.request_timeout = request_timeout
        self._last_progress: float | None = None

    def _emit(self, message: Mapping[str, Any]) -> None:
        if self.stream is not None and not self.stream.closed:
            self.stream.send(message)
        elif self.session is not None:
            self.session.get_standalone().send(message)

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """``notifications/progress`` when the client sent a ``progressToken``."""
        if self.progress_token is None:
            return
        # MCP: progress MUST increase; a handler going backwards is clamped, not sent.
        if self._last_progress is not None and progress <= self._last_progress:
            return
        self._last_progress = progress
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self._emit(notification_message("notifications/progress", params))
        await trio.lowlevel.checkpoint()

    async def log(self, level: LogLevel, data: object, logger: str | None = None) -> None:
        """``notifications/message`` if ``level`` passes the client's chosen minimum."""
        threshold = self.session.log_level if self.session is not None else self.log_level
        if self.session is None and threshold is None:
            return  # 2026-07-28: logs only when the request opted in
        if threshold is not None and LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
            return
        params: dict[str, Any] = {"level": level, "data": data}
        if logger is not None:
            params["logger"] = logger
        self._emit(notification_message("notifications/message", params))
        await trio.lowlevel.checkpoint()

    async def close_stream(self) -> None:
        """End the HTTP response carrying this request's SSE stream, keeping the stream.

        The client reconnects with ``GET`` + ``Last-Event-ID`` (after the priming
        event's ``retry`` delay) and gets what was sent since: SSE polling, SEP-1699.
        Not part of ``RequestChannel``; a no-op without a stream.
        """
        if self.stream is not None:
            self.stream.supersede_readers()
        await trio.lowlevel.checkpoint()

    async def request(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Send a server→client request on this request's stream and await the answer.

        Raises:
            ToolError: no back channel (stateless revision or a JSON response), the
                client lacks the capability, it answered with an error, or it did not
                answer within ``request_timeout`` seconds.
        """
        session = self.session
        if session is None:
            raise ToolError(f"{method}: this protocol revision has no server-to-client requests")
        needed = _NEEDS_CAPABILITY.get(method)
        if needed is not None and needed not in session.client_capabilities:
            raise ToolError(f"{method}: the client did not declare the {needed!r} capability")
        stream = self.stream if self.stream is not None else session.get_standalone()
        request_id = session.next_request_id()
        pending = PendingRequest()
        session.pending[request_id] = pending
        try:
            stream.send(request_message(request_id, method, params))
            with trio.move_on_after(self.request_timeout) as waited:
                await pending.done.wait()
            if waited.cancelled_caught:
                raise ToolError(
                    f"{method}: the client did not answer within {self.request_timeout:g} s"
                )
        finally:
            session.pending.pop(request_id, None)
        if pending.error is not None:
            raise ToolError(
                f"{method}: the client answered with an error: {pending.error.get('message', '')}"
            )
        return pending.result or {}
