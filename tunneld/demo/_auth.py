"""A static bearer token for the demo daemon's MCP TCP listener.

The daemon's MCP endpoint is an OAuth resource server in production; a headless run
(the demo, scripts) can use one fixed token instead (issue 8: "static tokens from config
remain possible"). The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from typing import Final

import trio

from tunneld.http import HttpError, Request
from tunneld.mcp import Caller

__all__ = ["SCOPE_READ", "SCOPE_WRITE", "StaticBearer"]

SCOPE_READ: Final = "mcp:tools"
SCOPE_WRITE: Final = "mcp:tools:write"


class StaticBearer:
    """``authenticate`` for :class:`tunneld.mcp.McpServer`: one token, every scope.

    ``await bearer(request)`` returns a :class:`Caller` for ``subject`` (with the read
    and write tool scopes) when the request carries ``Authorization: Bearer TOKEN``.

    Raises:
        HttpError: 401 with ``WWW-Authenticate: Bearer`` when the header is missing,
            malformed or holds another token (RFC 6750 §3); 400 for a token in the
            query string (RFC 6750 §2.3 is not supported: URLs end up in logs).
    """

    def __init__(self, token: str, *, subject: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self._token = token.encode()
        self.subject = subject

    async def __call__(self, request: Request) -> Caller:
        await trio.lowlevel.checkpoint()
        if "access_token" in request.query:
            raise HttpError(
                400,
                "send the token in the Authorization header, not the query string",
                code="invalid_request",
            )
        header = request.headers.get("authorization") or ""
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise HttpError(
                401,
                "this MCP endpoint needs Authorization: Bearer TOKEN",
                code="unauthorized",
                headers=[("WWW-Authenticate", 'Bearer realm="tunneld"')],
            )
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise HttpError(
                401,
                "the bearer token is not valid here",
                code="invalid_token",
                headers=[("WWW-Authenticate", 'Bearer realm="tunneld", error="invalid_token"')],
            )
        return Caller(
            subject=self.subject, scopes=frozenset({SCOPE_READ, SCOPE_WRITE}), transport="http"
        )
