"""HttpLimits: bounds on what one client may make the server hold or wait for."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HttpLimits"]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one client may make the server hold or wait for.

    Sizes in bytes, times in seconds. ``head_timeout`` covers the whole request head
    from its first byte (slowloris) and the TLS handshake; ``keepalive_timeout`` is how
    long an idle connection may wait for its next request; ``body_timeout`` covers the
    whole request body; ``write_timeout`` each write to a client that stopped reading.
    ``max_connections`` counts every open connection, WebSockets and upgrades included.
    """

    max_request_head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    max_connections: int = 1024
    write_timeout: float = 30.0
