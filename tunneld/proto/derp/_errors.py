"""DERP's error hierarchy: bad input from the peer versus misuse by the caller."""

from __future__ import annotations

__all__ = ["DerpError", "LocalProtocolError", "RemoteProtocolError"]

# WebSocket close codes (RFC 6455 section 7.4.1) a transport can answer a failure with.
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009


class DerpError(Exception):
    """Base class of every DERP protocol error."""


class RemoteProtocolError(DerpError):
    """The peer sent something DERP v2 does not allow; the connection is unusable.

    ``reason`` says what and where (it is safe to send as a close reason);
    ``close_code`` is the WebSocket close code a transport should answer with.
    """

    def __init__(self, reason: str, *, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


class LocalProtocolError(DerpError):
    """The caller used a connection wrongly (e.g. sent a packet before the handshake)."""
