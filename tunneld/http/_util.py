"""Small pieces shared by the connection loop and the upgrade paths."""

from __future__ import annotations

import functools
import time
from email.utils import formatdate

import trio
import trio_websocket

from tunneld.http._messages import Response
from tunneld.log import get_logger

__all__ = ["Abort", "close_body", "http_date", "internal_error", "is_disconnect"]

log = get_logger(__name__)


class Abort(Exception):
    """End the connection now, without writing anything more."""


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` (or every leaf of an exception group) just means "peer gone"."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_disconnect(inner) for inner in exc.exceptions)
    return isinstance(
        exc,
        Abort
        | trio.BrokenResourceError
        | trio.ClosedResourceError
        | trio_websocket.ConnectionClosed,
    )


def http_date() -> str:
    """The current time as an IMF-fixdate (RFC 9110 §5.6.7), for the ``Date`` header."""
    return _http_date_at(int(time.time()))


@functools.lru_cache(maxsize=1)
def _http_date_at(second: int) -> str:
    # One formatting per second, not per response (the header has 1 s resolution).
    return formatdate(second, usegmt=True)


async def close_body(body: object) -> None:
    """Close a streamed body's async generator (runs its ``finally``); logs, never raises."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("http.stream_close_failed")


def internal_error(request_id: str) -> Response:
    """The generic 500: no detail beyond the request id to find the logged traceback."""
    return Response.error(500, f"internal server error (request id {request_id})")
