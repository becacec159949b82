"""DNS-rebinding and CORS checks for the MCP endpoint (MCP "Security Warning").

A browser page on ``evil.example`` that rebinds its name to 127.0.0.1 sends
``Host: evil.example`` and ``Origin: http://evil.example``; both are refused with 403
unless configured. Loopback names are always allowed: an attacker cannot make a
victim's browser send them for a foreign page.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

__all__ = ["ALLOWED_REQUEST_HEADERS", "EXPOSED_HEADERS", "OriginGuard", "split_host"]

ALLOWED_REQUEST_HEADERS: Final = (
    "Content-Type, Accept, Authorization, Mcp-Protocol-Version, Mcp-Session-Id, "
    "Last-Event-ID, Mcp-Method, Mcp-Name"
)
EXPOSED_HEADERS: Final = "Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate"


def split_host(value: str) -> tuple[str, str | None]:
    """``"[::1]:80"`` → ``("::1", "80")``; ``"Example.com"`` → ``("example.com", None)``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[1:end], value[end + 1 :]
        return host, (rest[1:] if rest.startswith(":") else None)
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, None


@functools.lru_cache(maxsize=256)
def _is_loopback(host: str) -> bool:
    # Cached (a pure function; bounded, as hosts come from clients): parsing the
    # address was a visible share of a small request.
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginGuard:
    """Decides whether a request's ``Host`` and ``Origin`` may reach the endpoint.

    ``allowed_hosts`` entries are ``name`` (any port) or ``name:port``;
    ``allowed_origins`` entries are exact origins (``https://app.example``) or ``*``.
    """

    def __init__(self, allowed_hosts: Sequence[str], allowed_origins: Sequence[str]) -> None:
        self._hosts = {split_host(h) for h in allowed_hosts}
        self._origins = {o.strip().rstrip("/").lower() for o in allowed_origins}

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None:
            return False
        host, port = split_host(host_header)
        if _is_loopback(host):
            return True
        return (host, None) in self._hosts or (host, port) in self._hosts

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if "*" in self._origins or origin in self._origins:
            return True
        if origin == "null":
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        return _is_loopback(parts.hostname)
