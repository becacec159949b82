"""What the authorization server issues: scopes, lifetimes, accepted resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The scopes the MCP server checks are its own names: the AS issues exactly those.
from tunneld.mcp import SCOPE_READ as SCOPE_TOOLS
from tunneld.mcp import SCOPE_WRITE as SCOPE_TOOLS_WRITE

__all__ = [
    "DEFAULT_SCOPE",
    "MCP_SCOPES",
    "SCOPES",
    "SCOPE_NODE",
    "SCOPE_TOOLS",
    "SCOPE_TOOLS_WRITE",
    "OAuthSettings",
]

# A client node (`tunneld login`, the daemon's machine) joining the overlay as its user:
# the coordinator accepts such access tokens when their audience is the control URL.
SCOPE_NODE: Final = "node"
# What the daemon's MCP endpoint (a resource server) understands.
MCP_SCOPES: Final[tuple[str, ...]] = (SCOPE_TOOLS, SCOPE_TOOLS_WRITE)
SCOPES: Final[tuple[str, ...]] = (SCOPE_TOOLS, SCOPE_TOOLS_WRITE, SCOPE_NODE)
# Asked for nothing: the least that lets a host do anything (list and call read-only tools).
DEFAULT_SCOPE: Final[tuple[str, ...]] = (SCOPE_TOOLS,)


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """Tunables of :class:`~tunneld.oauth.AuthorizationServer` (``[control].oauth_*``).

    ``resources``: the resource indicators (RFC 8707) tokens may be issued for, e.g.
    ``https://host.example:7430/mcp``; empty accepts any absolute https URL or
    loopback http URL. ``registrations_per_hour``: dynamic registrations per source
    address (a burst of that many, refilled evenly); 0 turns registration off.
    """

    access_token_ttl: float = 3600.0
    refresh_token_ttl: float = 30 * 86400.0
    code_ttl: float = 600.0  # RFC 6749 section 4.1.2: at most 10 minutes
    resources: tuple[str, ...] = ()
    registrations_per_hour: float = 10.0
