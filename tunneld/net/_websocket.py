"""What the WebSocket clients in ``tunneld.net`` share."""

from __future__ import annotations

import trio_websocket

__all__ = ["close_info"]


def close_info(exc: trio_websocket.ConnectionClosed, *, lost: str) -> tuple[int | None, str]:
    """``(close code, reason)`` of a closed WebSocket; ``(None, lost)`` if no close frame came.

    An empty reason is replaced by the code's name (RFC 6455 §7.4.1), e.g. ``NORMAL_CLOSURE``.
    """
    reason = exc.reason
    if reason is None:
        return None, lost
    return reason.code, reason.reason or reason.name
