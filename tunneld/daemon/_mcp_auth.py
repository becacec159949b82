"""A static bearer token for the daemon's TCP MCP listener (``[mcp] token_file``).

For headless use without an authorization server: every MCP request on TCP must carry
``Authorization: Bearer TOKEN`` (RFC 6750 §2.1: only in the header). A match gives the
caller that token's :class:`Caller` (by default both MCP scopes); anything else is
401 with ``WWW-Authenticate: Bearer``. Tokens are compared in constant time and never
logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import trio

from tunneld._files import read_secret_file
from tunneld.http import HttpError, Request
from tunneld.mcp import SCOPE_READ, SCOPE_WRITE, Caller

__all__ = ["SCOPE_READ", "SCOPE_WRITE", "StaticTokenAuthenticator", "read_token_file"]

# The scope names are the MCP server's, which checks them; re-exported for callers.
FULL_ACCESS: Final = frozenset({SCOPE_READ, SCOPE_WRITE})
MAX_TOKEN_FILE: Final = 8192


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        ValueError: the file is accessible by group or others, or holds no token; the
            message names the file (never the token).
        OSError: the file cannot be read.
    """
    target = Path(path)
    raw, _ = read_secret_file(target, what="MCP token file", max_bytes=MAX_TOKEN_FILE)
    token = raw.decode("utf-8", errors="replace").strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{target}: expected one token (no spaces) in the MCP token file")
    return token


class StaticTokenAuthenticator:
    """``authenticate(request)`` for :class:`tunneld.mcp.McpServer` from fixed tokens.

    ``tokens`` maps each accepted token to the caller it authenticates.
    ``resource_metadata_url`` (RFC 9728), when given, goes into the challenge.
    """

    def __init__(
        self, tokens: Mapping[str, Caller], *, resource_metadata_url: str | None = None
    ) -> None:
        if not tokens:
            raise ValueError("at least one token is needed")
        self._tokens = [(token.encode(), caller) for token, caller in tokens.items()]
        self.resource_metadata_url = resource_metadata_url

    @classmethod
    def single(cls, token: str, subject: str = "token") -> StaticTokenAuthenticator:
        """One token with full access (read and write tools)."""
        caller = Caller(subject=subject, scopes=FULL_ACCESS, transport="http")
        return cls({token: caller})

    def _challenge(self, error: str | None = None) -> str:
        parts = ['realm="tunneld"']
        if error:
            parts.append(f'error="{error}"')
        if self.resource_metadata_url:
            parts.append(f'resource_metadata="{self.resource_metadata_url}"')
        return "Bearer " + ", ".join(parts)

    async def __call__(self, request: Request) -> Caller:
        """The caller for ``request``'s bearer token.

        Raises:
            HttpError: 401 (no or unknown token) or 400 (token in the query string).
        """
        await trio.lowlevel.checkpoint()
        if request.query_one("access_token") is not None:
            raise HttpError(
                400,
                "send the token in the Authorization header, not the URL",
                code="invalid_request",
                headers=[("WWW-Authenticate", self._challenge("invalid_request"))],
            )
        header = request.headers.get("authorization") or ""
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise HttpError(
                401,
                "this MCP endpoint needs Authorization: Bearer TOKEN",
                code="unauthorized",
                headers=[("WWW-Authenticate", self._challenge())],
            )
        given = presented.strip().encode()
        found: Caller | None = None
        for token, caller in self._tokens:
            # Compare against every token, so timing says nothing about which matched.
            if hmac.compare_digest(given, token):
                found = caller
        if found is None:
            raise HttpError(
                401,
                "the bearer token is not valid",
                code="invalid_token",
                headers=[("WWW-Authenticate", self._challenge("invalid_token"))],
            )
        return found
