"""STUN's error hierarchy."""

from __future__ import annotations

__all__ = ["RemoteProtocolError", "StunError"]


class StunError(Exception):
    """Base class of every STUN error."""


class RemoteProtocolError(StunError):
    """A datagram that is not a valid STUN binding message; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
