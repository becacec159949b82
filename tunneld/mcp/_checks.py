"""The HTTP-level checks of the MCP endpoint, each raising :class:`Reject` with the answer.

Media types are parsed (RFC 9110 §8.3.1, §12.5.1), never string-compared; every
refusal carries a JSON-RPC error body so MCP clients can read it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

from tunneld.http import Request, Response
from tunneld.mcp._jsonrpc import (
    INVALID_REQUEST,
    JsonRpcError,
    Message,
    RequestId,
    error_message,
    parse_message,
)
from tunneld.mcp._media import accepts, parse_accept, parse_media_type
from tunneld.mcp._methods import HANDSHAKE_VERSIONS, MODERN_VERSIONS

__all__ = [
    "ASSUMED_VERSION",
    "Reject",
    "check_accept",
    "check_content_type",
    "check_version",
    "parse_body",
    "rpc_error",
]

ASSUMED_VERSION: Final = "2025-03-26"  # MCP: no MCP-Protocol-Version header → assume this


class Reject(Exception):
    """Answer the HTTP request with ``response`` now."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def rpc_error(
    status: int,
    code: int,
    message: str,
    *,
    id: RequestId | None = None,
    data: object = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Reject:
    """A :class:`Reject` answering ``status`` with a JSON-RPC error body."""
    return Reject(Response.json(error_message(id, code, message, data), status, headers))


@functools.lru_cache(maxsize=64)
def _accepted(header: str | None) -> tuple[bool, bool]:
    # (covers JSON, covers SSE): a pure function of the header, and clients send the
    # same one on every request, so it is parsed once (bounded cache).
    ranges = parse_accept(header)
    return accepts(ranges, "application", "json"), accepts(ranges, "text", "event-stream")


def check_accept(request: Request, *, json: bool, sse: bool) -> None:
    """406 unless ``Accept`` covers JSON (``json``) and SSE (``sse``); ``q=0`` excludes."""
    covers_json, covers_sse = _accepted(request.headers.get("accept"))
    missing = []
    if json and not covers_json:
        missing.append("application/json")
    if sse and not covers_sse:
        missing.append("text/event-stream")
    if missing:
        raise rpc_error(
            406,
            INVALID_REQUEST,
            f"Not Acceptable: the Accept header must include {' and '.join(missing)}",
        )


def check_content_type(request: Request) -> None:
    """415 unless the body is ``application/json`` (parameters allowed, UTF-8 only)."""
    raw = request.headers.get("content-type")
    media = parse_media_type(raw) if raw is not None else None
    if media is None or media.essence != "application/json":
        raise rpc_error(
            415,
            INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        )
    charset = media.params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise rpc_error(415, INVALID_REQUEST, "Unsupported Media Type: charset must be utf-8")


def parse_body(request: Request) -> Message:
    """The body's JSON-RPC message; 400 with -32700/-32600 when it is not one."""
    try:
        return parse_message(request.body)
    except JsonRpcError as exc:
        raise Reject(Response.json(exc.to_json(), exc.http_status)) from None


def check_version(request: Request) -> str:
    """The session request's revision (absent: 2025-03-26); 400 for one we do not speak."""
    version = request.headers.get("mcp-protocol-version")
    if version is None:
        return ASSUMED_VERSION
    version = version.strip()
    if version not in HANDSHAKE_VERSIONS:
        raise rpc_error(
            400,
            INVALID_REQUEST,
            f"Bad Request: unsupported MCP-Protocol-Version {version!r}"
            f" (supported: {', '.join(HANDSHAKE_VERSIONS + MODERN_VERSIONS)})",
        )
    return version
