"""What the authorization server issues: scopes, lifetimes, accepted resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_SCOPE", "SCOPES", "SCOPE_TOOLS", "SCOPE_TOOLS_WRITE", "OAuthSettings"]

SCOPE_TOOLS: Final = "mcp:tools"
SCOPE_TOOLS_WRITE: Final = "mcp:tools:write"
SCOPES: Final[tuple[str, ...]] = (SCOPE_TOOLS, SCOPE_TOOLS_WRITE)
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
