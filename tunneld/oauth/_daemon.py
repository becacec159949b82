"""The daemon as an OAuth resource server: ``[mcp] authorization_server`` and friends
turned into the pieces ``tunneld run`` hands to :class:`tunneld.daemon.Daemon`."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tunneld._files import read_secret_file as read_secret
from tunneld.config._sections import McpConfig
from tunneld.http import Router
from tunneld.log import get_logger
from tunneld.mcp import Caller
from tunneld.oauth._access_client import AccessCheckError, AccessClient
from tunneld.oauth._resource import (
    BearerAuthenticator,
    ProtectedResourceMetadata,
    canonical_resource,
    resource_metadata_url,
)

__all__ = ["DaemonOAuth", "build_daemon_oauth", "read_secret_file"]

log = get_logger(__name__)

MAX_SECRET_FILE = 8192


def read_secret_file(path: str | os.PathLike[str], *, key: str) -> str:
    """The one secret in ``path`` (whitespace stripped).

    Raises:
        ValueError: the file is accessible by group or others, or empty; names ``key``
            and the file, never the secret.
        OSError: it cannot be read.
    """
    target = Path(path)
    raw, _ = read_secret(target, what=key, max_bytes=MAX_SECRET_FILE)
    secret = raw.decode("utf-8", errors="replace").strip()
    if not secret or any(c.isspace() for c in secret):
        raise ValueError(f"{key} {target}: expected one secret (no spaces)")
    return secret


@dataclass
class DaemonOAuth:
    """What the daemon needs: the authenticator, the RFC 9728 routes, the access check."""

    authenticator: BearerAuthenticator
    metadata: ProtectedResourceMetadata
    access: AccessClient | None
    static_metadata_url: str | None  # known before binding (``[mcp] resource`` set)

    def mount(self, router: Router) -> None:
        """RFC 9728 metadata next to ``/mcp``."""
        self.metadata.mount(router)

    async def access_check(self, caller: Caller, agent: str) -> str | None:
        """The agent reference ``caller`` may use for ``agent`` (``owner/name``), or
        None. Fails closed: a control plane that cannot be asked means no."""
        if self.access is None:
            return agent
        if not caller.subject:
            return None
        try:
            decision = await self.access.decide(caller.subject, agent)
        except AccessCheckError as exc:
            log.warning("mcp.access_check_failed", subject=caller.subject, error=str(exc))
            return None
        return decision.agent if decision.allowed else None


def build_daemon_oauth(
    mcp: McpConfig,
    *,
    control_url: str,
    node_token: Callable[[], Awaitable[str]],
    mcp_url: Callable[[], str | None],
) -> DaemonOAuth:
    """Build the resource server from ``[mcp]`` (``authorization_server`` is set).

    ``mcp_url()`` is the bound TCP MCP URL (used when ``[mcp] resource`` is empty);
    ``control_url``/``node_token`` reach the control plane for access checks.

    Raises:
        ValueError: a missing or bad key (the message names it).
        OSError: the secret file cannot be read.
    """
    issuer = mcp.authorization_server.rstrip("/")
    if not mcp.introspection_client_id:
        raise ValueError(
            "[mcp].introspection_client_id: required with authorization_server"
            " (`tunneld control client add NAME --introspect`)"
        )
    if not mcp.introspection_secret_file:
        raise ValueError("[mcp].introspection_secret_file: required with authorization_server")
    secret = read_secret_file(mcp.introspection_secret_file, key="[mcp].introspection_secret_file")

    static: str | None = None
    if mcp.resource:
        try:
            static = canonical_resource(mcp.resource)
        except ValueError as exc:
            raise ValueError(f"[mcp].resource: {exc}") from None

    def resource() -> str:
        if static is not None:
            return static
        url = mcp_url()
        if url is None:
            raise RuntimeError("the MCP listener is not bound yet")
        return url

    authenticator = BearerAuthenticator(
        issuer + "/oauth2/introspect",
        mcp.introspection_client_id,
        secret,
        static if static is not None else resource,
        cache_ttl=mcp.introspection_cache.seconds,
        issuer=issuer,
    )
    metadata = ProtectedResourceMetadata(
        static if static is not None else resource, [issuer], path="/mcp"
    )
    access = AccessClient(control_url, node_token) if mcp.access_check else None
    return DaemonOAuth(
        authenticator,
        metadata,
        access,
        None if static is None else resource_metadata_url(static),
    )
