"""The noise core's error hierarchy: local misuse vs bad input from the network."""

from __future__ import annotations

__all__ = ["NoiseError", "RemoteProtocolError"]


class NoiseError(Exception):
    """Base of every error the WireGuard core raises.

    Raised directly for local misuse (an unknown peer passed to ``send``, a key of
    the wrong size); ``RemoteProtocolError`` is the subclass for bad network input.
    """


class RemoteProtocolError(NoiseError):
    """A datagram was malformed, unauthenticated, replayed or not acceptable now.

    ``reason`` is a short, log-safe description naming the message kind and what
    was wrong, e.g. ``"initiation: mac1 invalid"`` or ``"transport: replayed
    counter 7"``. The core's state is unchanged by the rejected datagram; the
    caller drops it (WireGuard never answers invalid packets).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
