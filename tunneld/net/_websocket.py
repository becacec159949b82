"""What the WebSocket clients in ``tunneld.net`` share."""

from __future__ import annotations

import trio
import trio_websocket

__all__ = ["CLOSE_TIMEOUT", "close_bounded", "close_info"]


def close_info(exc: trio_websocket.ConnectionClosed, *, lost: str) -> tuple[int | None, str]:
    """``(close code, reason)`` of a closed WebSocket; ``(None, lost)`` if no close frame came.

    An empty reason is replaced by the code's name (RFC 6455 §7.4.1), e.g. ``NORMAL_CLOSURE``.
    """
    reason = exc.reason
    if reason is None:
        return None, lost
    return reason.code, reason.reason or reason.name


# RFC 6455 §7.1.1 lets the closing side drop the TCP connection when the peer does not
# answer the close frame; a relay or coordinator that went dark must not hold us here.
CLOSE_TIMEOUT = 2.0


async def close_bounded(ws: trio_websocket.WebSocketConnection, code: int, reason: str) -> None:
    """Close ``ws`` with ``code`` and ``reason`` (cut to fit a close frame).

    Waits at most :data:`CLOSE_TIMEOUT` seconds for the peer's close frame, then drops
    the connection. Never raises ConnectionClosed (the socket is closed either way).
    """
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await ws.aclose(code, reason[:120])
        except trio_websocket.ConnectionClosed:
            pass
