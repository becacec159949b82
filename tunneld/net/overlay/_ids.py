"""The connection-id header of mux packets inside WireGuard (docs/overlay.md)."""

from __future__ import annotations

import enum

__all__ = ["HEADER_SIZE", "ID_SIZE", "MUX_VERSION", "NO_ID", "ConnectionIds", "Verdict"]

# Every mux packet inside WireGuard starts with a version byte and the two sides' mux
# connection ids (initiator's, responder's; zero = not known yet), so a peer that
# restarts or replaces its connection is noticed at once (docs/overlay.md).
MUX_VERSION = b"\x01"
ID_SIZE = 8
NO_ID = bytes(ID_SIZE)
HEADER_SIZE = 1 + 2 * ID_SIZE


class Verdict(enum.Enum):
    """What to do with a received mux packet, from its connection-id header."""

    DELIVER = "deliver"
    DROP = "drop"  # addressed to a connection of ours that has been replaced, or malformed
    RENEW = "renew"  # the peer has a new connection: replace ours, then check again


class ConnectionIds:
    """The connection-id header of mux packets inside WireGuard (docs/overlay.md).

    Header: version ``0x01``, the initiator's connection id, the responder's (8 bytes
    each; zero = not known yet). ``initiator`` says which of the two is ours.
    """

    def __init__(self, initiator: bool) -> None:
        self.initiator = initiator
        self.local_id = NO_ID
        self.remote_id = NO_ID

    def renew(self, local_id: bytes) -> None:
        """A new connection of ours (``local_id``: 8 random non-zero bytes)."""
        if len(local_id) != ID_SIZE or local_id == NO_ID:
            raise ValueError(f"a connection id is {ID_SIZE} bytes, not all zero")
        self.local_id = local_id
        self.remote_id = NO_ID

    def header(self) -> bytes:
        """The header of our packets."""
        if self.initiator:
            return MUX_VERSION + self.local_id + self.remote_id
        return MUX_VERSION + self.remote_id + self.local_id

    def accept(self, header: bytes) -> Verdict:
        """Check a received header; learns the peer's id the first time."""
        if len(header) != HEADER_SIZE or header[:1] != MUX_VERSION:
            return Verdict.DROP
        initiator_id = header[1 : 1 + ID_SIZE]
        responder_id = header[1 + ID_SIZE :]
        if self.initiator:
            theirs, ours = responder_id, initiator_id
        else:
            theirs, ours = initiator_id, responder_id
        # Only our current id (or "not known yet") is ours: anything else was meant
        # for a connection we have replaced.
        if theirs == NO_ID or ours not in (NO_ID, self.local_id):
            return Verdict.DROP
        if self.remote_id == NO_ID:
            self.remote_id = theirs
            return Verdict.DELIVER
        if theirs == self.remote_id:
            return Verdict.DELIVER
        return Verdict.RENEW
